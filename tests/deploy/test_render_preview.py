"""The dashboard preview renderer's pure parts: variable substitution, legends, units, drawing.

The full render (real backends, gateway and Prometheus, about three minutes) is run by hand:
``python deploy/grafana/render_preview.py``; here the drawing runs on synthetic series.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from types import ModuleType

from deploy_paths import DASHBOARD, GRAFANA


def renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_preview", GRAFANA / "render_preview.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_substitution_and_legends() -> None:
    rp = renderer()
    expr = 'rate(x{job=~"$job", instance=~"$instance"}[$__rate_interval])'
    assert rp.substitute(expr) == 'rate(x{job=~".*", instance=~".*"}[5s])'
    assert (
        rp.legend(
            "{{kind}}: {{from_server}} → {{to_server}}",
            {"kind": "failover", "from_server": "a", "to_server": "b"},
        )
        == "failover: a → b"
    )
    assert rp.fmt_value(0.25, "percentunit") == "25.0%"
    assert rp.fmt_value(0.012, "s") == "12.0 ms"
    assert rp.fmt_value(3.0, "reqps") == "3 req/s"
    assert rp.fmt_value(math.nan, None) == "No data"


def test_every_panel_of_the_dashboard_is_drawn() -> None:
    rp = renderer()
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    start, end = 1_700_000_000.0, 1_700_000_120.0
    points = [(start + i, float(i % 3)) for i in range(121)]
    results: dict[int, object] = {-1: [start + 60]}
    for panel in board["panels"]:
        assert panel["type"] in {"row", "stat", "timeseries", "state-timeline"}, panel["type"]
        results[panel["id"]] = [rp.Series("s1", "A", points), rp.Series("s2", "B", points[:60])]
    timeline = rp.Timeline(start=start, end=end, marks=[(start + 60, "backend killed")])
    svg = rp.draw(board, results, timeline, 1680).render()
    assert svg.startswith("<svg")
    for panel in board["panels"]:
        assert f">{rp.esc(panel['title'])}<" in svg or panel["type"] == "row"
    assert "Not a Grafana screenshot" in svg
