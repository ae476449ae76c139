"""A real Prometheus server scrapes the gateway's /metrics and answers PromQL queries."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.models import GatewayConfig
from gateway.observability.metrics import GatewayMetrics, metrics_handler
from gateway.registry import ServerRegistry, ServerState

pytestmark = pytest.mark.slow

DEADLINE = 30.0

EXPECTED_SERIES = {
    "comfyui_gateway_server_up",
    "comfyui_gateway_server_state",
    "comfyui_gateway_server_info",
    "comfyui_gateway_serving",
    "comfyui_gateway_preferred",
    "comfyui_gateway_server_queue_length",
    "comfyui_gateway_server_latency_seconds",
    "comfyui_gateway_health_check_duration_seconds_bucket",
    "comfyui_gateway_health_check_failures_total",
    "comfyui_gateway_server_state_changes_total",
    "comfyui_gateway_failovers_total",
    "comfyui_gateway_http_requests_total",
    "comfyui_gateway_http_request_duration_seconds_bucket",
    "comfyui_gateway_http_request_bytes_total",
    "comfyui_gateway_http_response_bytes_total",
    "comfyui_gateway_upstream_errors_total",
    "comfyui_gateway_websocket_connections",
    "comfyui_gateway_websocket_messages_total",
    "comfyui_gateway_prompts_submitted_total",
    "comfyui_gateway_prompts_completed_total",
    "comfyui_gateway_prompts_resubmitted_total",
    "comfyui_gateway_prompts_lost_total",
    "comfyui_gateway_upload_cache_bytes",
    "comfyui_gateway_config_reloads_total",
    "comfyui_gateway_admin_changes_total",
    "comfyui_gateway_build_info",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_metrics() -> GatewayMetrics:
    config = GatewayConfig.model_validate(
        {
            "servers": [
                {"id": "gpu-a", "name": "GPU A", "url": "http://127.0.0.1:8188"},
                {"id": "gpu-b", "name": "GPU B", "url": "http://127.0.0.1:8189"},
            ],
            "active": "gpu-a",
        }
    )
    servers = ServerRegistry(config)
    metrics = GatewayMetrics(servers=servers)
    metrics.attach_events(servers.events)
    servers.set_state("gpu-a", ServerState.UP, reason="checks passed")
    servers.status("gpu-a").queue_remaining = 1
    servers.status("gpu-a").latency = 0.012
    bus = servers.events
    bus.publish(
        "server.checked", server="gpu-a", ok=True, latency=0.012, queue_remaining=1, error=None
    )
    servers.set_serving("gpu-b", reason="admin selected gpu-b", kind="switch")
    servers.set_serving("gpu-a", reason="gpu-b down", kind="failover")
    bus.publish("prompt.submitted", prompt_id="p1", server="gpu-a")
    bus.publish("uploads.cache", bytes=2048, entries=1)
    bus.publish("admin.change", action="select", server="gpu-a", actor="127.0.0.1")
    obs = metrics.observer
    obs.request_finished("gpu-a", "POST", "prompt", 200, 0.02, 300, 40)
    obs.upstream_failed("gpu-b", "connect", "refused")
    obs.ws_opened("client", None)
    obs.ws_relayed("to_client", "gpu-a", False, 10)
    return metrics


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict[str, Any]]:
    async with session.get(f"{base}/api/v1/query", params={"query": promql}) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


async def wait_for(
    session: aiohttp.ClientSession,
    base: str,
    promql: str,
    count: int,
    proc: asyncio.subprocess.Process,
) -> list[dict[str, Any]]:
    """Poll the query API until ``promql`` returns ``count`` series (bounded wait)."""
    deadline = time.monotonic() + DEADLINE
    last: Any = None
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            pytest.fail(f"prometheus exited with {proc.returncode} (see prometheus.log)")
        try:
            result = await query(session, base, promql)
        except aiohttp.ClientError as exc:  # not listening yet
            last = exc
        else:
            if len(result) >= count:
                return result
            last = result
        await asyncio.sleep(0.2)
    pytest.fail(f"{promql!r} did not return {count} series in {DEADLINE:.0f} s (last: {last!r})")


async def test_real_prometheus_scrapes_the_metrics(aiohttp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'); CI installs it")
    metrics = gateway_metrics()
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(metrics))
    server = await aiohttp_server(app, host="127.0.0.1")

    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 200ms\n"
        "  scrape_timeout: 200ms\n"
        "scrape_configs:\n"
        "  - job_name: gateway\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            up = await wait_for(session, base, "comfyui_gateway_server_up", 2, proc)
            values = {r["metric"]["server"]: r["value"][1] for r in up}
            assert values == {"gpu-a": "1", "gpu-b": "0"}
            assert {r["metric"]["job"] for r in up} == {"gateway"}

            serving = await query(session, base, "comfyui_gateway_serving == 1")
            assert [r["metric"]["server"] for r in serving] == ["gpu-a"]

            failovers = await query(
                session, base, 'comfyui_gateway_failovers_total{kind="failover"}'
            )
            assert failovers[0]["metric"]["from_server"] == "gpu-b"
            assert failovers[0]["value"][1] == "1"

            names = await query(
                session, base, 'count by (__name__) ({__name__=~"comfyui_gateway_.+"})'
            )
            present = {r["metric"]["__name__"] for r in names}
            assert present >= EXPECTED_SERIES, sorted(EXPECTED_SERIES - present)
    finally:
        if proc.returncode is None:
            proc.terminate()  # by its own PID only
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), timeout=10)
        log.close()
