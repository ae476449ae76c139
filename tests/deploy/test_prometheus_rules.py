"""The Prometheus configuration and alerting rules pass promtool's checks and unit tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from deploy_paths import PROMETHEUS

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; CI installs it)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in deploy/prometheus (rule files are relative to it)."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_config_passes_promtool_check() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_is_unit_tested_and_documented() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text(encoding="utf-8"))
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert names == fired, f"rules never shown firing in alerts.test.yml: {names - fired}"
    assert {
        "ComfyUIServerDown",
        "ComfyUIGatewayNoHealthyServer",
        "ComfyUIGatewayFailoverStorm",
        "ComfyUIGatewayHighErrorRatio",
        "ComfyUIGatewayPromptsLost",
    } <= names
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_server_down_waits_one_minute_and_scrape_job_matches() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert by_name["ComfyUIServerDown"]["for"] == "1m"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert 'job="comfyui-gateway"' in by_name["ComfyUIGatewayDown"]["expr"]
    assert jobs["comfyui-gateway"]["static_configs"][0]["targets"] == ["gateway:8190"]
    assert config["rule_files"] == ["alerts.yml"]
