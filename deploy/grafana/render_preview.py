"""Render a faithful preview of the Grafana dashboard from real data (docs/grafana-dashboard.png).

Grafana cannot be installed from the registries this project builds with, so this script draws
the dashboard itself, honestly labelled as a preview:

1. it starts two simulated ComfyUI backends (``python -m gateway.testing``, real processes), a
   gateway in front of them (in this process) and a real Prometheus (Debian package
   ``prometheus``) scraping the gateway every second;
2. it plays a scenario: websocket clients, prompts and polling traffic; the serving backend is
   killed (failover, lost requests, 5xx), restarted (recovery, failback after the hold time);
3. it reads ``deploy/grafana/dashboards/comfyui-gateway.json`` and evaluates every panel's PromQL
   against that Prometheus (``$job``/``$instance`` = all, ``$__rate_interval`` = 5 s), stat panels
   as instant queries, the others as range queries;
4. it draws the panels in the dashboard's grid layout (SVG) with Grafana's dark-theme colours,
   value mappings, thresholds, units and legends, and turns the SVG into a PNG with headless
   Chromium.

Usage (from the repository root)::

    python deploy/grafana/render_preview.py [--out docs/grafana-dashboard.png] [--scale 1.0]

Needs ``prometheus`` and ``chromium`` on the PATH; takes about three minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.alerts import ALERTS, setup_alerts
from gateway.app import METRICS, create_app
from gateway.config.models import GatewayConfig
from gateway.keys import REGISTRY
from gateway.tasks import spawn
from gateway.testing import example_prompt
from gateway.testing.processes import BackendProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "comfyui-gateway.json"
RATE_INTERVAL = "5s"
STEP = 1.0

# Grafana's dark theme and classic palette.
BG = "#111217"
PANEL_BG = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
GRID = "#2c3235"
NAMED = {
    "green": "#73bf69",
    "red": "#f2495c",
    "orange": "#ff9830",
    "yellow": "#fade2a",
    "blue": "#5794f2",
    "purple": "#b877d9",
    "text": TEXT,
    "transparent": "#22252b",
}
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0"]
CELL_H = 30
MARGIN = 8
FONT = "Inter, 'Helvetica Neue', Helvetica, Arial, 'DejaVu Sans', sans-serif"


# -- the scenario -----------------------------------------------------------------------------


@dataclass
class Timeline:
    """Scenario marks (Unix time), for the caption."""

    start: float = 0.0
    end: float = 0.0
    marks: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, text: str) -> None:
        self.marks.append((time.time(), text))
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Run:
    """A finished scenario: Prometheus (still running, to be queried) and the marks."""

    prom_url: str
    timeline: Timeline
    prom: asyncio.subprocess.Process
    log: Any


async def run_scenario(workdir: Path, prometheus: str) -> Run:
    """Run backends, gateway, Prometheus and the traffic; Prometheus keeps running after."""
    timeline = Timeline()
    a = await BackendProcess("comfy-a", job_duration=1.5, steps=6).start()
    b = await BackendProcess("comfy-b", job_duration=1.5, steps=6).start()
    config = GatewayConfig.model_validate(
        {
            "servers": [
                {"id": "comfy-a", "name": "ComfyUI A", "url": a.url, "priority": 100},
                {"id": "comfy-b", "name": "ComfyUI B", "url": b.url, "priority": 200},
            ],
            "active": "comfy-a",
            "health": {"interval": 1.0, "fast_interval": 0.5, "down_interval": 1.0, "fall": 2},
            "failover": {"failback_hold": 15.0},
        }
    )
    app = create_app(config)
    if ALERTS not in app:
        setup_alerts(app, app[REGISTRY], app[METRICS].registry)
    runner = web.AppRunner(app, shutdown_timeout=2.0, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    gateway = f"http://127.0.0.1:{port}"

    prom_port = free_port()
    (workdir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: comfyui-gateway\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    log = (workdir / "prometheus.log").open("wb")
    prom = await asyncio.create_subprocess_exec(
        prometheus,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--log.level=warn",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    prom_url = f"http://127.0.0.1:{prom_port}"
    stop = asyncio.Event()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.sleep(3)  # first scrapes, health checks settle
        timeline.start = time.time()
        timeline.mark("traffic starts on comfy-a")
        clients = [str(uuid.uuid4()) for _ in range(3)]
        tasks = [
            spawn(websocket_client(session, gateway, c, stop), name=f"preview-ws-{i}")
            for i, c in enumerate(clients)
        ]
        tasks.append(spawn(submitter(session, gateway, clients, stop), name="preview-prompts"))
        tasks.append(spawn(poller(session, gateway, stop), name="preview-poller"))
        await asyncio.sleep(45)
        timeline.mark("comfy-a killed (SIGKILL)")
        await a.kill()
        await asyncio.sleep(40)
        timeline.mark("comfy-a restarted")
        await a.start()
        await asyncio.sleep(55)
        timeline.mark("end")
        stop.set()
        await asyncio.sleep(3)  # last scrapes
        timeline.end = time.time()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        await runner.cleanup()
        await a.stop()
        await b.stop()
    return Run(prom_url, timeline, prom, log)


async def websocket_client(
    session: aiohttp.ClientSession, base: str, client_id: str, stop: asyncio.Event
) -> None:
    """Keep a ComfyUI websocket open (re-opening it if it ever closes)."""
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.ws_connect(f"{base}/ws?clientId={client_id}") as ws:
                async for _ in ws:
                    if stop.is_set():
                        break
        await asyncio.sleep(0.5)


async def submitter(
    session: aiohttp.ClientSession, base: str, clients: list[str], stop: asyncio.Event
) -> None:
    """Submit a prompt every 4 s, round robin over the websocket clients."""
    n = 0
    while not stop.is_set():
        body = {"prompt": example_prompt(f"preview {n}"), "client_id": clients[n % len(clients)]}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.post(f"{base}/prompt", json=body) as resp:
                await resp.read()
        n += 1
        await asyncio.sleep(4)


async def poller(session: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> None:
    """Poll like a UI does: about 8 requests per second over a few routes."""
    paths = ["/queue", "/history?max_items=4", "/system_stats", "/object_info", "/prompt"]
    n = 0
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(base + paths[n % len(paths)]) as resp:
                await resp.read()
        n += 1
        await asyncio.sleep(0.125)


# -- querying ---------------------------------------------------------------------------------


def substitute(expr: str) -> str:
    """Replace the dashboard's variables the way Grafana would with 'All' selected."""
    return (
        expr.replace('"$job"', '".*"')
        .replace('"$instance"', '".*"')
        .replace("$__rate_interval", RATE_INTERVAL)
    )


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Apply a Grafana legend format (``{{label}}``)."""
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


@dataclass
class Series:
    """One series of a panel."""

    name: str
    ref: str
    points: list[tuple[float, float]]

    @property
    def last(self) -> float:
        values = [v for _, v in self.points if not math.isnan(v)]
        return values[-1] if values else math.nan


async def query_panel(
    session: aiohttp.ClientSession, prom: str, panel: dict[str, Any], start: float, end: float
) -> list[Series]:
    """Evaluate every target of ``panel``: instant at ``end`` for stats, else a range."""
    out: list[Series] = []
    for target in panel.get("targets", []):
        expr = substitute(target["expr"])
        if panel["type"] == "stat":
            params = {"query": expr, "time": f"{end:.3f}"}
            url = f"{prom}/api/v1/query"
        else:
            params = {
                "query": expr,
                "start": f"{start:.3f}",
                "end": f"{end:.3f}",
                "step": str(STEP),
            }
            url = f"{prom}/api/v1/query_range"
        async with session.get(url, params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{panel['title']}: {expr}: {body}")
        for result in body["data"]["result"]:
            labels = result["metric"]
            raw = result.get("values") or [result["value"]]
            points = [(float(t), float(v)) for t, v in raw]
            out.append(
                Series(legend(target.get("legendFormat", ""), labels), target["refId"], points)
            )
    return out


async def query_all(prom: str, board: dict[str, Any], start: float, end: float) -> dict[int, Any]:
    """Return every panel's series, and the failover annotation times under key -1."""
    results: dict[int, Any] = {}
    async with aiohttp.ClientSession() as session:
        for panel in board["panels"]:
            if panel["type"] != "row":
                results[panel["id"]] = await query_panel(session, prom, panel, start, end)
        marks: list[float] = []
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                fake = {
                    "type": "timeseries",
                    "title": "annotation",
                    "targets": [{"expr": annotation["expr"], "refId": "A", "legendFormat": ""}],
                }
                for series in await query_panel(session, prom, fake, start, end):
                    previous = 0.0
                    for t, v in series.points:
                        if v > 0 and previous <= 0:
                            marks.append(t)
                        previous = v
        results[-1] = sorted(marks)
        # A summary of what failed, printed for whoever renders (not drawn).
        errors = {
            "type": "stat",
            "title": "5xx",
            "targets": [
                {
                    "expr": "sum by (server, method, group) (increase("
                    'comfyui_gateway_http_requests_total{code_class="5xx"}[1h]))',
                    "refId": "A",
                    "legendFormat": "{{method}} {{group}} from {{server}}",
                }
            ],
        }
        for series in await query_panel(session, prom, errors, start, end):
            print(f"5xx during the scenario: {series.name}: {series.last:.0f}")
    return results


