"""The health state machine: pure, no I/O, no asyncio, no clock.

One :class:`HealthTracker` per server turns probe results (active checks) and traffic reports
(passive checks) into state transitions. The I/O shell (:mod:`gateway.health.checker`) runs the
probes, feeds the results in, and writes the transitions into the registry. Everything here is
deterministic, so it is tested with plain lists of results.

States are :class:`~gateway.registry.ServerState`: ``unknown`` (no verdict yet), ``up``, ``down``.

Active checks (HAProxy ``rise``/``fall`` semantics)
---------------------------------------------------

* Every probe result is a success or a failure. Successes and failures are counted
  *consecutively*: a success resets the failure count and vice versa.
* ``up`` → ``down`` after ``fall`` consecutive failed probes (default 3).
* ``down`` → ``up`` after ``rise`` consecutive successful probes (default 2).
* ``unknown`` → the **first** probe result decides, in either direction. This is deliberate:
  HAProxy's default ``init-state up`` marks a new server down on its first failed check, its
  ``init-state down`` marks it up on its first successful one, and Envoy's ``healthy_threshold`` is
  waived at start-up (one success marks a new host healthy). A gateway that has just started (or a
  server that has just been added) should serve at once, not after ``rise * fast_interval``.
  ``unknown`` also comes back when a server's URL changes (the registry resets its status).
* While counts are accumulating but below the threshold the server is *transitioning*
  (``ServerStatus.checking``; HAProxy's "UP, going down" / "DOWN, going up").

Intervals (HAProxy ``inter`` / ``fastinter`` / ``downinter``), see :func:`next_interval`
------------------------------------------------------------------------------------------

* ``fast_interval`` while ``unknown`` or transitioning (including right after a passive error);
* ``interval`` while steadily up; ``down_interval`` while steadily down;
* each multiplied by ``1 ± jitter`` (uniform), so that many servers are not probed in lockstep.
  The interval runs from the end of one probe to the start of the next: probes of one server never
  overlap.

Passive checks (HAProxy ``observe layer7``/``error-limit``/``on-error``; Envoy outlier detection)
-----------------------------------------------------------------------------------------------

Reports come from real traffic (:class:`gateway.proxy.observer.TrafficObserver`), see
:meth:`HealthTracker.observe_failure` and :class:`PassiveSettings`:

* **Connection errors** (``connect``: refused/unreachable; ``reset``: the backend closed the
  connection or the websocket; ``timeout``) are strong evidence. After ``error_limit`` consecutive
  ones (default 1) the ``on_error`` action applies.
* **5xx answers** count only after ``consecutive_5xx`` in a row (default 5, Envoy's default),
  because one 500 is usually one bad request, not a sick server. Statuses in
  ``transient_statuses`` (default 501 and 503: ComfyUI answers 503 for features that are merely
  disabled, e.g. the assets API, and a 503 usually carries ``Retry-After``) never count. 408 and 429
  are below 500: the proxy reports them as successes and they never count either.
* Any successful exchange resets both passive counters.
* ``on_error`` (HAProxy's names):

  - ``sudden-death`` (**default**): the server becomes "pre-fatal": its failure count is raised to
    ``fall - 1``, so the very next failed probe marks it down, and an immediate probe is requested.
    A refused proxied request is therefore confirmed by one probe (milliseconds when the port is
    closed) and the server is down well **within one second**, with the default ``fall = 3`` and
    ``fast_interval = 0.5``; a probe that succeeds clears the suspicion (one passive error alone
    never marks a server down).
  - ``fail-check``: the passive error counts as one failed probe; an immediate probe is requested.
  - ``fastinter``: nothing is counted; an immediate probe is requested (then the normal
    ``fall`` count applies, at ``fast_interval``).
  - ``mark-down``: the server is marked down at once, without a probe (HAProxy's circuit breaker);
    ``rise`` successful probes bring it back.

* A success reported by real traffic on a server believed ``down`` or ``unknown`` requests an
  immediate probe: it has probably just come back, and the first server to come back should be
  used without waiting for ``down_interval``. Traffic successes never mark a server up by
  themselves (only probes do).
* At most one immediate probe is requested per probe cycle (``recheck_requested`` is cleared when
  the next probe result is recorded), so a burst of failing requests costs one probe.
* Passive reports on a server already ``down`` only reset its rise progress (a server failing real
  traffic is not "going up").

Stalled requests (a hung backend), see :meth:`HealthTracker.observe_stall`
--------------------------------------------------------------------------

A frozen process (``SIGSTOP``, a deadlock, a stuck event loop) refuses nothing and resets nothing:
the kernel still accepts connections, requests simply never get an answer. The data plane reports
a request that has waited longer than the health-check ``timeout`` with no answer
(:meth:`gateway.proxy.observer.TrafficObserver.upstream_stalled`); whoever reports it, the rule is
the same (Envoy's outlier detection confirmed by an active check; HAProxy's ``observe`` with an
immediate check):

* for an ``up`` server, a stall makes the server *suspected* and asks for an immediate probe; if a
  probe is already in flight, that one is the confirming probe (the shell starts no second one);
* if the next probe result **fails** (timeout, connection error or a bad status) while the
  suspicion stands, the server is ``down`` at once instead of after ``fall`` failures: one piece of
  passive evidence plus one failed active check (reason: "... stalled ..., confirmed by a failed
  check: ..."). Detection of a hung backend thus takes about ``2 * timeout`` (plus up to one
  report period of the data plane, 0.5 s) instead of up to ``interval + fall * timeout``;
* a probe that **succeeds** clears the suspicion and changes nothing else: a slow request alone
  (a long ``/object_info``) is no failure. Stalls of requests that began waiting before that
  probe's answer are then ignored (the server answered since), so one slow request costs one
  probe, not one per report; a request that began waiting after it is new evidence;
* any healthy exchange on real traffic also withdraws the suspicion (the backend answers);
* stalls never count while the server is ``unknown`` or ``down``, while passive checks are off or
  ``confirm_stalls`` is False, or when the reported wait is shorter than the health timeout.

Restart detection, see :meth:`HealthTracker.observe_identity`
--------------------------------------------------------------

ComfyUI reports no uptime and no boot id, so a restart is recognised from two kinds of evidence:

* ``identity``: the identity derived from ``/system_stats`` (:func:`identity_of`: ``argv``,
  ``ram_total``, versions, device names and sizes, plus any boot-id-like key a backend may add such
  as ``boot_id``/``instance_id``/``pid``) differs from the last one seen. A backend that reports an
  ``uptime`` that went backwards (:func:`uptime_of`) is restarted too (``uptime`` evidence).
* ``returned``: the server had answered before, then was marked ``down`` or refused a connection
  (nothing was listening: the process was gone), and now answers again with the same identity.
  This is a *possible* restart (a network cut looks the same); the job layer confirms by looking
  for its prompts in the backend's queue and history.

The first identity ever seen is never a restart. One outage yields at most one restart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.config.models import HealthSettings
from gateway.registry import ServerState

PassiveErrorKind = Literal["connect", "timeout", "reset", "status_5xx"]
"""The failure kinds the proxy reports (:data:`gateway.proxy.observer.UpstreamErrorKind`)."""

OnError = Literal["sudden-death", "fail-check", "fastinter", "mark-down"]
"""What a passive error does once its threshold is reached (HAProxy's ``on-error`` names)."""

RestartEvidence = Literal["identity", "uptime", "returned"]

MIN_INTERVAL = 0.001
"""Floor for a computed interval, seconds: jitter must never produce 0 or a negative sleep."""

_COUNT_CAP = 1_000_000  # counters saturate: a server up for years must not grow an int forever

BOOT_ID_KEYS = (
    "boot_id",
    "fake_boot_id",
    "instance_id",
    "process_id",
    "pid",
    "started_at",
    "start_time",
)
"""Keys of ``system`` in ``/system_stats`` that, when a backend provides them, change per boot."""


@dataclass(frozen=True, slots=True)
class PassiveSettings:
    """How real traffic feeds health (see the module docstring, "Passive checks")."""

    enabled: bool = True
    """False: traffic reports are ignored entirely (active checks only)."""
    on_error: OnError = "sudden-death"
    """Action once a passive threshold is reached."""
    error_limit: int = 1
    """Consecutive connection errors (connect, reset, timeout) before ``on_error`` applies."""
    consecutive_5xx: int = 5
    """Consecutive counted 5xx answers before ``on_error`` applies (Envoy ``consecutive_5xx``)."""
    transient_statuses: frozenset[int] = frozenset({501, 503})
    """5xx statuses that never count (a disabled feature, an explicit "retry later")."""
    confirm_stalls: bool = True
    """A request stalled longer than the health timeout asks for a probe, and a failed probe
    then marks the server down at once (see "Stalled requests")."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change of one server, with a human-readable reason."""

    server: str
    old: ServerState
    new: ServerState
    reason: str


@dataclass(frozen=True, slots=True)
class Restart:
    """Evidence that a server's process restarted (its in-memory queue and history are gone)."""

    server: str
    evidence: RestartEvidence
    reason: str

    @property
    def certain(self) -> bool:
        """Return True unless the evidence is only "it came back" (then the job layer checks)."""
        return self.evidence != "returned"


@dataclass(frozen=True, slots=True)
class PassiveVerdict:
    """What the shell must do after a passive report."""

    recheck: bool = False
    """Probe this server now (out of schedule)."""
    transition: Transition | None = None
    """A state change to apply at once (only ``mark-down`` and ``fail-check`` produce one)."""


NOTHING = PassiveVerdict()


class _Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


class HealthTracker:
    """Rise/fall state machine of one server; see the module docstring for the exact rules."""

    def __init__(self, server: str, state: ServerState = ServerState.UNKNOWN) -> None:
        self.server = server
        self.state = state
        self.successes = 0
        """Consecutive successful probes (reset by a failure)."""
        self.failures = 0
        """Consecutive failed probes (reset by a success); raised by passive errors."""
        self.recheck_requested = False
        """An immediate probe was requested and no probe result has been recorded since."""
        self.identity: str | None = None
        self.uptime: float | None = None
        self._passive_errors = 0
        self._passive_5xx = 0
        self._suspicion: str | None = None  # why a passive error made the server pre-fatal
        self._outage: str | None = None  # set when the server went down/away after being seen
        self._stall: str | None = None  # evidence of a stalled request awaiting its probe
        self._answered_at: float | None = None  # when a probe last succeeded (shell's clock)

    # -- state -----------------------------------------------------------------------------

    @property
    def stall_suspected(self) -> bool:
        """Return True while a stalled request awaits its confirming probe."""
        return self._stall is not None

    @property
    def transitioning(self) -> bool:
        """Return True while some but not enough consecutive results point the other way."""
        return (self.state is ServerState.UP and self.failures > 0) or (
            self.state is ServerState.DOWN and self.successes > 0
        )

    def reset(self, state: ServerState = ServerState.UNKNOWN) -> None:
        """Forget everything (the server's URL changed, or it was re-enabled)."""
        self.state = state
        self.successes = self.failures = 0
        self.recheck_requested = False
        self.identity = None
        self.uptime = None
        self._passive_errors = self._passive_5xx = 0
        self._suspicion = self._outage = self._stall = None
        self._answered_at = None

    def adopt(self, state: ServerState) -> None:
        """Take over a state set by someone else (e.g. an admin), dropping partial counts."""
        if state is not self.state:
            self.state = state
            self.successes = self.failures = 0
            self._suspicion = self._stall = None

    def _move(self, new: ServerState, reason: str) -> Transition | None:
        old = self.state
        if new is old:
            return None
        self.state = new
        self._stall = None
        if new is ServerState.DOWN and self.identity is not None:
            self._outage = self._outage or "marked down"
        if new is ServerState.UP:
            self._suspicion = None
        return Transition(self.server, old, new, reason)

    # -- active probes -----------------------------------------------------------------------

    def record(
        self,
        ok: bool,
        settings: HealthSettings,
        *,
        detail: str = "",
        refused: bool = False,
        at: float | None = None,
    ) -> Transition | None:
        """Count one probe result and return the transition it causes, if any.

        ``detail`` describes a failure (it ends up in the transition's reason); ``refused`` says
        the connection was refused (nothing listening), which is restart evidence; ``at`` is when
        the result came in, on the clock of :meth:`observe_stall`'s ``since``.
        """
        self.recheck_requested = False
        stall, self._stall = self._stall, None  # this result is the stall's confirming probe
        if ok:
            self.failures = 0
            self.successes = min(self.successes + 1, _COUNT_CAP)
            self._suspicion = None
            if at is not None:
                self._answered_at = at
            if self.state is ServerState.UNKNOWN:
                return self._move(ServerState.UP, "first check passed")
            if self.state is ServerState.DOWN and self.successes >= settings.rise:
                return self._move(ServerState.UP, f"{self.successes} consecutive successful checks")
            return None
        self.successes = 0
        self.failures = min(self.failures + 1, _COUNT_CAP)
        if refused and self.identity is not None:
            self._outage = self._outage or "connection refused"
        why = detail or "check failed"
        if self.state is ServerState.UNKNOWN:
            return self._move(ServerState.DOWN, f"first check failed: {why}")
        if self.state is ServerState.UP and stall is not None:
            return self._move(ServerState.DOWN, f"{stall}, confirmed by a failed check: {why}")
        if self.state is ServerState.UP and self.failures >= settings.fall:
            if self._suspicion is not None:
                reason = f"{self._suspicion}, confirmed by a failed check: {why}"
            else:
                reason = f"{self.failures} consecutive failed checks: {why}"
            return self._move(ServerState.DOWN, reason)
        return None

    # -- passive observations ----------------------------------------------------------------

    def _ask_recheck(self) -> bool:
        if self.recheck_requested:
            return False
        self.recheck_requested = True
        return True

    def observe_failure(
        self,
        kind: PassiveErrorKind | str,
        detail: str,
        passive: PassiveSettings,
        settings: HealthSettings,
    ) -> PassiveVerdict:
        """Count a failure seen on real traffic; return whether to probe now and any transition."""
        if not passive.enabled:
            return NOTHING
        if kind == "status_5xx":
            status = _status_of(detail)
            if status is not None and status in passive.transient_statuses:
                return NOTHING
            self._passive_5xx += 1
            if self._passive_5xx < passive.consecutive_5xx:
                return NOTHING
            self._passive_5xx = 0
            evidence = f"{passive.consecutive_5xx} consecutive 5xx answers (last {detail})"
        else:
            self._passive_errors += 1
            if self._passive_errors < passive.error_limit:
                return NOTHING
            self._passive_errors = 0
            evidence = f"proxied request failed ({kind}" + (f": {detail})" if detail else ")")
        if self.state is ServerState.DOWN:
            self.successes = 0  # failing real traffic: not "going up"
            return NOTHING
        action = passive.on_error
        if action == "mark-down":
            return PassiveVerdict(self._ask_recheck(), self._move(ServerState.DOWN, evidence))
        if action == "fail-check":
            self.successes = 0
            self.failures = min(self.failures + 1, _COUNT_CAP)
            transition = None
            if self.state is ServerState.UP and self.failures >= settings.fall:
                transition = self._move(ServerState.DOWN, evidence)
            return PassiveVerdict(self._ask_recheck(), transition)
        if action == "sudden-death":
            self.successes = 0
            self.failures = max(self.failures, settings.fall - 1)
            self._suspicion = evidence
        return PassiveVerdict(self._ask_recheck())

    def observe_stall(
        self,
        waited: float,
        since: float,
        passive: PassiveSettings,
        settings: HealthSettings,
    ) -> PassiveVerdict:
        """Note a request that has waited ``waited`` seconds (since ``since``) with no answer.

        Returns ``recheck`` when this is new evidence against an ``up`` server: the shell then
        probes at once, unless a probe is already in flight (that one confirms or clears).
        See the module docstring, "Stalled requests".
        """
        if (
            not passive.enabled
            or not passive.confirm_stalls
            or self.state is not ServerState.UP
            or self._stall is not None
            or waited < settings.timeout
        ):
            return NOTHING
        if self._answered_at is not None and since <= self._answered_at:
            return NOTHING  # a probe answered while this request waited: slow, not hung
        self._stall = (
            f"a proxied request stalled (no answer for {waited:.1f}s, longer than the "
            f"{settings.timeout:g}s health timeout)"
        )
        self.recheck_requested = True
        return PassiveVerdict(recheck=True)

    def observe_success(self) -> PassiveVerdict:
        """Note a healthy exchange on real traffic (resets passive counters; may ask a probe)."""
        self._passive_errors = 0
        self._passive_5xx = 0
        self._stall = None  # the backend answers: a stalled request alone proves nothing
        if self.state is not ServerState.UP:
            return PassiveVerdict(self._ask_recheck())
        return NOTHING

    # -- restarts ------------------------------------------------------------------------------

    def observe_identity(self, identity: str | None, uptime: float | None = None) -> Restart | None:
        """Compare a successful probe's identity with the last one; return a restart, if any.

        Call it for successful probes only, before or after :meth:`record`.
        """
        previous, previous_uptime, outage = self.identity, self.uptime, self._outage
        self._outage = None
        if identity is not None:
            self.identity = identity
        if uptime is not None:
            self.uptime = uptime
        if previous is None:
            return None  # first sight: nothing was lost that we knew of
        if identity is not None and identity != previous:
            return Restart(self.server, "identity", "backend identity changed")
        if uptime is not None and previous_uptime is not None and uptime < previous_uptime:
            return Restart(
                self.server, "uptime", f"uptime went back from {previous_uptime:g}s to {uptime:g}s"
            )
        if outage is not None:
            return Restart(self.server, "returned", f"answering again after: {outage}")
        return None


def _status_of(detail: str) -> int | None:
    head = detail.strip().split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def next_interval(settings: HealthSettings, tracker: HealthTracker, rng: _Uniform) -> float:
    """Return the seconds to wait before the next scheduled probe of ``tracker``'s server."""
    if tracker.state is ServerState.UNKNOWN or tracker.transitioning:
        base = settings.fast_interval
    elif tracker.state is ServerState.UP:
        base = settings.interval
    else:
        base = settings.down_interval
    if settings.jitter:
        base *= 1.0 + rng.uniform(-settings.jitter, settings.jitter)
    return max(base, MIN_INTERVAL)


# -- /system_stats interpretation ------------------------------------------------------------


def identity_of(stats: Any) -> str | None:
    """Return a short fingerprint of a backend process from its ``/system_stats`` answer.

    It covers what stays the same while one process runs (``ram_free``, ``vram_free`` are left
    out). ``None`` when the answer has no ``system`` object.
    """
    if not isinstance(stats, dict) or not isinstance(stats.get("system"), dict):
        return None
    system: dict[str, Any] = stats["system"]
    devices = stats.get("devices") if isinstance(stats.get("devices"), list) else []
    parts: dict[str, Any] = {
        key: system.get(key)
        for key in (
            "argv",
            "ram_total",
            "comfyui_version",
            "python_version",
            "pytorch_version",
            "os",
            "embedded_python",
            *BOOT_ID_KEYS,
        )
        if key in system
    }
    parts["devices"] = [
        [d.get("name"), d.get("type"), d.get("index"), d.get("vram_total")]
        for d in devices
        if isinstance(d, dict)
    ]
    raw = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def uptime_of(stats: Any) -> float | None:
    """Return ``system.uptime`` (seconds) when a backend reports one; stock ComfyUI does not."""
    if isinstance(stats, dict) and isinstance(stats.get("system"), dict):
        value = stats["system"].get("uptime")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def version_of(stats: Any) -> str | None:
    """Return ``system.comfyui_version`` from a ``/system_stats`` answer."""
    if isinstance(stats, dict) and isinstance(stats.get("system"), dict):
        value = stats["system"].get("comfyui_version")
        return str(value) if value is not None else None
    return None


def devices_of(stats: Any) -> list[dict[str, Any]]:
    """Return the ``devices`` list of a ``/system_stats`` answer (empty when absent)."""
    if isinstance(stats, dict) and isinstance(stats.get("devices"), list):
        return [d for d in stats["devices"] if isinstance(d, dict)]
    return []


def queue_remaining_of(answer: Any) -> int | None:
    """Return ``exec_info.queue_remaining`` from a ``GET /prompt`` answer."""
    if isinstance(answer, dict) and isinstance(answer.get("exec_info"), dict):
        value = answer["exec_info"].get("queue_remaining")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
