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

Importing this package and building the sub-app is cheap: the handlers, the pydantic request
and response models and the OpenAPI document load on the first admin request (see
:mod:`gateway.admin.routes`). ``OPERATIONS`` and ``build_spec`` are imported from
:mod:`gateway.admin.api` when first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from gateway.admin.health import (
    READINESS,
    Readiness,
    add_health_routes,
    healthz,
    mark_shutting_down,
    readyz,
    set_shutting_down,
)
from gateway.admin.routes import ADMIN, AdminContext, create_admin_app
from gateway.admin.tester import ProbeTester, ServerTester

_FROM_API = frozenset({"OPERATIONS", "build_spec"})


def __getattr__(name: str) -> Any:
    """Return ``OPERATIONS`` and ``build_spec`` from :mod:`gateway.admin.api` (loaded now)."""
    if name in _FROM_API:
        return getattr(importlib.import_module("gateway.admin.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
