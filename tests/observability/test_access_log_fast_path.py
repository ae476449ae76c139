"""The access log's one-pass rendering writes what the configured processor chain writes."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest
import structlog

from gateway.observability import access_log
from gateway.observability import logging as obs_logging
from gateway.observability.logging import configure_logging, reset_logging

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    reset_logging()


def fields() -> dict[str, object]:
    return {
        "event": "request",
        "method": "GET",
        "path": "/api/view/token=abc",
        "status": 200,
        "duration_s": 0.0012,
        "bytes_sent": 123,
        "request_id": "r-1",
        "remote": "127.0.0.1",
        "server": "gpu-a",
    }


def render_both(fmt: str) -> tuple[str, str]:
    out = io.StringIO()
    configure_logging("info", fmt, stream=out)  # type: ignore[arg-type]
    structlog.contextvars.bind_contextvars(
        request_id="ctx-id", prompt_id="p-1", api_key="k", method="POST"
    )
    assert access_log._is_standard(obs_logging._direct.processors)  # type: ignore[union-attr]
    access_log.write_access_line(fields())
    access_log.flush()
    fast = out.getvalue()
    out.seek(0)
    out.truncate()
    obs_logging.log_direct(obs_logging.ACCESS_LOGGER_NAME, "info", fields())
    return fast, out.getvalue()


def test_json_line_matches_the_processor_chain() -> None:
    fast, chain = render_both("json")
    a, b = json.loads(fast), json.loads(chain)
    assert ISO_Z.match(a.pop("timestamp"))
    b.pop("timestamp")
    assert list(a) == list(b)  # same keys in the same order
    assert a == b
    assert a["request_id"] == "r-1"  # the line's own values win over the context
    assert a["method"] == "GET"
    assert a["prompt_id"] == "p-1"  # context merged
    assert a["api_key"] == "***"  # redacted
    assert a["path"] == "/api/view/token=***"


def test_console_line_matches_the_processor_chain() -> None:
    fast, chain = render_both("console")
    strip = re.compile(r"^\S+Z\s+")  # the timestamp differs by microseconds
    assert strip.sub("", fast) == strip.sub("", chain)


def test_timestamp_has_structlogs_shape() -> None:
    stamp = access_log._utc_timestamp()
    assert ISO_Z.match(stamp)


@pytest.mark.parametrize(
    "values",
    [
        ("GET", "/system_stats", 200, 0.000123456, 922, "a" * 32, "127.0.0.1", "gpu-a"),
        ("GET", '/a"b\\c/token=secret\u00e9', 504, 0.00001, 0, "r-1", None, None),
        ("GET", "/", 200, 12.5, 10**12, "x", "::1", "b"),
    ],
)
@pytest.mark.parametrize("bound", [False, True])
def test_request_line_template_matches_the_chain(values: tuple, bound: bool) -> None:
    """The fast lane's template (write_request_line) writes what write_access_line writes."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)  # type: ignore[arg-type]
    structlog.contextvars.clear_contextvars()
    if bound:  # a bound log context: merged, so the template steps aside
        structlog.contextvars.bind_contextvars(prompt_id="p-9")
    method, path, status, duration, sent, rid, remote, server = values
    access_log.write_request_line(
        access_log.RequestLine(method, path, status, round(duration, 6), sent, rid, remote, server)
    )
    access_log.flush()
    fast = json.loads(out.getvalue())
    out.seek(0)
    out.truncate()
    fields = {
        "event": "request",
        "method": method,
        "path": path,
        "status": status,
        "duration_s": round(duration, 6),
        "bytes_sent": sent,
        "request_id": rid,
        "remote": remote,
    }
    if server is not None:
        fields["server"] = server
    access_log.write_access_line(fields)
    access_log.flush()
    chain = json.loads(out.getvalue())
    structlog.contextvars.clear_contextvars()
    assert ISO_Z.match(fast.pop("timestamp"))
    chain.pop("timestamp")
    assert list(fast) == list(chain)
    assert fast == chain
    assert "secret" not in json.dumps(fast)


def test_request_line_with_the_console_renderer_goes_through_the_chain() -> None:
    out = io.StringIO()
    configure_logging("info", "console", stream=out)  # type: ignore[arg-type]
    access_log.write_request_line(
        access_log.RequestLine("GET", "/x", 200, 0.01, 5, "r-2", "127.0.0.1", "b")
    )
    access_log.flush()
    line = out.getvalue()
    assert "request" in line
    assert "r-2" in line
    assert not line.startswith("{")  # the console renderer's line, not the JSON template's
