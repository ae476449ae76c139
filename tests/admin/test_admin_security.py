"""Token enforcement, cross-origin and CSRF refusal, and the error envelope's last resorts."""

from __future__ import annotations

from typing import Any

import pytest
from admin_harness import TOKEN, Harness, MakeHarness

from gateway.config import store as store_module

WRITES: list[tuple[str, str, Any]] = [
    ("POST", "/servers", {"id": "n", "url": "http://127.0.0.1:1"}),
    ("PATCH", "/servers/local", {"priority": 5}),
    ("DELETE", "/servers/remote", None),
    ("POST", "/servers/remote/activate", None),
    ("POST", "/servers/local/test", None),
    ("POST", "/servers/test", None),
    ("PATCH", "/settings", {"failover": {"auto_switch": False}}),
    ("PUT", "/config", {"servers": []}),
]
READS = ["/servers", "/servers/local", "/settings", "/config"]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
@pytest.mark.parametrize(
    ("presented", "expected"),
    [(None, 401), ("wrong-token", 401), (TOKEN, "ok")],
)
async def test_writes_need_the_token(
    make_harness: MakeHarness,
    method: str,
    path: str,
    body: Any,
    presented: str | None,
    expected: int | str,
) -> None:
    gw = await make_harness()
    before = await gw.file_bytes()
    status, answer, headers = await gw.call(method, path, body, token=presented)
    if expected == "ok":
        assert status < 300, answer
        return
    assert status == expected, answer
    assert headers["WWW-Authenticate"].startswith('Bearer realm="comfyui-gateway admin"')
    if presented:
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert await gw.file_bytes() == before


async def test_token_in_x_gateway_token_header(gw: Harness) -> None:
    resp = await gw.client.patch(
        "/gateway/api/servers/local",
        json={"priority": 5},
        headers={"X-Gateway-Token": TOKEN},
    )
    assert resp.status == 200
    resp = await gw.client.patch(
        "/gateway/api/servers/local",
        json={"priority": 6},
        headers={"X-Gateway-Token": TOKEN + "x"},
    )
    assert resp.status == 401


@pytest.mark.parametrize("path", READS)
async def test_reads_public_unless_protected(make_harness: MakeHarness, path: str) -> None:
    gw = await make_harness()
    status, _, _ = await gw.call("GET", path, token=None)
    assert status == 200
    status, _, _ = await gw.call("GET", path, token="wrong")
    assert status == 401  # a wrong token fails loudly even where none is needed
    gw.settings["protect_reads"] = True
    status, _body, headers = await gw.call("GET", path, token=None)
    assert status == 401
    assert "WWW-Authenticate" in headers
    status, _, _ = await gw.call("GET", path)
    assert status == 200


async def test_openapi_is_always_public(make_harness: MakeHarness) -> None:
    gw = await make_harness(protect_reads=True)
    status, body, _ = await gw.call("GET", "/openapi.json", token=None)
    assert status == 200
    assert body["openapi"].startswith("3.1")
    status, _, _ = await gw.call("GET", "/servers", token=None)
    assert status == 401


async def test_no_token_configured_writes_open_secrets_closed(make_harness: MakeHarness) -> None:
    gw = await make_harness(token=None)
    status, _, _ = await gw.call("PATCH", "/servers/local", {"priority": 3}, token=None)
    assert status == 200
    status, _, _ = await gw.call("GET", "/config", params={"include_secrets": "true"})
    assert status == 403


async def test_token_change_applies_at_once(gw: Harness) -> None:
    gw.settings["token"] = "rotated-token"
    status, _, _ = await gw.call("PATCH", "/servers/local", {"priority": 3})
    assert status == 401
    status, _, _ = await gw.call("PATCH", "/servers/local", {"priority": 3}, token="rotated-token")
    assert status == 200


async def test_cross_origin_requests_refused(gw: Harness) -> None:
    host = f"127.0.0.1:{gw.client.port}"
    status, body, _ = await gw.call(
        "POST",
        "/servers",
        {"id": "evil", "url": "http://127.0.0.1:1"},
        headers={"Origin": "https://evil.example"},
    )
    assert status == 403
    assert body["type"].endswith("forbidden")
    status, _, _ = await gw.call("GET", "/servers", headers={"Origin": "https://evil.example"})
    assert status == 403
    status, _, _ = await gw.call(
        "GET", "/servers", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
    )
    assert status == 403
    status, _, _ = await gw.call(
        "POST",
        "/servers",
        {"id": "ok", "url": "http://127.0.0.1:1"},
        headers={"Origin": f"http://{host}"},
    )
    assert status == 201
    assert (await gw.file_config()).server("evil") is None


@pytest.mark.parametrize(
    "ctype", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"]
)
async def test_form_content_types_refused_even_without_body(gw: Harness, ctype: str) -> None:
    status, body, _ = await gw.call("POST", "/servers/remote/activate", raw=b"", content_type=ctype)
    assert status == 415, body
    assert gw.registry.preferred_id == "local"


async def test_save_failure_is_reported_and_changes_nothing(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await gw.file_bytes()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "atomic_write_bytes", refuse)
    status, body, _ = await gw.call("POST", "/servers", {"id": "n", "url": "http://127.0.0.1:1"})
    assert status == 500, body
    assert body["type"].endswith("config-not-saved")
    assert "nothing changed" in body["detail"]
    assert gw.registry.server("n") is None
    assert gw.store.config.server("n") is None
    assert await gw.file_bytes() == before


async def test_unexpected_exception_is_a_500_problem_without_traceback(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal detail /secret/path")

    monkeypatch.setattr(gw.store, "update", explode)
    status, body, headers = await gw.call("PATCH", "/servers/local", {"priority": 5})
    assert status == 500
    assert headers["Content-Type"].startswith("application/problem+json")
    assert "secret/path" not in str(body)
    assert "Traceback" not in str(body)
    assert body["type"].endswith("internal-error")
