"""``/gateway/healthz`` and ``/gateway/readyz``: the gateway's own probes.

They are mounted on the main application (not the admin sub-app): they are never behind the
admin token and never subject to the admin API's origin rules. They read the registry from
``request.config_dict[gateway.keys.REGISTRY]`` and the shutdown flag from
``request.config_dict[READINESS]``.

Wiring (done by :func:`add_health_routes`, or by hand)::

    app[READINESS] = Readiness()
    app.router.add_get("/gateway/healthz", healthz)
    app.router.add_get("/gateway/readyz", readyz)
    app.on_shutdown.append(mark_shutting_down)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.keys import REGISTRY


@dataclass
class Readiness:
    """Mutable readiness state of one gateway process."""

    shutting_down: bool = False


READINESS: web.AppKey[Readiness] = web.AppKey("admin_readiness", Readiness)


def set_shutting_down(app: web.Application) -> None:
    """Make ``/readyz`` answer 503 from now on (call when shutdown begins, e.g. on SIGTERM).

    ``app`` must carry a :class:`Readiness` under :data:`READINESS` (``add_health_routes`` puts
    one there) when it is already running; before that, one is created.
    """
    state = app.get(READINESS)
    if state is None:
        if app.frozen:
            raise RuntimeError("set_shutting_down: app[READINESS] was not set before startup")
        state = app[READINESS] = Readiness()
    state.shutting_down = True


async def mark_shutting_down(app: web.Application) -> None:
    """Call :func:`set_shutting_down` (an ``on_shutdown`` signal handler)."""
    set_shutting_down(app)


def _json(document: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(document, status=status, headers={"Cache-Control": "no-store"})


def readyz_document(
    *,
    ready: bool,
    reason: str | None = None,
    healthy_backend: bool | None = None,
    healthy: list[str] | None = None,
    serving: str | None = None,
    preferred: str | None = None,
) -> dict[str, Any]:
    """Return a ``/readyz`` body: the :class:`gateway.admin.schemas.Readyz` document.

    Built as a plain dict, so the probes (called every few seconds by orchestrators, and the
    only admin routes every deployment uses) load no pydantic model; a test checks that it is
    exactly what ``Readyz(...).model_dump(mode="json")`` gives.
    """
    return {
        "ready": ready,
        "reason": reason,
        "healthy_backend": healthy_backend,
        "healthy": list(healthy or ()),
        "serving": serving,
        "preferred": preferred,
    }


HEALTHZ_DOCUMENT: dict[str, Any] = {"status": "ok"}
"""The ``/healthz`` body: the :class:`gateway.admin.schemas.Healthz` document."""


async def healthz(request: web.Request) -> web.Response:
    """Answer 200 while the process and its event loop respond (liveness)."""
    return _json(dict(HEALTHZ_DOCUMENT))


async def readyz(request: web.Request) -> web.Response:
    """Answer 200 once the configuration is loaded, 503 before that and during shutdown.

    Readiness deliberately does **not** depend on backend health. Every gateway replica sees
    the same ComfyUI servers, so if "no healthy backend" made a replica unready, all replicas
    would go unready at once: the load balancer or Kubernetes Service would then have no
    endpoint, and clients would get connection errors instead of the gateway's clear 503 (and
    would lose the websocket the gateway keeps open while it fails over). A replica that is up
    and configured can always do something useful: answer, queue, fail over, report.

    The body still reports ``healthy_backend`` (at least one enabled server is up), the ids of
    the healthy servers, and the serving and preferred ids, for dashboards and scripts.
    """
    state = request.config_dict.get(READINESS)
    if state is not None and state.shutting_down:
        return _json(readyz_document(ready=False, reason="shutting down"), 503)
    registry = request.config_dict.get(REGISTRY)
    if registry is None:
        return _json(readyz_document(ready=False, reason="configuration not loaded"), 503)
    healthy = [s.id for s in registry.healthy_servers()]
    return _json(
        readyz_document(
            ready=True,
            healthy_backend=bool(healthy),
            healthy=healthy,
            serving=registry.serving_id,
            preferred=registry.preferred_id,
        )
    )


def add_health_routes(app: web.Application, *, prefix: str = "/gateway") -> None:
    """Register ``healthz``/``readyz`` under ``prefix`` and the shutdown hook on ``app``."""
    if READINESS not in app:
        app[READINESS] = Readiness()
    app.router.add_route("GET", f"{prefix}/healthz", healthz, name="gateway-healthz")
    app.router.add_route("GET", f"{prefix}/readyz", readyz, name="gateway-readyz")
    app.on_shutdown.append(mark_shutting_down)
