"""Application wiring: build the gateway from a configuration. No logic lives here.

Route table, in match order:

* ``/gateway/...``: the gateway's own pages (admin API, dashboard, health endpoints);
* ``/metrics``: Prometheus;
* everything else, every method, websocket upgrades included: forwarded to ComfyUI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from gateway.config.models import GatewayConfig
from gateway.events import Event, EventBus
from gateway.jobs.comfy import ComfyRouter
from gateway.jobs.recovery import JobRecovery
from gateway.jobs.tracker import JobTracker
from gateway.jobs.uploads import UploadCache
from gateway.keys import BACKENDS, EVENTS, FORWARDER, OBSERVERS, REGISTRY
from gateway.proxy.handler import make_proxy_handler
from gateway.proxy.http import HttpForwarder, PickBackend
from gateway.proxy.observer import ObserverChain
from gateway.proxy.origin import origin_middleware
from gateway.proxy.upstream import Backend, BackendPool
from gateway.proxy.websocket import WsRelay, WsSettings
from gateway.registry import ServerRegistry, ServerState
from gateway.tasks import spawn

WS_RELAY: web.AppKey[WsRelay] = web.AppKey("ws_relay", WsRelay)
JOBS: web.AppKey[ComfyRouter] = web.AppKey("jobs", ComfyRouter)
RECOVERY: web.AppKey[JobRecovery] = web.AppKey("recovery", JobRecovery)
CONFIG_PATH: web.AppKey[Path | None] = web.AppKey("config_path")


def candidates(registry: ServerRegistry, tried: frozenset[str]) -> list[str]:
    """Return the backends to try for a request, serving first (see gateway.routing)."""
    order = [registry.serving_id] if registry.serving_id else []
    if registry.config.failover.auto_switch:
        order += [s.id for s in registry.healthy_servers() if s.id not in order]
    return [s for s in order if s not in tried]


def reachable(registry: ServerRegistry) -> list[str]:
    """Return the enabled servers not known to be down (asked when answers are merged)."""
    return [
        s.id
        for s in registry.servers
        if s.enabled and registry.status(s.id).state is not ServerState.DOWN
    ]


def make_picker(registry: ServerRegistry, pool: BackendPool) -> PickBackend:
    """Return a picker that walks :func:`candidates` for one request."""

    def pick(tried: frozenset[str]) -> Backend | None:
        for server_id in candidates(registry, tried):
            if server_id not in tried and (backend := pool.get(server_id)) is not None:
                return backend
        return None

    return pick


def apply_config(app: web.Application, config: GatewayConfig, reason: str) -> None:
    """Put a new (validated, saved) configuration into force."""
    app[BACKENDS].sync(config)
    app[REGISTRY].apply_config(config, reason=reason)


def create_app(config: GatewayConfig, *, config_path: Path | None = None) -> web.Application:
    """Build the gateway application for ``config`` (loaded from ``config_path`` if any)."""
    events = EventBus()
    registry = ServerRegistry(config, events)
    pool = BackendPool(config)
    observers = ObserverChain()

    def proxy_settings():  # type: ignore[no-untyped-def]
        return registry.config.proxy

    forwarder = HttpForwarder(
        observers,
        max_body_size=lambda: proxy_settings().max_body_size,
        trust_forwarded=lambda: proxy_settings().trust_forwarded_headers,
    )
    relay = WsRelay(
        backend_for=pool.get,
        serving_id=lambda: registry.serving_id,
        candidates=lambda tried: candidates(registry, tried),
        observer=observers,
        settings=lambda: WsSettings(
            max_msg_size=proxy_settings().ws_max_message_size,
            heartbeat=proxy_settings().ws_heartbeat,
            trust_forwarded=proxy_settings().trust_forwarded_headers,
        ),
    )

    tracker = JobTracker(config.jobs.affinity_max_entries, config.jobs.affinity_ttl)
    uploads = UploadCache(config.jobs.upload_cache_bytes)
    router = ComfyRouter(
        pool=pool,
        forwarder=forwarder,
        relay=relay,
        tracker=tracker,
        uploads=uploads,
        events=events,
        candidates=lambda tried: candidates(registry, tried),
        reachable=lambda: reachable(registry),
        max_body_size=lambda: proxy_settings().max_body_size,
    )
    relay.message_hooks.append(router.on_ws_message)
    relay.keep_secondary = lambda client_id, server_id: any(
        r.client_id == client_id for r in tracker.unfinished_on(server_id)
    )
    recovery = JobRecovery(
        registry=registry, router=router, settings=lambda: registry.config.failover
    )

    app = web.Application(
        middlewares=[
            origin_middleware(
                lambda: frozenset(o.rstrip("/").lower() for o in proxy_settings().allowed_origins)
            )
        ],
        client_max_size=config.proxy.max_body_size,
        handler_args={"max_field_size": 65536, "max_line_size": 65536},
    )
    app[EVENTS] = events
    app[REGISTRY] = registry
    app[BACKENDS] = pool
    app[OBSERVERS] = observers
    app[FORWARDER] = forwarder
    app[WS_RELAY] = relay
    app[CONFIG_PATH] = config_path
    app[JOBS] = router
    app[RECOVERY] = recovery

    def on_event(event: Event) -> None:
        if event.kind == "serving.changed":
            spawn(relay.serving_changed(), name="ws-serving-changed")

    events.add_listener(on_event)

    async def close_backends(app: web.Application) -> AsyncIterator[None]:
        yield
        await pool.close()

    async def close_websockets(app: web.Application) -> None:
        await relay.close_all()

    async def close_uploads(app: web.Application) -> AsyncIterator[None]:
        yield
        uploads.close()

    app.cleanup_ctx.extend([close_backends, close_uploads, recovery.context])
    app.on_shutdown.append(close_websockets)

    proxy = make_proxy_handler(
        forwarder=forwarder,
        relay=relay,
        pick_serving=lambda: make_picker(registry, pool),
        comfy_hook=lambda: router,
    )
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


__all__ = ["CONFIG_PATH", "WS_RELAY", "EventBus", "apply_config", "create_app"]
