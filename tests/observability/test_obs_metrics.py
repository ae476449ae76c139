"""Prometheus metrics: exposition, bounded labels, per-server gauges, observer and events."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.models import GatewayConfig
from gateway.events import Event
from gateway.observability.metrics import (
    NO_SERVER,
    PREFIX,
    GatewayMetrics,
    metrics_handler,
)
from gateway.proxy.observer import route_group
from gateway.registry import ServerRegistry, ServerState

ALLOWED_LABELS = {
    "server",
    "from_server",
    "to_server",
    "method",
    "group",
    "code_class",
    "kind",
    "side",
    "direction",
    "state",
    "result",
    "action",
    "name",
    "url",
    "version",
    "python",
    "le",
}
GROUPS = {"prompt", "view", "upload", "ws", "info", "userdata", "static", "internal", "other"}


def two_servers() -> ServerRegistry:
    config = GatewayConfig.model_validate(
        {
            "servers": [
                {"id": "gpu-a", "name": "GPU A", "url": "http://127.0.0.1:8188"},
                {"id": "gpu-b", "name": "GPU B", "url": "http://127.0.0.1:8189"},
            ],
            "active": "gpu-a",
        }
    )
    return ServerRegistry(config)


def scrape(metrics: GatewayMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Return {sample name: [(labels, value)]} parsed from the text exposition."""
    text = generate_latest(metrics.registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(samples: dict, sample_name: str, /, **labels: str) -> float | None:
    for got, v in samples.get(sample_name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


def test_scrape_parses_and_server_up_is_exported_for_every_server() -> None:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    servers.set_state("gpu-a", ServerState.UP, reason="checks passed")
    servers.set_state("gpu-b", ServerState.DOWN, reason="connection refused")

    samples = scrape(metrics)

    assert value(samples, f"{PREFIX}server_up", server="gpu-a") == 1.0
    assert value(samples, f"{PREFIX}server_up", server="gpu-b") == 0.0
    assert value(samples, f"{PREFIX}server_state", server="gpu-b", state="down") == 1.0
    assert value(samples, f"{PREFIX}server_state", server="gpu-b", state="up") == 0.0
    assert value(samples, f"{PREFIX}serving", server="gpu-a") == 1.0
    assert value(samples, f"{PREFIX}serving", server="gpu-b") == 0.0
    assert value(samples, f"{PREFIX}preferred", server="gpu-a") == 1.0
    info = value(samples, f"{PREFIX}server_info", server="gpu-b", name="GPU B")
    assert info == 1.0
    build = samples[f"{PREFIX}build_info"]
    assert build[0][1] == 1.0
    assert set(build[0][0]) == {"version", "python"}
    assert "process_cpu_seconds_total" in samples
    # Counters are zero-initialised per configured server: rate() never sees a gap.
    assert value(samples, f"{PREFIX}prompts_lost_total", server="gpu-b") == 0.0


def test_unknown_server_reads_zero_and_unknown_state() -> None:
    metrics = GatewayMetrics(servers=two_servers())
    samples = scrape(metrics)
    assert value(samples, f"{PREFIX}server_up", server="gpu-b") == 0.0
    assert value(samples, f"{PREFIX}server_state", server="gpu-b", state="unknown") == 1.0
    # Unknown queue and latency are absent rather than a misleading 0.
    assert f"{PREFIX}server_queue_length" not in samples


def test_queue_and_latency_come_from_the_registry_at_scrape_time() -> None:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    status = servers.status("gpu-a")
    status.queue_remaining = 3
    status.latency = 0.042
    samples = scrape(metrics)
    assert value(samples, f"{PREFIX}server_queue_length", server="gpu-a") == 3.0
    assert value(samples, f"{PREFIX}server_latency_seconds", server="gpu-a") == 0.042


def test_removed_servers_disappear_and_new_ones_appear() -> None:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    metrics.attach_events(servers.events)
    metrics.observer.request_finished("gpu-b", "GET", "view", 200, 0.01, 0, 10)
    metrics.observer.upstream_failed("gpu-b", "connect", "refused")
    assert value(scrape(metrics), f"{PREFIX}http_requests_total", server="gpu-b") == 1.0

    new = GatewayConfig.model_validate(
        {
            "servers": [
                {"id": "gpu-a", "name": "GPU A", "url": "http://127.0.0.1:8188"},
                {"id": "gpu-c", "name": "GPU C", "url": "http://127.0.0.1:8190"},
            ],
            "active": "gpu-a",
        }
    )
    servers.apply_config(new, reason="admin removed gpu-b")
    samples = scrape(metrics)

    every_server = {
        labels.get(key)
        for series in samples.values()
        for labels, _ in series
        for key in ("server", "from_server", "to_server")
    }
    assert "gpu-b" not in every_server
    assert value(samples, f"{PREFIX}server_up", server="gpu-c") == 0.0
    assert value(samples, f"{PREFIX}prompts_submitted_total", server="gpu-c") == 0.0
    assert value(samples, f"{PREFIX}config_reloads_total", result="success") == 1.0
    # The observer's cached children were dropped: new traffic is counted again.
    metrics.observer.request_finished("gpu-a", "GET", "view", 200, 0.01, 0, 10)
    assert value(scrape(metrics), f"{PREFIX}http_requests_total", server="gpu-a") == 1.0


def test_label_sets_stay_bounded_whatever_the_traffic() -> None:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    metrics.attach_events(servers.events)
    obs = metrics.observer
    paths = [f"/api/history/{i:032x}" for i in range(50)]
    paths += [f"/view?filename=img_{i}.png" for i in range(50)]
    paths += [f"/some/random/{i}" for i in range(50)] + ["/ws", "/prompt", "/upload/image"]
    methods = ["GET", "POST", "BREW", "get", "PROPFIND"]
    for i, path in enumerate(paths):
        obs.request_finished(
            "gpu-a" if i % 3 else None,
            methods[i % 5],
            route_group(path),
            100 + i * 7 % 500,
            0.001 * i,
            i,
            2 * i,
        )
    for i in range(50):
        obs.upstream_failed("gpu-b", "connect" if i % 2 else "weird-kind", f"detail {i}")  # type: ignore[arg-type]
        obs.ws_relayed("to_client", "gpu-a", False, i)
        servers.events.publish("prompt.submitted", prompt_id=f"{i:032x}", server="gpu-a")
        servers.events.publish("admin.change", action=f"Free Text {i}!", server="gpu-a", actor="x")

    samples = scrape(metrics)
    ours = {n: s for n, s in samples.items() if n.startswith(PREFIX)}
    label_names = {k for series in ours.values() for labels, _ in series for k in labels}
    assert label_names <= ALLOWED_LABELS
    requests = ours[f"{PREFIX}http_requests_total"]
    assert {labels["group"] for labels, _ in requests} <= GROUPS
    assert {labels["method"] for labels, _ in requests} <= {"GET", "POST", "other"}
    assert {labels["code_class"] for labels, _ in requests} <= {
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
    }
    assert {labels["server"] for labels, _ in requests} == {"gpu-a", NO_SERVER}
    assert {labels["kind"] for labels, _ in ours[f"{PREFIX}upstream_errors_total"]} == {
        "connect",
        "other",
    }
    assert {labels["action"] for labels, _ in ours[f"{PREFIX}admin_changes_total"]} == {"other"}
    for series in ours.values():
        for labels, _ in series:
            for key, val in labels.items():
                if key not in ("url", "name"):
                    assert "/" not in val
                    assert len(val) <= 64, (key, val)
    assert len(requests) <= 2 * 3 * len(GROUPS) * 6  # servers x methods x groups x classes


def test_observer_counts_requests_bytes_errors_and_websockets() -> None:
    metrics = GatewayMetrics(servers=two_servers())
    obs = metrics.observer
    obs.request_finished("gpu-a", "POST", "prompt", 200, 0.02, 300, 40)
    obs.request_finished("gpu-a", "POST", "prompt", 200, 0.03, 100, 60)
    obs.request_finished("gpu-a", "GET", "view", 404, 0.001, 0, 10)
    obs.request_finished(None, "GET", "prompt", 503, 0.0005, 0, 80)
    obs.upstream_failed("gpu-b", "timeout", "read timeout")
    obs.upstream_succeeded("gpu-a")
    obs.ws_opened("client", None)
    obs.ws_opened("upstream", "gpu-a")
    obs.ws_opened("client", None)
    obs.ws_closed("client", None)
    obs.ws_relayed("to_client", "gpu-a", False, 120)
    obs.ws_relayed("to_upstream", "gpu-a", True, 7)

    s = scrape(metrics)
    p = PREFIX
    assert (
        value(
            s,
            f"{p}http_requests_total",
            server="gpu-a",
            method="POST",
            group="prompt",
            code_class="2xx",
        )
        == 2.0
    )
    assert value(s, f"{p}http_requests_total", server="gpu-a", code_class="4xx") == 1.0
    assert value(s, f"{p}http_requests_total", server=NO_SERVER, code_class="5xx") == 1.0
    assert (
        value(s, f"{p}http_request_duration_seconds_count", server="gpu-a", group="prompt") == 2.0
    )
    assert value(
        s, f"{p}http_request_duration_seconds_sum", server="gpu-a", group="prompt"
    ) == pytest.approx(0.05)
    assert value(s, f"{p}http_request_bytes_total", server="gpu-a") == 400.0
    assert value(s, f"{p}http_response_bytes_total", server="gpu-a") == 110.0
    assert value(s, f"{p}upstream_errors_total", server="gpu-b", kind="timeout") == 1.0
    assert value(s, f"{p}websocket_connections", side="client") == 1.0
    assert value(s, f"{p}websocket_connections", side="upstream") == 1.0
    assert value(s, f"{p}websocket_messages_total", direction="to_client") == 1.0
    assert value(s, f"{p}websocket_message_bytes_total", direction="to_upstream") == 7.0


def test_events_map_to_counters() -> None:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    metrics.attach_events(servers.events)
    bus = servers.events
    servers.set_state("gpu-a", ServerState.UP, reason="rise reached")
    servers.set_state("gpu-a", ServerState.DOWN, reason="fall reached")
    bus.publish(
        "server.checked", server="gpu-a", ok=True, latency=0.02, queue_remaining=0, error=None
    )
    bus.publish(
        "server.checked",
        server="gpu-a",
        ok=False,
        latency=None,
        queue_remaining=None,
        error="refused",
    )
    bus.publish("server.restarted", server="gpu-b")
    for kind in ("submitted", "submitted", "completed", "resubmitted", "lost"):
        bus.publish(f"prompt.{kind}", prompt_id="3f2a", server="gpu-b")
    bus.publish("uploads.cache", bytes=1234, entries=2)
    bus.publish("upload.replicated", server="gpu-a", bytes=1000)
    bus.publish("prompt.copy_cancelled", prompt_id="3f2a", server="gpu-a")
    bus.publish("admin.change", action="select", server="gpu-b", actor="127.0.0.1")
    bus.publish("config.failed", reason="reload", error="servers[0].url: bad")
    bus.publish("something.new", whatever=1)

    s = scrape(metrics)
    p = PREFIX
    assert value(s, f"{p}server_state_changes_total", server="gpu-a", state="down") == 1.0
    assert value(s, f"{p}server_state_changes_total", server="gpu-a", state="up") == 1.0
    assert value(s, f"{p}health_check_duration_seconds_count", server="gpu-a") == 1.0
    assert value(s, f"{p}health_check_failures_total", server="gpu-a") == 1.0
    assert value(s, f"{p}server_restarts_total", server="gpu-b") == 1.0
    assert value(s, f"{p}prompts_submitted_total", server="gpu-b") == 2.0
    assert value(s, f"{p}prompts_completed_total", server="gpu-b") == 1.0
    assert value(s, f"{p}prompts_resubmitted_total", server="gpu-b") == 1.0
    assert value(s, f"{p}prompts_lost_total", server="gpu-b") == 1.0
    assert value(s, f"{p}upload_cache_bytes") == 1234.0
    assert value(s, f"{p}upload_cache_entries") == 2.0
    assert value(s, f"{p}admin_changes_total", action="select") == 1.0
    assert value(s, f"{p}config_reloads_total", result="failure") == 1.0
    assert value(s, f"{p}upload_replications_total", server="gpu-a") == 1.0
    assert value(s, f"{p}upload_replicated_bytes_total", server="gpu-a") == 1000.0
    assert value(s, f"{p}prompt_copies_cancelled_total", server="gpu-a") == 1.0


def test_health_checks_can_be_reported_directly_instead_of_from_events() -> None:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    metrics.attach_events(servers.events, health_checks=False)
    servers.events.publish(
        "server.checked",
        server="gpu-a",
        ok=False,
        latency=0.5,
        queue_remaining=None,
        error="refused",
    )
    metrics.observe_health_check("gpu-a", True, 0.01)
    metrics.observe_health_check("gpu-a", False, None)
    s = scrape(metrics)
    assert value(s, f"{PREFIX}health_check_duration_seconds_count", server="gpu-a") == 1.0
    assert value(s, f"{PREFIX}health_check_failures_total", server="gpu-a") == 1.0


def test_failovers_are_counted_with_the_kind_label() -> None:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    metrics.attach_events(servers.events)
    for previous, serving, kind in [
        ("gpu-a", "gpu-b", "failover"),
        ("gpu-b", "gpu-a", "failback"),
        ("gpu-a", "gpu-b", "failover"),
        ("gpu-b", None, "failover"),
        (None, "gpu-a", "recover"),
        ("gpu-a", "gpu-b", "a free-text reason that must not become a label"),
    ]:
        metrics.handle_event(
            Event(
                "serving.changed",
                {
                    "previous": previous,
                    "serving": serving,
                    "preferred": "gpu-a",
                    "kind": kind,
                    "reason": "x",
                },
            )
        )
    s = scrape(metrics)
    name = f"{PREFIX}failovers_total"
    assert value(s, name, from_server="gpu-a", to_server="gpu-b", kind="failover") == 2.0
    assert value(s, name, from_server="gpu-b", to_server="gpu-a", kind="failback") == 1.0
    assert value(s, name, from_server="gpu-b", to_server=NO_SERVER, kind="failover") == 1.0
    assert value(s, name, from_server=NO_SERVER, to_server="gpu-a", kind="recover") == 1.0
    assert value(s, name, from_server="gpu-a", to_server="gpu-b", kind="other") == 1.0
    assert {labels["kind"] for labels, _ in s[name]} <= {
        "failover",
        "failback",
        "switch",
        "recover",
        "other",
    }


def test_failover_through_the_registry_is_counted() -> None:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    metrics.attach_events(servers.events)
    servers.set_serving("gpu-b", reason="gpu-a down", kind="failover")
    servers.set_serving("gpu-a", reason="gpu-a healthy for 30 s", kind="failback")
    s = scrape(metrics)
    assert (
        value(
            s, f"{PREFIX}failovers_total", from_server="gpu-a", to_server="gpu-b", kind="failover"
        )
        == 1.0
    )
    assert (
        value(
            s, f"{PREFIX}failovers_total", from_server="gpu-b", to_server="gpu-a", kind="failback"
        )
        == 1.0
    )
    assert value(s, f"{PREFIX}serving", server="gpu-a") == 1.0


def test_two_apps_have_independent_registries() -> None:
    first = GatewayMetrics(servers=two_servers())
    second = GatewayMetrics(servers=two_servers())
    first.observer.request_finished("gpu-a", "GET", "view", 200, 0.01, 0, 1)
    assert value(scrape(first), f"{PREFIX}http_requests_total", server="gpu-a") == 1.0
    assert value(scrape(second), f"{PREFIX}http_requests_total", server="gpu-a") is None


def test_observer_is_cheap() -> None:
    metrics = GatewayMetrics(servers=two_servers())
    obs = metrics.observer
    n = 20_000
    start = time.process_time()
    for i in range(n):
        obs.request_finished("gpu-a", "GET", "view", 200, 0.001, i & 7, 100)
    per_call = (time.process_time() - start) / n
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per request_finished"


async def test_metrics_endpoint_serves_the_text_format(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(metrics))
    client = await aiohttp_client(app)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert f"{PREFIX}server_up" in names
    # OpenMetrics is negotiated too.
    resp = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


def _populated_metrics() -> GatewayMetrics:
    servers = two_servers()
    metrics = GatewayMetrics(servers=servers)
    metrics.attach_events(servers.events)
    servers.set_state("gpu-a", ServerState.UP, reason="ok")
    servers.status("gpu-a").queue_remaining = 2
    servers.status("gpu-a").latency = 0.01
    obs = metrics.observer
    obs.request_finished("gpu-a", "POST", "prompt", 200, 0.02, 300, 40)
    obs.upstream_failed("gpu-b", "connect", "refused")
    obs.ws_opened("client", None)
    obs.ws_relayed("to_client", "gpu-a", False, 10)
    servers.events.publish(
        "server.checked", server="gpu-a", ok=True, latency=0.01, queue_remaining=2, error=None
    )
    change = {"previous": "gpu-a", "serving": "gpu-b", "kind": "failover", "reason": "down"}
    metrics.handle_event(Event("serving.changed", change))
    servers.events.publish("admin.change", action="select", server="gpu-b", actor="x")
    return metrics


def test_promtool_check_metrics_passes() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); CI installs it")
    text = generate_latest(_populated_metrics().registry)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
