"""Observability: Prometheus metrics, structured logs, request ids and the access log.

App wiring (``gateway/app.py`` and ``gateway/cli.py``)::

    configure_logging(args.log_level, args.log_format)         # once, first thing in main()
    metrics = GatewayMetrics(servers=registry)                 # one per app
    metrics.attach_events(registry.events)
    attach_event_logging(registry.events)
    observers.add(metrics.observer)
    install_request_context(app)                               # makes it the first middleware
    app.router.add_get("/metrics", metrics_handler(metrics))   # before the catch-all route
    web.run_app(app, access_log_class=AccessLogger, print=log_banner)   # not access_log=None

and the proxy sets ``request[BACKEND_USED] = backend.id`` once a backend answers.
"""

from gateway.observability.access_log import BACKEND_USED, AccessLogger
from gateway.observability.logging import (
    attach_event_logging,
    bind_log_context,
    configure_logging,
    log_banner,
    redact_secrets,
    reset_logging,
)
from gateway.observability.metrics import GatewayMetrics, MetricsObserver, metrics_handler
from gateway.observability.middleware import (
    REQUEST_ID_HEADER,
    install_request_context,
    request_context_middleware,
)

__all__ = [
    "BACKEND_USED",
    "REQUEST_ID_HEADER",
    "AccessLogger",
    "GatewayMetrics",
    "MetricsObserver",
    "attach_event_logging",
    "bind_log_context",
    "configure_logging",
    "install_request_context",
    "log_banner",
    "metrics_handler",
    "redact_secrets",
    "request_context_middleware",
    "reset_logging",
]
