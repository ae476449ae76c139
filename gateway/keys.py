"""Typed keys for state stored on the application and on requests (no module globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.events import EventBus
    from gateway.proxy.fastlane import FastLane
    from gateway.proxy.http import HttpForwarder
    from gateway.proxy.observer import ObserverChain
    from gateway.proxy.upstream import BackendPool
    from gateway.registry import ServerRegistry

REGISTRY: web.AppKey[ServerRegistry] = web.AppKey("registry")
EVENTS: web.AppKey[EventBus] = web.AppKey("events")
BACKENDS: web.AppKey[BackendPool] = web.AppKey("backends")
OBSERVERS: web.AppKey[ObserverChain] = web.AppKey("observers")
FORWARDER: web.AppKey[HttpForwarder] = web.AppKey("forwarder")
FAST_LANE: web.AppKey[FastLane] = web.AppKey("fast_lane")
"""Plain GETs at the socket level (served by :class:`gateway.serve.GatewayRunner`)."""

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
BACKEND_USED: web.RequestKey[str] = web.RequestKey("backend_used", str)
"""The backend that answered a proxied request (set by the proxy, read by the access log)."""
TRAFFIC_REPORTED: web.RequestKey[bool] = web.RequestKey("traffic_reported", bool)
"""Set once a request's outcome was reported to the traffic observers (never twice)."""
EXTRAS: web.AppKey[dict[str, Any]] = web.AppKey("extras")
