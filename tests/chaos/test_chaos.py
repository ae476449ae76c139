"""Chaos in CI (issue 8 §1, short form): three backend processes, four clients, ~20 s of
faults of every kind; the invariants of :mod:`tests.chaos.chaos_engine` must all hold.

The long form is ``python bench/chaos.py --duration 300 --clients 8`` (figures in
``bench/CHAOS.md``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.chaos_engine import FAULT_KINDS, ChaosSettings, run_chaos

MIB = 1024 * 1024


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_chaos_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    settings = ChaosSettings(
        work_dir=tmp_path,
        duration=20.0,
        clients=4,
        seed=20261124,
        prompt_timeout=30.0,
        fetch_timeout=20.0,
        drain_timeout=25.0,
        log=lines.append,
    )
    report = await run_chaos(settings)
    figures = report.figures()
    with capsys.disabled():
        print("\n" + figures)
    problems = report.violations()
    assert problems == [], "\n".join([figures, *lines, *problems, *report.details])
    assert report.admin_available, "the admin API is mounted: 'activate' faults must run"
    assert set(report.faults) == set(FAULT_KINDS), report.faults
    assert sum(report.faults.values()) >= 15
    assert report.prompts_completed >= 30
    assert report.failovers >= 1
    assert report.recoveries >= 1
    assert report.rss_end - report.rss_baseline < 64 * MIB
