"""The server registry: the running gateway's single view of its servers.

It holds the current (immutable) :class:`GatewayConfig`, the live health status of every server,
and two distinct choices:

* the **preferred** server, the one the admin selected (``config.active``), persisted;
* the **serving** server, the one traffic goes to now. It equals the preferred one until a
  failover moves it, and is runtime state only.

The registry decides nothing by itself: health checks write statuses into it, the failover
controller (``gateway.routing``) moves ``serving``, the admin API replaces the config. Every change
is published on the :class:`EventBus` so the SSE stream, metrics, logs and alerts see it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from gateway.config.models import GatewayConfig, ServerConfig
from gateway.events import EventBus


class ServerState(StrEnum):
    """Health state of one server (HAProxy-like; ``unknown`` until the first verdict)."""

    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"


@dataclass
class ServerStatus:
    """Live status of one server, written by the health checker."""

    state: ServerState = ServerState.UNKNOWN
    checking: bool = False
    """True while the state is in transition (some but not enough rise/fall results)."""
    latency: float | None = None
    last_check: float | None = None
    last_change: float | None = None
    last_error: str | None = None
    http_status: int | None = None
    queue_remaining: int | None = None
    comfyui_version: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    identity: str | None = None
    """Something that changes when the backend process restarts (from ``/system_stats``)."""

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        data = asdict(self)
        data["state"] = self.state.value
        data.pop("identity", None)
        return data


def _index(config: GatewayConfig) -> dict[str, ServerConfig]:
    """Return the servers by id (the first one wins, as :meth:`GatewayConfig.server` does)."""
    return {s.id: s for s in reversed(config.servers)}


class ServerRegistry:
    """Current configuration, live statuses, and the preferred/serving choice."""

    def __init__(self, config: GatewayConfig, events: EventBus | None = None) -> None:
        self.events = events or EventBus()
        self._config = config
        self._by_id: dict[str, ServerConfig] = _index(config)
        self._status: dict[str, ServerStatus] = {s.id: ServerStatus() for s in config.servers}
        self._serving: str | None = config.preferred_id
        self._serving_config: ServerConfig | None = self._by_id.get(self._serving or "")
        """The serving server's config, kept in step with ``_config`` and ``_serving`` (O(1)
        look-up on every proxied request)."""
        self.serving_since = time.monotonic()

    # -- configuration ------------------------------------------------------------------

    @property
    def config(self) -> GatewayConfig:
        """Return the configuration in force."""
        return self._config

    def apply_config(self, config: GatewayConfig, *, reason: str) -> None:
        """Replace the configuration (already validated and saved) and reconcile statuses."""
        old = self._config
        self._config = config
        self._by_id = _index(config)
        self._serving_config = self._by_id.get(self._serving or "")
        kept = {s.id for s in config.servers}
        for server_id in list(self._status):
            if server_id not in kept:
                del self._status[server_id]
        for server in config.servers:
            previous = old.server(server.id)
            if server.id not in self._status or (previous and previous.url != server.url):
                self._status[server.id] = ServerStatus()
        self.events.publish("config.applied", reason=reason, servers=sorted(kept))
        serving = self.server(self._serving) if self._serving else None
        if serving is None or not serving.enabled:
            self.set_serving(config.preferred_id, reason=f"config: {reason}")
        elif old.active != config.active and config.active is not None:
            self.set_serving(config.active, reason="admin selected the active server")

    @property
    def servers(self) -> list[ServerConfig]:
        """Return every configured server, in file order."""
        return list(self._config.servers)

    def server(self, server_id: str | None) -> ServerConfig | None:
        """Return the server with this id, or None."""
        return self._by_id.get(server_id) if server_id else None

    # -- status ---------------------------------------------------------------------------

    def status(self, server_id: str) -> ServerStatus:
        """Return the live status of a configured server (KeyError when unknown)."""
        return self._status[server_id]

    def statuses(self) -> dict[str, ServerStatus]:
        """Return every server's live status."""
        return dict(self._status)

    def find_status(self, server_id: str) -> ServerStatus | None:
        """Return the live status of a server, or None (no copy: for the hot path)."""
        return self._status.get(server_id)

    def is_up(self, server_id: str) -> bool:
        """Return True when the server is enabled and its last verdict is up."""
        server = self.server(server_id)
        status = self._status.get(server_id)
        return bool(server and server.enabled and status and status.state is ServerState.UP)

    def healthy_servers(self) -> list[ServerConfig]:
        """Return enabled servers that are up, best first (priority, then latency)."""
        ups = [s for s in self._config.servers if self.is_up(s.id)]
        return sorted(ups, key=lambda s: (s.priority, self._status[s.id].latency or 0.0))

    def set_state(self, server_id: str, state: ServerState, *, reason: str) -> None:
        """Record a health verdict change and publish it."""
        status = self._status.get(server_id)
        if status is None or status.state is state:
            return
        previous = status.state
        status.state = state
        status.last_change = time.time()
        self.events.publish(
            "server.state",
            server=server_id,
            state=state.value,
            previous=previous.value,
            reason=reason,
        )

    # -- preferred / serving -----------------------------------------------------------

    @property
    def preferred_id(self) -> str | None:
        """Return the admin's preferred server id."""
        return self._config.preferred_id

    @property
    def serving_id(self) -> str | None:
        """Return the id of the server traffic goes to now."""
        return self._serving

    @property
    def serving(self) -> ServerConfig | None:
        """Return the server traffic goes to now (None: none, or no longer configured)."""
        return self._serving_config

    def set_serving(self, server_id: str | None, *, reason: str, kind: str = "switch") -> None:
        """Move traffic to ``server_id`` (``kind``: switch, failover, failback) and publish it."""
        if server_id == self._serving:
            return
        previous = self._serving
        self._serving = server_id
        self._serving_config = self._by_id.get(server_id) if server_id else None
        self.serving_since = time.monotonic()
        self.events.publish(
            "serving.changed",
            previous=previous,
            serving=server_id,
            preferred=self.preferred_id,
            kind=kind,
            reason=reason,
        )
