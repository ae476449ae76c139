"""The admin REST API (``/gateway/api``), its SSE stream and OpenAPI document, and the probes.

Wiring, done by the application factory::

    admin = create_admin_app(
        registry=registry,
        store=store,                      # store.on_change(...) already applies changes
        token_getter=lambda: token,       # admin token in force (config or env), or None
        protect_reads_getter=lambda: registry.config.admin.protect_reads,
    )
    app.add_subapp("/gateway/api", admin)
    add_health_routes(app)                # /gateway/healthz, /gateway/readyz, shutdown hook
"""

from gateway.admin.api import ADMIN, OPERATIONS, AdminContext, build_spec, create_admin_app
from gateway.admin.health import (
    READINESS,
    Readiness,
    add_health_routes,
    healthz,
    mark_shutting_down,
    readyz,
    set_shutting_down,
)
from gateway.admin.tester import ProbeTester, ServerTester

__all__ = [
    "ADMIN",
    "OPERATIONS",
    "READINESS",
    "AdminContext",
    "ProbeTester",
    "Readiness",
    "ServerTester",
    "add_health_routes",
    "build_spec",
    "create_admin_app",
    "healthz",
    "mark_shutting_down",
    "readyz",
    "set_shutting_down",
]