# -- drawing ----------------------------------------------------------------------------------


def color_of(name: str | None) -> str:
    """Return a hex colour for a Grafana colour name (or a hex passthrough)."""
    if not name:
        return TEXT
    return NAMED.get(name, name)


def fmt_value(value: float, unit: str | None, decimals: int | None = None) -> str:
    """Format ``value`` like Grafana's unit formatters (the subset the dashboard uses)."""
    if value is None or math.isnan(value):
        return "No data"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "s":
        if value == 0:
            return "0 s"
        if abs(value) < 1:
            return f"{value * 1000:.{0 if abs(value) >= 0.1 else 1}f} ms"
        return f"{value:.2f} s"
    suffix = {"reqps": " req/s", "Bps": " B/s"}.get(unit or "", "")
    if unit == "Bps" and abs(value) >= 1024:
        for scale, name in ((1024**3, " GiB/s"), (1024**2, " MiB/s"), (1024, " KiB/s")):
            if abs(value) >= scale:
                return f"{value / scale:.1f}{name}"
    if decimals == 0:
        return f"{value:.0f}{suffix}"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:.0f}{suffix}"
    return f"{value:.2f}{suffix}"


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def threshold_color(defaults: dict[str, Any], value: float) -> str:
    color = defaults.get("color", {})
    if color.get("mode") == "fixed":
        return color_of(color.get("fixedColor"))
    steps = defaults.get("thresholds", {}).get("steps", [])
    chosen = TEXT
    for step in steps:
        if step["value"] is None or (not math.isnan(value) and value >= step["value"]):
            chosen = color_of(step["color"])
    return chosen


