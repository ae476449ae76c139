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
