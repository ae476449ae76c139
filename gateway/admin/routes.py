"""The admin sub-app as mounted at start-up: route table, shared context, factory.

The admin API is used rarely (a dashboard session, a script, a probe of ``/openapi.json``), so
nothing of it that costs memory is loaded until its first request: the handlers
(:mod:`gateway.admin.api`), the request/response models (:mod:`gateway.admin.schemas`), the
problem documents and their middleware (:mod:`gateway.admin.problems`, :mod:`gateway.admin.auth`)
and the OpenAPI document (:mod:`gateway.admin.openapi`, built once, on the first ``GET
/openapi.json``). What is registered at start-up is plain data:

* :data:`ROUTES`: method, path, operation id (the route name) and the handler's name in
  :mod:`gateway.admin.api`. aiohttp needs every route before the application starts, so they are
  all registered; each points to a small trampoline that imports the handler module on its first
  call. :data:`gateway.admin.api.OPERATIONS` documents the same routes (the tests check that the
  two tables and the router agree);
* one middleware that, on the first admin request, builds the real chain (problem documents
  outermost, then the guard: origin, token, CSRF) and from then on only delegates to it;
* :class:`AdminContext`, what the handlers share, under :data:`ADMIN`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from gateway.admin.sse import HEARTBEAT_SECONDS, EventStreams
from gateway.admin.tester import ProbeTester, ServerTester
from gateway.config.models import GatewayConfig
from gateway.registry import ServerRegistry

if TYPE_CHECKING:
    import pydantic
    from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Store(Protocol):
    """What the admin API needs from :class:`gateway.config.store.ConfigStore`."""

    @property
    def config(self) -> GatewayConfig:
        """Return the configuration in force."""
        ...

    async def update(
        self, change: Callable[[GatewayConfig], GatewayConfig], *, reason: str
    ) -> GatewayConfig:
        """Validate, save, then apply ``change``; raise and change nothing on failure."""
        ...


@dataclass
class AdminContext:
    """Everything the handlers share (one per admin app, under :data:`ADMIN`)."""

    registry: ServerRegistry
    store: Store
    tester: ServerTester
    token_getter: Callable[[], str | None]
    protect_reads_getter: Callable[[], bool]
    streams: EventStreams
    test_timeout: float | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    """The OpenAPI document; empty until :meth:`openapi` first builds it."""

    def test_limit(self) -> float:
        """Return the most seconds one server test may take."""
        if self.test_timeout is not None:
            return self.test_timeout
        return max(5.0, 3 * self.registry.config.health.timeout + 1.0)

    def secrets(self, *extra: pydantic.BaseModel) -> frozenset[str]:
        """Return every secret value that must never leave in a response or event."""
        from gateway.admin.redaction import secret_values

        found = secret_values(self.registry.config, [self.token_getter()])
        for model in extra:
            found |= secret_values(model)
        return found

    def openapi(self) -> dict[str, Any]:
        """Return the OpenAPI document, built on the first call (it never changes)."""
        if not self.spec:
            self.spec.update(_api().build_spec())
        return self.spec


ADMIN: web.AppKey[AdminContext] = web.AppKey("admin_context", AdminContext)


@dataclass(frozen=True, slots=True)
class Route:
    """One admin route as registered at start-up (paths relative to ``/gateway/api``)."""

    method: str
    path: str
    operation_id: str
    """The route's name (``app.router[operation_id]``) and the OpenAPI operation id."""
    handler: str
    """The handler's name in :mod:`gateway.admin.api`."""
    public: bool = False
    """No token ever required (only the OpenAPI document)."""


ROUTES: tuple[Route, ...] = (
    Route("GET", "/servers", "listServers", "list_servers"),
    Route("POST", "/servers", "addServer", "add_server"),
    Route("GET", "/servers/{id}", "getServer", "get_server"),
    Route("PATCH", "/servers/{id}", "updateServer", "update_server"),
    Route("DELETE", "/servers/{id}", "deleteServer", "delete_server"),
    Route("POST", "/servers/{id}/activate", "activateServer", "activate_server"),
    Route("POST", "/servers/{id}/test", "testServer", "test_server"),
    Route("POST", "/servers/test", "testServers", "test_servers"),
    Route("GET", "/settings", "getSettings", "get_settings"),
    Route("PATCH", "/settings", "updateSettings", "update_settings"),
    Route("GET", "/config", "exportConfig", "export_config"),
    Route("PUT", "/config", "importConfig", "import_config"),
    Route("GET", "/events", "streamEvents", "events"),
    Route("GET", "/openapi.json", "getOpenAPI", "openapi", public=True),
)


def _api() -> ModuleType:
    """Return :mod:`gateway.admin.api`, importing it (and the models) on the first call."""
    return importlib.import_module("gateway.admin.api")


def _trampoline(name: str) -> Handler:
    """Return a handler that calls ``gateway.admin.api.<name>``, imported when first called."""

    async def handler(request: web.Request) -> web.StreamResponse:
        real: Handler = getattr(_api(), name)
        return await real(request)

    handler.__name__ = handler.__qualname__ = name
    return handler


def _lazy_middleware(build: Callable[[], tuple[Middleware, ...]]) -> Middleware:
    """Return one middleware running the chain ``build()`` returns, built on first use.

    The chain is applied like aiohttp applies an app's middlewares: the first one outermost.
    """
    chain: list[Middleware] = []

    @web.middleware
    async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not chain:
            chain.extend(build())
        for middleware in reversed(chain[1:]):
            handler = functools.partial(middleware, handler=handler)
        return await chain[0](request, handler)

    return admin_middleware


def create_admin_app(
    *,
    registry: ServerRegistry,
    store: Store,
    tester: ServerTester | None = None,
    token_getter: Callable[[], str | None],
    protect_reads_getter: Callable[[], bool],
    sse_heartbeat: float = HEARTBEAT_SECONDS,
    test_timeout: float | None = None,
) -> web.Application:
    """Return the admin sub-app; mount it with ``app.add_subapp("/gateway/api", admin_app)``.

    ``store`` must already be wired to apply its changes: ``store.on_change(lambda config,
    reason: apply_config(config, reason))`` (the registry, and whatever else follows the
    config). ``token_getter`` returns the admin token in force (config or environment; None or
    "" when there is none) and ``protect_reads_getter`` whether reads need it; both are called
    on every request. ``tester`` defaults to the health checker's ``probe_once``.

    Cheap: the handlers, models and OpenAPI document load on the first admin request.
    """
    ctx = AdminContext(
        registry=registry,
        store=store,
        tester=tester or ProbeTester(lambda: registry.config.health),
        token_getter=token_getter,
        protect_reads_getter=protect_reads_getter,
        streams=EventStreams(sse_heartbeat),
        test_timeout=test_timeout,
    )
    public = frozenset(route.operation_id for route in ROUTES if route.public)

    def middlewares() -> tuple[Middleware, ...]:
        from gateway.admin.auth import make_guard_middleware
        from gateway.admin.problems import problem_middleware

        guard = make_guard_middleware(
            registry=registry,
            token_getter=token_getter,
            protect_reads_getter=protect_reads_getter,
            public_routes=public,
        )
        return (problem_middleware, guard)

    app = web.Application(middlewares=[_lazy_middleware(middlewares)])
    app[ADMIN] = ctx
    for route in ROUTES:
        app.router.add_route(
            route.method, route.path, _trampoline(route.handler), name=route.operation_id
        )
    app.on_shutdown.append(ctx.streams.on_shutdown)
    return app


__all__ = ["ADMIN", "ROUTES", "AdminContext", "Route", "Store", "create_admin_app"]
