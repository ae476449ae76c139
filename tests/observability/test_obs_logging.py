"""Structured logging: JSON/console output, stdlib routing, redaction, event lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway.config.models import GatewayConfig
from gateway.observability.logging import (
    attach_event_logging,
    configure_logging,
    log_banner,
    redact_secrets,
    redact_text,
    reset_logging,
)
from gateway.registry import ServerRegistry, ServerState


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    reset_logging()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_auto_format_is_json_when_stdout_is_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "auto")
    structlog.get_logger("gateway.test").info("hello", answer=42)
    (line,) = json_lines(capsys.readouterr().out)
    assert line["event"] == "hello"
    assert line["answer"] == 42
    assert line["level"] == "info"
    assert line["logger"] == "gateway.test"
    assert line["timestamp"].endswith("Z")
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]


def test_auto_format_is_console_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    configure_logging("info", "auto", stream=out)
    structlog.get_logger("gateway.test").info("hello", answer=42)
    text = out.getvalue()
    assert "hello" in text
    assert "answer" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_console_format_is_human_readable(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "console")
    structlog.get_logger("gateway.test").info("hello", token="abc123")
    out = capsys.readouterr().out
    assert "hello" in out
    assert "abc123" not in out
    assert not out.lstrip().startswith("{")


def test_aiohttp_and_other_stdlib_loggers_come_out_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    for name in (
        "aiohttp.access",
        "aiohttp.server",
        "aiohttp.client",
        "aiohttp.web",
        "aiohttp.websocket",
        "some.library",
    ):
        logging.getLogger(name).warning("from %s", name, extra={"detail": 7})
    lines = json_lines(capsys.readouterr().out)
    assert [line["logger"] for line in lines] == [
        "aiohttp.access",
        "aiohttp.server",
        "aiohttp.client",
        "aiohttp.web",
        "aiohttp.websocket",
        "some.library",
    ]
    assert lines[1]["event"] == "from aiohttp.server"
    assert lines[1]["level"] == "warning"
    assert lines[1]["detail"] == 7


def test_exceptions_are_structured_and_carry_no_locals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    password = "hunter2-local-variable"
    try:
        raise RuntimeError("backend http://127.0.0.1:8188/prompt?token=s3cr3t refused")
    except RuntimeError:
        structlog.get_logger("gateway.test").exception("request failed")
        logging.getLogger("aiohttp.server").exception("Error handling request")
    out = capsys.readouterr().out
    assert password not in out
    assert "s3cr3t" not in out
    for line in json_lines(out):
        (exc,) = line["exception"]
        assert exc["exc_type"] == "RuntimeError"
        assert "token=***" in exc["exc_value"]
        assert all("locals" not in frame for frame in exc["frames"])


def test_secrets_are_redacted_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log = structlog.get_logger("gateway.test")
    log.info(
        "connecting to http://gpu:8188/ws?clientId=abc&token=tok-123 as admin",
        config={
            "servers": [
                {
                    "auth": {
                        "bearer_token": "bt-456",
                        "basic": {"username": "u", "password": "pw-789"},
                    }
                }
            ]
        },
        headers={
            "Authorization": "Bearer ab-cdef-0123",
            "Cookie": "session=ck-999",
            "X-Api-Key": "k-321",
            "Accept": "text/html",
        },
        url="http://gpu:8188/view?filename=a.png&token=tok-654",
        dsn="http://user:dsn-pass@db/",
        admin_token="adm-000",
        args=["--password", "plain", "api_key=ak-777"],
        token_required=True,
        secret=None,
    )
    logging.getLogger("aiohttp.client").info("GET %s", "http://gpu/ws?token=tok-888")
    out = capsys.readouterr().out
    for secret in (
        "tok-123",
        "bt-456",
        "pw-789",
        "ab-cdef-0123",
        "ck-999",
        "k-321",
        "tok-654",
        "dsn-pass",
        "adm-000",
        "ak-777",
        "tok-888",
    ):
        assert secret not in out, secret
    first, second = json_lines(out)
    assert first["event"] == "connecting to http://gpu:8188/ws?clientId=abc&token=*** as admin"
    assert first["headers"]["Accept"] == "text/html"
    assert first["headers"]["Authorization"] == "***"
    assert first["config"]["servers"][0]["auth"] == "***"
    assert first["url"] == "http://gpu:8188/view?filename=a.png&token=***"
    assert first["token_required"] is True
    assert first["secret"] is None
    assert second["event"] == "GET http://gpu/ws?token=***"


def test_redact_helpers_leave_ordinary_text_alone() -> None:
    assert redact_text("GET /api/view?filename=x.png&type=output") == (
        "GET /api/view?filename=x.png&type=output"
    )
    assert "abcdef123" not in redact_text("Authorization: Bearer abcdef123")
    assert redact_text("sent Bearer abcdef123") == "sent Bearer ***"
    assert redact_text('{"password": "pw"}') == '{"password": "***"}'
    event = {"event": "x", "status": 200, "count": 3, "items": ["a", {"token": "t"}]}
    assert redact_secrets(None, "info", event)["items"] == ["a", {"token": "***"}]


def test_reconfiguring_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log = structlog.get_logger("gateway.test")
    log.info("first")
    configure_logging("info", "json")
    configure_logging("info", "json")
    log.info("second")
    logging.getLogger("aiohttp.web").info("third")
    assert [line["event"] for line in json_lines(capsys.readouterr().out)] == [
        "first",
        "second",
        "third",
    ]


def test_level_filters_structlog_and_stdlib(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "json")
    structlog.get_logger("gateway.level-test").info("dropped")
    logging.getLogger("aiohttp.server").info("dropped too")
    structlog.get_logger("gateway.level-test-2").warning("kept")
    assert [line["event"] for line in json_lines(capsys.readouterr().out)] == ["kept"]


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")  # type: ignore[arg-type]


def test_context_is_merged_into_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.contextvars.bind_contextvars(request_id="r-1", prompt_id="p-1")
    structlog.get_logger("gateway.test").info("ours")
    logging.getLogger("aiohttp.server").info("theirs")
    for line in json_lines(capsys.readouterr().out):
        assert line["request_id"] == "r-1"
        assert line["prompt_id"] == "p-1"


def test_banner_is_one_structured_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log_banner("======== Running on http://127.0.0.1:8190 ========\n(Press CTRL+C to quit)")
    (line,) = json_lines(capsys.readouterr().out)
    assert line["event"] == "listening"
    assert line["addresses"] == ["http://127.0.0.1:8190"]
    assert line["logger"] == "aiohttp.web"


def test_state_changes_and_admin_changes_are_logged_with_their_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    config = GatewayConfig.model_validate(
        {"servers": [{"id": "gpu-a", "name": "A", "url": "http://127.0.0.1:8188"}]}
    )
    servers = ServerRegistry(config)
    attach_event_logging(servers.events)
    servers.set_state("gpu-a", ServerState.DOWN, reason="3 checks failed: connection refused")
    servers.events.publish("admin.change", action="select", server="gpu-a", actor="127.0.0.1")
    servers.events.publish(
        "server.checked",
        server="gpu-a",
        ok=False,
        latency=None,
        queue_remaining=None,
        error="refused",
    )
    down, admin = json_lines(capsys.readouterr().out)  # server.checked is debug
    assert down["event"] == "server.state"
    assert down["level"] == "warning"
    assert down["server"] == "gpu-a"
    assert down["state"] == "down"
    assert down["reason"] == "3 checks failed: connection refused"
    assert admin["event"] == "admin.change"
    assert admin["action"] == "select"
