"""Application wiring: build the gateway from a configuration. No logic lives here.

Route table, in match order:

* ``/gateway/...``: the gateway's own pages (admin API, dashboard, health endpoints);
* ``/metrics``: Prometheus;
* everything else, every method, websocket upgrades included: forwarded to ComfyUI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.admin import add_health_routes, create_admin_app
from gateway.alerts import setup_alerts
from gateway.config.models import GatewayConfig
from gateway.config.store import ConfigStore
from gateway.dashboard import setup_dashboard
from gateway.events import Event, EventBus
from gateway.health.checker import (
    FailoverController,
    HealthChecker,
    PassiveHealth,
    health_cleanup_ctx,
)
from gateway.jobs.comfy import ComfyRouter
from gateway.jobs.recovery import JobRecovery
from gateway.jobs.tracker import JobTracker
from gateway.jobs.uploads import UploadCache
from gateway.keys import BACKENDS, EVENTS, FAST_LANE, FORWARDER, OBSERVERS, REGISTRY
from gateway.observability.logging import attach_event_logging
from gateway.observability.metrics import GatewayMetrics, metrics_handler
from gateway.observability.middleware import install_request_context
from gateway.proxy.fastlane import FastLane
from gateway.proxy.handler import make_proxy_handler
from gateway.proxy.http import HttpForwarder
from gateway.proxy.observer import ObserverChain
from gateway.proxy.origin import origin_middleware
from gateway.proxy.upstream import BackendPool
from gateway.proxy.websocket import WsRelay, WsSettings
from gateway.registry import ServerRegistry, ServerState
from gateway.routing.select import candidates, make_picker
from gateway.tasks import spawn

WS_RELAY: web.AppKey[WsRelay] = web.AppKey("ws_relay", WsRelay)
HEALTH: web.AppKey[HealthChecker] = web.AppKey("health", HealthChecker)
FAILOVER: web.AppKey[FailoverController] = web.AppKey("failover", FailoverController)
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
JOBS: web.AppKey[ComfyRouter] = web.AppKey("jobs", ComfyRouter)
RECOVERY: web.AppKey[JobRecovery] = web.AppKey("recovery", JobRecovery)
STORE: web.AppKey[ConfigStore] = web.AppKey("store", ConfigStore)


async def gateway_namespace_fallback(request: web.Request) -> web.Response:
    """Answer 405 (with ``Allow``) for a known gateway path and method, else 404."""
    allowed = sorted(
        {
            route.method
            for resource in request.app.router.resources()
            if resource.canonical == request.path
            for route in resource
            if route.method != "*"
        }
    )
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound(text=f"{request.path} is not a comfyui-gateway route")


def admin_token(config: GatewayConfig) -> str | None:
    """Return the admin token in force (the environment override is already applied)."""
    token = config.admin.token
    return token.get_secret_value() if token is not None else None


def all_down(registry: ServerRegistry) -> bool:
    """Return True when health checks found every enabled server down."""
    return all(
        registry.status(s.id).state is ServerState.DOWN for s in registry.servers if s.enabled
    )


def reachable(registry: ServerRegistry) -> list[str]:
    """Return the enabled servers not known to be down (asked when answers are merged)."""
    return [
        s.id
        for s in registry.servers
        if s.enabled and registry.status(s.id).state is not ServerState.DOWN
    ]


def apply_config(app: web.Application, config: GatewayConfig, reason: str) -> None:
    """Put a new (validated, saved) configuration into force."""
    app[BACKENDS].sync(config)
    app[REGISTRY].apply_config(config, reason=reason)


def create_app(
    config: GatewayConfig, *, store: ConfigStore | None = None, watch_config: bool = True
) -> web.Application:
    """Build the gateway for ``config``; ``store`` keeps it in step with its file.

    Without a store the configuration lives in memory only (admin changes are not saved).
    """
    store = store or ConfigStore(None, config)
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
        all_down=lambda: all_down(registry),
        stall_after=lambda: registry.config.health.timeout,
    )
    relay = WsRelay(
        backend_for=pool.get,
        serving_id=lambda: registry.serving_id,
        candidates=lambda tried: candidates(registry, tried),
        observer=observers,
        queue_length=lambda server_id: (
            registry.status(server_id).queue_remaining if server_id in registry.statuses() else None
        ),
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
    relay.attach_hooks.append(router.on_ws_attach)
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
    app[STORE] = store
    store.on_change(lambda new, reason: apply_config(app, new, reason))
    app[JOBS] = router
    app[RECOVERY] = recovery

    checker = HealthChecker(registry, pool)
    controller = FailoverController(registry, busy=tracker.busy)
    observers.add(PassiveHealth(checker))
    metrics = GatewayMetrics(servers=registry)
    metrics.attach_events(events)
    observers.add(metrics.observer)
    attach_event_logging(events)
    install_request_context(app)
    setup_alerts(app, registry, metrics_registry=metrics.registry)
    app[HEALTH] = checker
    app[FAILOVER] = controller
    app[METRICS] = metrics

    def on_event(event: Event) -> None:
        if event.kind == "serving.changed":
            spawn(relay.serving_changed(), name="ws-serving-changed")

    events.add_listener(on_event)

    async def close_backends(app: web.Application) -> AsyncIterator[None]:
        yield
        await pool.close()

    async def close_websockets(app: web.Application) -> None:
        await relay.close_all()

    async def watch_config_file(app: web.Application) -> AsyncIterator[None]:
        if store.path is None or not watch_config:
            yield
            return
        store.install_sighup()
        async with store.watch():
            yield

    async def close_uploads(app: web.Application) -> AsyncIterator[None]:
        yield
        uploads.close()

    lane = FastLane(
        pick=make_picker(registry, pool),
        observer=observers,
        handles=router.handles,
        trust_forwarded=lambda: proxy_settings().trust_forwarded_headers,
        stall_after=lambda: registry.config.health.timeout,
        backends=lambda: pool,
    )
    app[FAST_LANE] = lane

    app.cleanup_ctx.extend(
        [
            lane.context,
            close_backends,
            close_uploads,
            health_cleanup_ctx(checker, controller),
            recovery.context,
            watch_config_file,
        ]
    )
    app.on_shutdown.append(close_websockets)

    proxy = make_proxy_handler(
        forwarder=forwarder,
        relay=relay,
        pick_serving=lambda: make_picker(registry, pool),
        comfy_hook=lambda: router,
        earlier_for=lambda request: lane.earlier_for(request.transport),
    )
    admin = create_admin_app(
        registry=registry,
        store=store,
        token_getter=lambda: admin_token(registry.config),
        protect_reads_getter=lambda: registry.config.admin.protect_reads,
    )
    app.add_subapp("/gateway/api", admin)
    add_health_routes(app)
    setup_dashboard(app)
    app.router.add_get("/metrics", metrics_handler(metrics))
    # The gateway's namespace is never forwarded: what its routes do not answer is its own
    # 404 or 405, not ComfyUI's.
    app.router.add_route("*", "/gateway/{tail:.*}", gateway_namespace_fallback)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


__all__ = ["STORE", "WS_RELAY", "EventBus", "apply_config", "create_app"]
