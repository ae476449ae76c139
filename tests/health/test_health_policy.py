"""The pure health state machine, driven by plain lists of probe results and traffic reports."""

from __future__ import annotations

import random

import pytest

from gateway.config.models import HealthSettings
from gateway.health.policy import (
    HealthTracker,
    PassiveSettings,
    Transition,
    identity_of,
    next_interval,
    queue_remaining_of,
    uptime_of,
)
from gateway.registry import ServerState

UP, DOWN, UNKNOWN = ServerState.UP, ServerState.DOWN, ServerState.UNKNOWN
SETTINGS = HealthSettings(rise=2, fall=3)


def feed(tracker: HealthTracker, results: str, settings: HealthSettings = SETTINGS) -> list[str]:
    """Feed probe results ("S" success, "F" failure); return the states reached, one per result."""
    states = []
    for r in results:
        tracker.record(r == "S", settings, detail="boom")
        states.append(tracker.state.value[0].upper())
    return states


def test_first_result_decides_for_an_unknown_server() -> None:
    assert feed(HealthTracker("a"), "S") == ["U"]
    assert feed(HealthTracker("a"), "F") == ["D"]


def test_fall_failures_mark_down_and_rise_successes_mark_up() -> None:
    t = HealthTracker("a")
    #                 S    F    F    F    S    S    F    S    S
    assert feed(t, "SFFFSSFSS") == list("UUUDDUUUU")


def test_transitioning_while_counts_accumulate() -> None:
    t = HealthTracker("a", UP)
    t.record(False, SETTINGS)
    assert t.transitioning
    assert t.state is UP
    t.record(True, SETTINGS)
    assert not t.transitioning
    assert t.failures == 0


def test_flapping_never_changes_state() -> None:
    """Alternating results never reach rise or fall: no ping-pong."""
    up = HealthTracker("a", UP)
    down = HealthTracker("b", DOWN)
    assert set(feed(up, "FSFSFFSFFS")) == {"U"}
    assert set(feed(down, "SFSFSFSF")) == {"D"}


def test_transition_carries_reason() -> None:
    t = HealthTracker("a", UP)
    transitions = [t.record(False, SETTINGS, detail="connection refused") for _ in range(3)]
    assert transitions[:2] == [None, None]
    assert transitions[2] == Transition(
        "a", UP, DOWN, "3 consecutive failed checks: connection refused"
    )


class Edges:
    """A fake rng returning a fixed point of the jitter range."""

    def __init__(self, value: float) -> None:
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.value


@pytest.mark.parametrize(
    ("state", "failures", "successes", "expected"),
    [
        (UNKNOWN, 0, 0, 0.5),
        (UP, 0, 0, 2.0),
        (UP, 1, 0, 0.5),
        (DOWN, 0, 0, 5.0),
        (DOWN, 0, 1, 0.5),
    ],
)
def test_next_interval_by_state(
    state: ServerState, failures: int, successes: int, expected: float
) -> None:
    t = HealthTracker("a", state)
    t.failures, t.successes = failures, successes
    settings = HealthSettings(jitter=0)
    assert next_interval(settings, t, random.Random(1)) == expected


def test_next_interval_jitter_bounds_and_floor() -> None:
    t = HealthTracker("a", UP)
    settings = HealthSettings(interval=2.0, jitter=0.1)
    assert next_interval(settings, t, Edges(0.0)) == pytest.approx(1.8)
    assert next_interval(settings, t, Edges(1.0)) == pytest.approx(2.2)
    values = {next_interval(settings, t, random.Random(seed)) for seed in range(50)}
    assert all(1.8 <= v <= 2.2 for v in values)
    assert len(values) > 1
    tiny = HealthSettings(interval=0.001, jitter=1.0)
    assert next_interval(tiny, t, Edges(0.0)) == 0.001  # never 0 or negative


# -- passive -----------------------------------------------------------------------------------


def test_sudden_death_passive_error_plus_one_failed_probe_marks_down() -> None:
    t = HealthTracker("a", UP)
    verdict = t.observe_failure("connect", "refused", PassiveSettings(), SETTINGS)
    assert verdict.recheck
    assert verdict.transition is None
    assert t.state is UP
    assert t.transitioning
    transition = t.record(False, SETTINGS, detail="connection refused")
    assert transition is not None
    assert transition.new is DOWN
    assert "confirmed by a failed check" in transition.reason
    assert "refused" in transition.reason


def test_sudden_death_cleared_by_a_successful_probe() -> None:
    t = HealthTracker("a", UP)
    t.observe_failure("reset", "websocket closed", PassiveSettings(), SETTINGS)
    assert t.record(True, SETTINGS) is None
    assert t.failures == 0
    assert not t.transitioning
    # The suspicion is gone: it takes a full `fall` again.
    assert feed(t, "FF") == ["U", "U"]


def test_one_recheck_per_probe_cycle() -> None:
    t = HealthTracker("a", UP)
    passive = PassiveSettings()
    assert t.observe_failure("connect", "x", passive, SETTINGS).recheck
    assert not t.observe_failure("connect", "x", passive, SETTINGS).recheck
    assert not t.observe_failure("reset", "x", passive, SETTINGS).recheck
    t.record(True, SETTINGS)
    assert t.observe_failure("connect", "x", passive, SETTINGS).recheck


