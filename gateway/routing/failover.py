"""Which server serves: failover, recovery and failback decisions. Pure: no I/O, no clock.

The gateway keeps two choices apart (see :mod:`gateway.registry`): the **preferred** server, the
one the admin selected, and the **serving** server, the one traffic goes to now. Health checks
change server states; after every change (and when a failback hold expires) the controller in
:mod:`gateway.health.checker` builds a :class:`FailoverView` and asks
:meth:`FailoverPolicy.decide` whether ``serving`` must move.

Rules, in order:

1. ``auto_switch`` off: never move automatically (no failover, no recovery, no failback). The
   admin's selection is the only thing that moves ``serving`` (the registry does that).
2. The serving server has **failed**: it is ``down``, disabled, or no longer configured (or there is
   no serving server at all). Then move to the best *eligible* server (enabled and ``up``) other
   than the failed one:

   * the preferred server when it is eligible (no hold: the serving one is dead, returning to the
     admin's choice at once is the least surprising move);
   * otherwise the lowest ``priority``, then the lowest measured latency, then the id (for a
     deterministic order; an unmeasured latency sorts last).

   The kind is ``recover`` when the target came up *after* the serving server went down (every
   server was down and this is the first one back: it is used at once, there is no stuck state) or
   when nothing was serving; otherwise ``failover``. When no server is eligible, nothing changes:
   the proxy answers 503 quickly and the first server to come back triggers rule 2 again.
   A serving server in state ``unknown`` has not failed: it has not been checked yet.
3. The serving server is fine but is not the preferred one. With ``failback: auto``, move back to
   the preferred server once it has been ``up`` for ``failback_hold`` seconds **and** the serving
   server is not busy (``busy(serving)``: a prompt is running there; a failback never interrupts
   one). With ``failback: manual``, stay until an admin selects a server.
4. Otherwise (serving is fine and preferred, or no better reason): no change. In particular a
   healthy serving server is never left for a "better" one that is not the preferred server:
   each move costs the clients a websocket re-attach, so latency alone is no reason to move.

Ping-pong is impossible by construction: a move away needs the serving server ``down`` (which
takes ``fall`` failed checks, see :mod:`gateway.health.policy`), and a move back needs the
preferred server continuously ``up`` for the hold time, which any flap restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.config.models import FailbackPolicy
from gateway.registry import ServerState

SwitchKind = Literal["failover", "failback", "recover"]


def never_busy(server_id: str) -> bool:
    """Return False: the default ``busy`` until the job layer provides a real one."""
    return False


@dataclass(frozen=True, slots=True)
class ServerView:
    """What the policy needs to know about one server."""

    id: str
    enabled: bool
    state: ServerState
    priority: int = 100
    latency: float | None = None
    """Last probe latency, seconds (None: never measured)."""
    since: float | None = None
    """When the current ``state`` began, on the same clock as ``now`` (None: not known)."""

    @property
    def eligible(self) -> bool:
        """Return True when traffic may go to this server (enabled and up)."""
        return self.enabled and self.state is ServerState.UP

    @property
    def healthy_since(self) -> float | None:
        """Return when the server came up, or None when it is not up."""
        return self.since if self.state is ServerState.UP else None


@dataclass(frozen=True, slots=True)
class FailoverView:
    """A snapshot of everything :meth:`FailoverPolicy.decide` looks at."""

    preferred: str | None
    serving: str | None
    servers: Sequence[ServerView]
    auto_switch: bool = True
    failback: FailbackPolicy = "auto"
    failback_hold: float = 30.0
    busy: Callable[[str], bool] = field(default=never_busy)
    """``busy(server_id)``: True while a prompt runs there (never fail back mid-prompt)."""

    def server(self, server_id: str | None) -> ServerView | None:
        """Return the view of one server, or None."""
        return next((s for s in self.servers if s.id == server_id), None)


@dataclass(frozen=True, slots=True)
class Switch:
    """Move ``serving`` to ``to``; ``kind`` is failover, failback or recover."""

    to: str
    kind: SwitchKind
    reason: str


Decision = Switch


def rank(servers: Iterable[ServerView], preferred: str | None = None) -> list[ServerView]:
    """Return the eligible servers, best first: preferred, then priority, latency, id."""
    eligible = [s for s in servers if s.eligible]
    return sorted(
        eligible,
        key=lambda s: (
            s.id != preferred,
            s.priority,
            s.latency if s.latency is not None else math.inf,
            s.id,
        ),
    )


def has_failed(server: ServerView | None) -> bool:
    """Return True when a serving server can no longer serve (removed, disabled or down)."""
    return server is None or not server.enabled or server.state is ServerState.DOWN


class FailoverPolicy:
    """Decide moves of the serving server; see the module docstring for the rules."""

    def __init__(self, *, busy_poll: float = 1.0) -> None:
        self.busy_poll = busy_poll
        """How often to re-ask while only ``busy(serving)`` delays a failback, seconds."""

    def decide(self, view: FailoverView, now: float) -> Decision | None:
        """Return the switch to make now, or None to leave ``serving`` where it is."""
        if not view.auto_switch:
            return None
        serving = view.server(view.serving)
        if has_failed(serving):
            return self._replace(view, serving)
        return self._failback(view, now)

    def next_check(self, view: FailoverView, now: float) -> float | None:
        """Return the seconds after which :meth:`decide` may answer differently without any new
        event (a failback hold expiring, a busy server to poll), or None.
        """
        if not view.auto_switch or has_failed(view.server(view.serving)):
            return None
        preferred = self._failback_candidate(view)
        if preferred is None or preferred.since is None:
            return None
        remaining = view.failback_hold - (now - preferred.since)
        if remaining > 0:
            return remaining
        return self.busy_poll if view.serving and view.busy(view.serving) else None

    # -- rules -----------------------------------------------------------------------------

    def _replace(self, view: FailoverView, serving: ServerView | None) -> Switch | None:
        ranked = [s for s in rank(view.servers, view.preferred) if s.id != view.serving]
        if not ranked:
            return None  # all down: nothing to move to; the first one back re-triggers this
        target = ranked[0]
        if view.serving is None:
            return Switch(target.id, "recover", f"no server was serving; {target.id!r} is up")
        if serving is None:
            why = f"serving server {view.serving!r} was removed"
        elif not serving.enabled:
            why = f"serving server {view.serving!r} was disabled"
        else:
            why = f"serving server {view.serving!r} is down"
        came_back_later = (
            serving is not None
            and serving.state is ServerState.DOWN
            and serving.since is not None
            and target.since is not None
            and target.since > serving.since
        )
        if came_back_later:
            return Switch(target.id, "recover", f"{why}; {target.id!r} is the first server back")
        choice = (
            "the preferred server" if target.id == view.preferred else "the best healthy server"
        )
        return Switch(target.id, "failover", f"{why}; {target.id!r} is {choice}")

    def _failback_candidate(self, view: FailoverView) -> ServerView | None:
        if view.failback != "auto" or view.preferred is None or view.preferred == view.serving:
            return None
        preferred = view.server(view.preferred)
        return preferred if preferred is not None and preferred.eligible else None

    def _failback(self, view: FailoverView, now: float) -> Switch | None:
        preferred = self._failback_candidate(view)
        if preferred is None or preferred.since is None:
            return None
        held = now - preferred.since
        if held < view.failback_hold:
            return None
        if view.serving is not None and view.busy(view.serving):
            return None
        return Switch(
            preferred.id,
            "failback",
            f"preferred server {preferred.id!r} healthy for {held:.1f}s "
            f"(hold {view.failback_hold:g}s) and {view.serving!r} is idle",
        )
