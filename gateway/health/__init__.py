"""Backend health: a pure state machine (:mod:`.policy`) and its I/O shell (:mod:`.checker`).

Wiring (see :mod:`gateway.health.checker` for the contracts)::

    checker = HealthChecker(registry, pool)            # settings: registry.config.health
    controller = FailoverController(registry)          # busy: supplied later by the job layer
    observers.add(PassiveHealth(checker))
    app.cleanup_ctx.append(health_cleanup_ctx(checker, controller))
"""

from gateway.health.checker import (
    FailoverController,
    HealthChecker,
    PassiveHealth,
    ProbeResult,
    WsProbe,
    health_cleanup_ctx,
    probe_once,
)
from gateway.health.policy import (
    HealthTracker,
    PassiveSettings,
    PassiveVerdict,
    Restart,
    Transition,
    identity_of,
    next_interval,
)

__all__ = [
    "FailoverController",
    "HealthChecker",
    "HealthTracker",
    "PassiveHealth",
    "PassiveSettings",
    "PassiveVerdict",
    "ProbeResult",
    "Restart",
    "Transition",
    "WsProbe",
    "health_cleanup_ctx",
    "identity_of",
    "next_interval",
    "probe_once",
]
