"""Connection tests of saved and unsaved servers ("Test connection" in the old screen).

The admin API depends only on the small :class:`ServerTester` protocol. The default
:class:`ProbeTester` delegates to the health checker's one-shot probe,
``gateway.health.checker.probe_once(server, backend)``, which checks reachability, latency, HTTP
status, ComfyUI version, devices and the websocket handshake, and works for a server that is
not saved. It is imported lazily, so the admin API loads even in a build without the health
package (a test then answers 503).

A test never changes the server's live status: that stays the health checker's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import structlog

from gateway.config.models import HealthSettings, ServerConfig

_log = structlog.get_logger("gateway.admin")


@runtime_checkable
class ServerTester(Protocol):
    """Something that tests one server now."""

    async def test(self, server: ServerConfig) -> Mapping[str, Any]:
        """Probe ``server`` once; return ``reachable``, ``latency``, ``http_status``, ...

        Must not raise for an unreachable server: report ``reachable: false`` and ``error``.
        """
        ...


def result_dict(result: Any) -> dict[str, Any]:
    """Return a probe result (mapping, dataclass or pydantic model) as a plain dict."""
    if isinstance(result, Mapping):
        return dict(result)
    if hasattr(result, "as_dict"):
        return dict(result.as_dict())
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if hasattr(result, "model_dump"):
        return dict(result.model_dump(mode="json"))
    raise TypeError(f"unsupported probe result {type(result).__name__}")


class ProbeTester:
    """The default tester: ``probe_once`` over a fresh connection, websocket handshake included.

    ``settings`` returns the health settings in force (probe path, timeout, queue read).
    """

    def __init__(self, settings: Callable[[], HealthSettings] | None = None) -> None:
        self._settings = settings or HealthSettings

    async def test(self, server: ServerConfig) -> Mapping[str, Any]:
        """Probe ``server`` once through the health checker."""
        try:
            from gateway.health.checker import probe_once
        except ImportError:
            from gateway.admin.problems import Unavailable

            raise Unavailable(
                "server tests need gateway.health.checker.probe_once, missing from this build"
            ) from None
        result = await probe_once(server, None, settings=self._settings(), websocket=True)
        return result_dict(result)


async def run_test(
    tester: ServerTester, server: ServerConfig, *, saved: bool, limit: float
) -> dict[str, Any]:
    """Test one server, never raising for a failed test; at most ``limit`` seconds."""
    from gateway.admin.problems import Unavailable  # loaded with the handlers that call this

    try:
        async with asyncio.timeout(limit):
            data = result_dict(await tester.test(server))
    except TimeoutError:
        data = {"reachable": False, "error": f"no answer within {limit:g} s"}
    except Unavailable:
        raise
    except Exception as exc:  # a broken tester must not turn into a 500 for the whole batch
        _log.warning("server test failed", server=server.id, error_type=type(exc).__name__)
        data = {"reachable": False, "error": f"test failed: {type(exc).__name__}"}
    data["server"] = server.id
    data["saved"] = saved
    data.setdefault("reachable", False)
    data.setdefault("ok", False)
    return data
