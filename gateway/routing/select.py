"""Which backend one request goes to. Pure: reads the registry, does no I/O.

:func:`candidates` lists the servers a request may try, in order; the HTTP forwarder and the
websocket relay walk it, passing the ids they already tried. A first attempt usually goes to the
serving server: :func:`pick_backend` then answers from :func:`first_choice` without ranking every
server (same answer as ``candidates(registry)[0]``, a property test keeps them equal).

The forwarder moves on to the next candidate only when the connection was refused or failed
before anything was sent (a ``POST /prompt`` that reached a backend is never replayed), so every
entry after the first is a *retry candidate for a refused connection*.

Rules:

1. A disabled or unconfigured server is never a candidate. A server already tried is never
   offered again (so a walk always ends).
2. The serving server comes first, unless it is ``down``.
3. With ``failover.auto_switch`` on, the eligible servers (enabled and ``up``) follow, best first
   with the same order the failover policy uses (:func:`gateway.routing.failover.rank`: the
   preferred server, then priority, latency, id). A refused connection is thus retried where the
   failover is about to move traffic anyway.
4. A ``down`` serving server is skipped while another candidate exists. When nothing else is left
   it is still offered, once (**fail-open**, like Envoy's panic mode and LiteLLM's "if all are
   removed, use all"): it may have come back since its last probe, and a refused connection costs
   a millisecond. The answer then is the forwarder's error (the proxy should present "every
   backend down" as a 503); a success there is reported to passive health, which probes the
   server at once, so the state catches up immediately.
5. With ``auto_switch`` off the serving server is the only candidate, down or not (the admin
   pinned it); a disabled one leaves no candidate (503).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from gateway.registry import ServerRegistry, ServerState
from gateway.routing.failover import ServerView, rank

if TYPE_CHECKING:
    from gateway.proxy.upstream import Backend


class _BackendSource(Protocol):
    def get(self, server_id: str) -> Backend | None: ...


def server_views(
    registry: ServerRegistry, since: Mapping[str, float] | None = None
) -> list[ServerView]:
    """Return the policy's view of every configured server (``since``: state start times)."""
    views: list[ServerView] = []
    statuses = registry.statuses()
    for server in registry.servers:
        status = statuses.get(server.id)
        views.append(
            ServerView(
                id=server.id,
                enabled=server.enabled,
                state=status.state if status else ServerState.UNKNOWN,
                priority=server.priority,
                latency=status.latency if status else None,
                since=since.get(server.id) if since is not None else None,
            )
        )
    return views


def candidates(registry: ServerRegistry, tried: frozenset[str] = frozenset()) -> list[str]:
    """Return the server ids to try for one request, in order (see the module rules)."""
    serving = registry.serving
    usable_serving = serving is not None and serving.enabled and serving.id not in tried
    if not registry.config.failover.auto_switch:
        return [serving.id] if serving is not None and usable_serving else []
    order: list[str] = []
    serving_down = False
    if serving is not None and usable_serving:
        serving_down = registry.status(serving.id).state is ServerState.DOWN
        if not serving_down:
            order.append(serving.id)
    for view in rank(server_views(registry), registry.preferred_id):
        if view.id not in tried and view.id not in order:
            order.append(view.id)
    if serving_down and not order and serving is not None:
        order.append(serving.id)  # fail-open: every server is down, try the serving one once
    return order


def first_choice(registry: ServerRegistry) -> str | None:
    """Return the serving server's id when it is a first attempt's first candidate, else None.

    The fast path of :func:`pick_backend`: the same answer as
    ``candidates(registry, frozenset())[0]`` whenever it is not None (rules 2 and 5: the serving
    server is enabled and, with ``auto_switch`` on, not ``down``), without building and ranking
    every server's view. None means "ask :func:`candidates`" (no serving server, disabled, or
    down with ``auto_switch`` on), not "no candidate".
    """
    serving = registry.serving
    if serving is None or not serving.enabled:
        return None
    if not registry.config.failover.auto_switch:
        return serving.id
    status = registry.status(serving.id)
    return None if status.state is ServerState.DOWN else serving.id


def pick_backend(
    registry: ServerRegistry, backends: _BackendSource, tried: frozenset[str] = frozenset()
) -> Backend | None:
    """Return the first candidate's :class:`Backend`, or None when there is none left."""
    if not tried:
        # Every request's first attempt: no ranking when the serving server takes it.
        server_id = first_choice(registry)
        if server_id is not None:
            backend = backends.get(server_id)
            if backend is not None:
                return backend
    for server_id in candidates(registry, tried):
        backend = backends.get(server_id)
        if backend is not None:
            return backend
    return None


def make_picker(
    registry: ServerRegistry, backends: _BackendSource
) -> Callable[[frozenset[str]], Backend | None]:
    """Return a ``PickBackend`` for :meth:`gateway.proxy.http.HttpForwarder.forward`."""

    def pick(tried: frozenset[str]) -> Backend | None:
        return pick_backend(registry, backends, tried)

    return pick