class Svg:
    """A tiny SVG builder."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def text(
        self,
        x: float,
        y: float,
        content: str,
        size: int = 12,
        color: str = TEXT,
        anchor: str = "start",
        weight: str = "normal",
    ) -> None:
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{color}" '
            f'text-anchor="{anchor}" font-weight="{weight}">{esc(content)}</text>'
        )

    def rect(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        fill: str,
        stroke: str = "none",
        rx: float = 0,
        opacity: float = 1.0,
    ) -> None:
        self.add(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
            f'fill="{fill}" stroke="{stroke}" rx="{rx}" fill-opacity="{opacity}"/>'
        )

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
            f'font-family="{FONT}">\n<rect width="100%" height="100%" fill="{BG}"/>\n'
            f"{body}\n</svg>\n"
        )


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float


def time_label(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def nice_max(value: float) -> float:
    if value <= 0 or math.isnan(value):
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def draw_timeseries(
    svg: Svg,
    box: Box,
    panel: dict[str, Any],
    series: list[Series],
    start: float,
    end: float,
    marks: list[float],
) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    custom = defaults.get("custom", {})
    unit = defaults.get("unit")
    decimals = defaults.get("decimals")
    right_refs = {
        o["matcher"]["options"]
        for o in panel["fieldConfig"].get("overrides", [])
        if o["matcher"]["id"] == "byFrameRefID"
        and any(
            p["id"] == "custom.axisPlacement" and p["value"] == "right" for p in o["properties"]
        )
    }
    right_unit = next(
        (
            p["value"]
            for o in panel["fieldConfig"].get("overrides", [])
            if o["matcher"]["id"] == "byFrameRefID"
            for p in o["properties"]
            if p["id"] == "unit"
        ),
        unit,
    )
    colors = {}
    for o in panel["fieldConfig"].get("overrides", []):
        if o["matcher"]["id"] == "byName":
            for p in o["properties"]:
                if p["id"] == "color":
                    colors[o["matcher"]["options"]] = color_of(p["value"]["fixedColor"])
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    bars = custom.get("drawStyle") == "bars"
    legend_rows = max(1, math.ceil(len(series) / 3)) if series else 1
    legend_h = 16 * min(legend_rows, 3)
    plot = Box(
        box.x + 52, box.y + 8, box.w - 52 - (52 if right_refs else 12), box.h - 30 - legend_h
    )

    def scale(group: list[Series]) -> float:
        if stacked:
            totals: dict[float, float] = {}
            for s in group:
                for t, v in s.points:
                    totals[t] = totals.get(t, 0.0) + (0 if math.isnan(v) else v)
            top = max(totals.values(), default=0.0)
        else:
            top = max((v for s in group for _, v in s.points if not math.isnan(v)), default=0.0)
        return nice_max(top)

    left = [s for s in series if s.ref not in right_refs]
    right = [s for s in series if s.ref in right_refs]
    ymax_left, ymax_right = scale(left), scale(right)
    if decimals == 0:  # whole numbers: ticks on integers
        ymax_left = max(4.0, 4 * math.ceil(ymax_left / 4))
    for i in range(5):  # grid and left axis
        y = plot.y + plot.h - plot.h * i / 4
        svg.add(
            f'<line x1="{plot.x}" y1="{y:.1f}" x2="{plot.x + plot.w}" y2="{y:.1f}" '
            f'stroke="{GRID}" stroke-width="1"/>'
        )
        svg.text(plot.x - 6, y + 4, fmt_value(ymax_left * i / 4, unit, decimals), 10, MUTED, "end")
        if right:
            svg.text(
                plot.x + plot.w + 6, y + 4, fmt_value(ymax_right * i / 4, right_unit), 10, MUTED
            )
    span = max(end - start, 1.0)
    for i in range(4):
        t = start + span * (i + 0.5) / 4
        svg.text(
            plot.x + plot.w * (i + 0.5) / 4,
            plot.y + plot.h + 14,
            time_label(t),
            10,
            MUTED,
            "middle",
        )

    def px(t: float) -> float:
        return plot.x + plot.w * (t - start) / span

    for t in marks:  # failover annotations, like Grafana's dashed markers
        x = px(t)
        svg.add(
            f'<line x1="{x:.1f}" y1="{plot.y}" x2="{x:.1f}" y2="{plot.y + plot.h}" '
            f'stroke="{NAMED["orange"]}" stroke-dasharray="3,3" stroke-width="1"/>'
        )
    base: dict[float, float] = {}
    for index, s in enumerate(series):
        color = colors.get(s.name, PALETTE[index % len(PALETTE)])
        ymax = ymax_right if s.ref in right_refs else ymax_left

        def py(v: float, ymax: float = ymax) -> float:
            return plot.y + plot.h - plot.h * min(v, ymax) / ymax

        if bars:
            width = max(1.5, plot.w / (span / STEP) * 0.8)
            for t, v in s.points:
                if v > 0 and not math.isnan(v):
                    svg.rect(
                        px(t) - width / 2, py(v), width, plot.y + plot.h - py(v), color, opacity=0.8
                    )
            continue
        runs: list[list[tuple[float, float, float]]] = [[]]
        step_after = custom.get("lineInterpolation") == "stepAfter"
        previous_t = None
        for t, v in s.points:
            if math.isnan(v) or (previous_t is not None and t - previous_t > 1.5 * STEP):
                runs.append([])  # no sample (a stale series): a gap, as Grafana draws it
            previous_t = t
            if math.isnan(v):
                continue
            low = base.get(t, 0.0) if stacked else 0.0
            if step_after and runs[-1]:
                runs[-1].append((px(t), runs[-1][-1][1], runs[-1][-1][2]))
            runs[-1].append((px(t), py(low + v), py(low)))
            if stacked:
                base[t] = low + v
        fill = custom.get("fillOpacity", 0) / 100
        for run in runs:
            if len(run) < 2:
                continue
            line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in run)
            if fill:
                under = " ".join(f"{x:.1f},{b:.1f}" for x, _, b in reversed(run))
                svg.add(f'<polygon points="{line} {under}" fill="{color}" fill-opacity="{fill}"/>')
            svg.add(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    # legend
    x0, y0 = box.x + 12, box.y + box.h - legend_h + 6
    col_w = (box.w - 24) / 3
    for index, s in enumerate(series[:9]):
        color = colors.get(s.name, PALETTE[index % len(PALETTE)])
        lx, ly = x0 + col_w * (index % 3), y0 + 16 * (index // 3)
        svg.rect(lx, ly - 3, 12, 3, color)
        name = s.name if len(s.name) <= 34 else s.name[:33] + "\N{HORIZONTAL ELLIPSIS}"
        svg.text(lx + 17, ly + 1, name, 11, TEXT)
    if not series:
        svg.text(box.x + box.w / 2, box.y + box.h / 2, "No data", 14, MUTED, "middle")


def draw_state_timeline(
    svg: Svg, box: Box, panel: dict[str, Any], series: list[Series], start: float, end: float
) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    mapping = defaults["mappings"][0]["options"]
    rows = sorted(series, key=lambda s: s.name)
    label_w = 90
    plot = Box(box.x + label_w, box.y + 6, box.w - label_w - 12, box.h - 28)
    span = max(end - start, 1.0)
    row_h = plot.h / max(len(rows), 1)
    for i, s in enumerate(rows):
        y = plot.y + i * row_h + row_h * 0.1
        h = row_h * 0.8
        svg.text(box.x + label_w - 8, y + h / 2 + 4, s.name, 12, TEXT, "end")
        segment_start, current = None, None
        points = [*s.points, (end + STEP, math.nan)]
        for t, v in points:
            key = None if math.isnan(v) else str(int(v))
            if key != current:
                if current is not None and segment_start is not None:
                    x1 = plot.x + plot.w * (segment_start - start) / span
                    x2 = plot.x + plot.w * (min(t, end) - start) / span
                    entry = mapping.get(current, {})
                    color = color_of(entry.get("color"))
                    svg.rect(
                        x1,
                        y,
                        x2 - x1,
                        h,
                        color,
                        opacity=0.85 if current == "1" or entry.get("color") == "red" else 0.6,
                        rx=2,
                    )
                    if x2 - x1 > 60 and entry.get("text"):
                        svg.text(
                            (x1 + x2) / 2, y + h / 2 + 4, entry["text"], 11, "#ffffff", "middle"
                        )
                segment_start, current = t, key
    for i in range(4):
        t = start + span * (i + 0.5) / 4
        svg.text(
            plot.x + plot.w * (i + 0.5) / 4, box.y + box.h - 8, time_label(t), 10, MUTED, "middle"
        )


def draw_stat(svg: Svg, box: Box, panel: dict[str, Any], series: list[Series]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    options = panel.get("options", {})
    mode = options.get("textMode", "value")
    unit = defaults.get("unit")
    decimals = defaults.get("decimals")
    if not series:
        svg.text(box.x + box.w / 2, box.y + box.h / 2 + 6, "No data", 16, MUTED, "middle")
        return
    n = len(series)
    for i, s in enumerate(series):
        cell = Box(box.x + box.w * i / n, box.y, box.w / n, box.h)
        color = threshold_color(defaults, s.last)
        value = fmt_value(s.last, unit, decimals)
        if options.get("colorMode") == "background":
            svg.rect(cell.x + 6, cell.y + 2, cell.w - 12, cell.h - 8, color, rx=3, opacity=0.9)
            color = "#ffffff"
        elif options.get("colorMode") == "none":
            color = TEXT
        cx, cy = cell.x + cell.w / 2, cell.y + cell.h / 2
        if mode == "name":
            svg.text(cx, cy + 8, s.name, 22 if len(s.name) < 20 else 16, color, "middle", "bold")
        elif mode == "value_and_name":
            svg.text(cx, cy - 8, s.name, 12, TEXT, "middle")
            svg.text(cx, cy + 22, value, 30, color, "middle", "bold")
        else:
            svg.text(cx, cy + 12, value, 34, color, "middle", "bold")


def draw(board: dict[str, Any], results: dict[int, Any], timeline: Timeline, width: int) -> Svg:
    """Draw the whole dashboard."""
    col = width / 24
    header = 64
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    height = int(header + bottom * (CELL_H + MARGIN) + 56)
    svg = Svg(width, height)
    svg.text(16, 28, board["title"], 20, TEXT, weight="bold")
    svg.text(16, 50, "datasource: Prometheus   job: All   instance: All", 12, MUTED)
    span = timeline.end - timeline.start
    svg.text(
        width - 16,
        28,
        f"{time_label(timeline.start)} to {time_label(timeline.end)} UTC "
        f"({span / 60:.1f} min scenario)   refresh 10s",
        12,
        MUTED,
        "end",
    )
    for panel in board["panels"]:
        pos = panel["gridPos"]
        box = Box(
            pos["x"] * col + MARGIN / 2,
            header + pos["y"] * (CELL_H + MARGIN),
            pos["w"] * col - MARGIN,
            pos["h"] * CELL_H + (pos["h"] - 1) * MARGIN,
        )
        if panel["type"] == "row":
            svg.text(
                box.x + 4,
                box.y + 20,
                "\N{BLACK DOWN-POINTING SMALL TRIANGLE} " + panel["title"],
                15,
                TEXT,
                weight="bold",
            )
            continue
        svg.rect(box.x, box.y, box.w, box.h, PANEL_BG, BORDER, rx=3)
        svg.text(box.x + 10, box.y + 20, panel["title"], 13, TEXT, weight="bold")
        inner = Box(box.x, box.y + 28, box.w, box.h - 30)
        series = results.get(panel["id"], [])
        if panel["type"] == "timeseries":
            draw_timeseries(svg, inner, panel, series, timeline.start, timeline.end, results[-1])
        elif panel["type"] == "state-timeline":
            draw_state_timeline(svg, inner, panel, series, timeline.start, timeline.end)
        elif panel["type"] == "stat":
            draw_stat(svg, inner, panel, series)
    events = "; ".join(f"{time_label(t)} {text}" for t, text in timeline.marks)
    svg.text(
        16,
        height - 32,
        "Preview rendered from deploy/grafana/dashboards/comfyui-gateway.json by "
        "deploy/grafana/render_preview.py: every panel's PromQL evaluated by a real "
        "Prometheus scraping a running gateway. Not a Grafana screenshot.",
        12,
        MUTED,
    )
    svg.text(
        16,
        height - 14,
        f"Scenario (UTC): {events}. Orange dashed lines: failover annotations.",
        12,
        MUTED,
    )
    return svg


def to_png(svg_path: Path, png_path: Path, width: int, height: int, scale: float) -> None:
    """Screenshot the SVG with headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--force-device-scale-factor={scale}",
                f"--window-size={width},{height}",
                f"--screenshot={png_path}",
                svg_path.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


async def main_async(args: argparse.Namespace) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("prometheus not found: apt-get install prometheus")
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="dashboard-preview-") as tmp:
        workdir = Path(tmp)
        run = await run_scenario(workdir, prometheus)
        timeline = run.timeline
        try:
            results = await query_all(run.prom_url, board, timeline.start, timeline.end)
        finally:
            run.prom.terminate()  # by its own PID
            await run.prom.wait()
            run.log.close()
    svg = draw(board, results, timeline, args.width)
    out = Path(args.out)
    svg_path = out.with_suffix(".svg")
    svg_path.write_text(svg.render(), encoding="utf-8")
    to_png(svg_path, out, svg.width, svg.height, args.scale)
    if not args.keep_svg:
        svg_path.unlink()
    print(f"wrote {out} ({svg.width}x{svg.height})")


def main() -> None:
    """Parse the command line and render."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "grafana-dashboard.png"))
    parser.add_argument("--width", type=int, default=1680)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep-svg", action="store_true")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