def test_5xx_counts_only_consecutively_and_transients_never() -> None:
    t = HealthTracker("a", UP)
    passive = PassiveSettings(consecutive_5xx=3)
    results = [t.observe_failure("status_5xx", "500", passive, SETTINGS).recheck for _ in range(2)]
    assert results == [False, False]
    assert not t.observe_failure("status_5xx", "503", passive, SETTINGS).recheck  # transient
    assert t.observe_failure("status_5xx", "502", passive, SETTINGS).recheck  # third counted
    t.record(True, SETTINGS)
    t.observe_failure("status_5xx", "500", passive, SETTINGS)
    t.observe_failure("status_5xx", "500", passive, SETTINGS)
    t.observe_success()  # a good answer in between resets the count
    assert not t.observe_failure("status_5xx", "500", passive, SETTINGS).recheck
    assert t.state is UP


def test_error_limit() -> None:
    t = HealthTracker("a", UP)
    passive = PassiveSettings(error_limit=2)
    assert not t.observe_failure("timeout", "", passive, SETTINGS).recheck
    assert t.observe_failure("timeout", "", passive, SETTINGS).recheck


def test_on_error_modes() -> None:
    mark_down = HealthTracker("a", UP)
    verdict = mark_down.observe_failure(
        "connect", "refused", PassiveSettings(on_error="mark-down"), SETTINGS
    )
    assert verdict.transition is not None
    assert verdict.transition.new is DOWN

    fail_check = HealthTracker("a", UP)
    passive = PassiveSettings(on_error="fail-check")
    assert fail_check.observe_failure("connect", "x", passive, SETTINGS).transition is None
    assert fail_check.failures == 1
    fail_check.record(False, SETTINGS)
    verdict = fail_check.observe_failure("connect", "x", passive, SETTINGS)
    assert verdict.transition is not None
    assert verdict.transition.new is DOWN

    fastinter = HealthTracker("a", UP)
    verdict = fastinter.observe_failure(
        "connect", "x", PassiveSettings(on_error="fastinter"), SETTINGS
    )
    assert verdict.recheck
    assert fastinter.failures == 0

    disabled = HealthTracker("a", UP)
    verdict = disabled.observe_failure("connect", "x", PassiveSettings(enabled=False), SETTINGS)
    assert not verdict.recheck
    assert disabled.failures == 0


def test_passive_on_down_server() -> None:
    t = HealthTracker("a", DOWN)
    t.record(True, SETTINGS)
    assert t.successes == 1
    assert not t.observe_failure("connect", "x", PassiveSettings(), SETTINGS).recheck
    assert t.successes == 0  # failing traffic: not going up
    # Traffic that succeeds on a "down" server: probe it now, it has probably come back.
    assert t.observe_success().recheck
    assert t.state is DOWN  # only probes mark a server up


# -- restarts ----------------------------------------------------------------------------------


def stats(argv: str = "main.py", ram_free: int = 5, **system: object) -> dict[str, object]:
    return {
        "system": {
            "argv": [argv],
            "ram_total": 100,
            "ram_free": ram_free,
            "comfyui_version": "0.3.64",
            **system,
        },
        "devices": [
            {"name": "cpu", "type": "cpu", "index": None, "vram_total": 9, "vram_free": ram_free}
        ],
    }


def test_identity_ignores_free_memory_and_sees_boot_ids() -> None:
    assert identity_of(stats(ram_free=1)) == identity_of(stats(ram_free=2))
    assert identity_of(stats()) != identity_of(stats(argv="other.py"))
    assert identity_of(stats(boot_id="x")) != identity_of(stats(boot_id="y"))
    assert identity_of({"nope": 1}) is None
    assert identity_of("not json") is None
    assert uptime_of(stats(uptime=12)) == 12.0
    assert uptime_of(stats()) is None
    assert queue_remaining_of({"exec_info": {"queue_remaining": 3}}) == 3
    assert queue_remaining_of({"exec_info": {}}) is None


def test_restart_by_identity_change() -> None:
    t = HealthTracker("a")
    assert t.observe_identity("one") is None  # first sight
    assert t.observe_identity("one") is None
    restart = t.observe_identity("two")
    assert restart is not None
    assert restart.evidence == "identity"
    assert restart.certain


def test_restart_by_uptime_going_back() -> None:
    t = HealthTracker("a")
    t.observe_identity("one", 100.0)
    assert t.observe_identity("one", 105.0) is None
    restart = t.observe_identity("one", 3.0)
    assert restart is not None
    assert restart.evidence == "uptime"


def test_restart_when_back_after_down_or_refused() -> None:
    t = HealthTracker("a")
    t.observe_identity("one")
    t.record(True, SETTINGS)
    feed(t, "FFF")
    assert t.state is DOWN
    restart = t.observe_identity("one")
    assert restart is not None
    assert restart.evidence == "returned"
    assert not restart.certain
    assert t.observe_identity("one") is None  # one outage, one restart

    # Still up, but one probe found nothing listening: the process was gone.
    t = HealthTracker("b", UP)
    t.observe_identity("one")
    t.record(False, SETTINGS, refused=True)
    assert t.state is UP
    restart = t.observe_identity("one")
    assert restart is not None
    assert restart.evidence == "returned"


def test_no_restart_for_slow_answers_or_before_first_sight() -> None:
    t = HealthTracker("a", UP)
    t.observe_identity("one")
    t.record(False, SETTINGS, detail="timed out")  # a timeout is not "nothing listening"
    assert t.observe_identity("one") is None
    never_seen = HealthTracker("b")
    feed(never_seen, "F")
    assert never_seen.observe_identity("one") is None
