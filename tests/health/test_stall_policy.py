"""Stalled requests (a hung backend) in the pure health state machine: no network, no clock.

Times are plain numbers on the shell's clock: ``since`` is when the stalled request began
waiting, ``at`` when a probe result came in.
"""

from __future__ import annotations

from gateway.config.models import HealthSettings
from gateway.health.policy import HealthTracker, PassiveSettings
from gateway.registry import ServerState

UP, DOWN, UNKNOWN = ServerState.UP, ServerState.DOWN, ServerState.UNKNOWN
SETTINGS = HealthSettings(timeout=2.0, rise=2, fall=3)
PASSIVE = PassiveSettings()


def up_tracker(answered_at: float = 0.0) -> HealthTracker:
    """Return a tracker of an up server whose last probe succeeded at ``answered_at``."""
    tracker = HealthTracker("a", UP)
    assert tracker.record(True, SETTINGS, at=answered_at) is None
    return tracker


def test_stall_plus_one_failed_probe_marks_down_at_once() -> None:
    t = up_tracker(answered_at=10.0)
    verdict = t.observe_stall(2.3, 10.5, PASSIVE, SETTINGS)
    assert verdict.recheck  # probe now
    assert verdict.transition is None  # a stall alone is no failure
    assert t.stall_suspected
    assert t.state is UP
    transition = t.record(False, SETTINGS, detail="timed out", at=15.0)
    assert transition is not None
    assert (transition.old, transition.new) == (UP, DOWN)
    assert "stalled" in transition.reason
    assert "2.3s" in transition.reason
    assert "2s health timeout" in transition.reason
    assert transition.reason.endswith("confirmed by a failed check: timed out")
    assert not t.stall_suspected


def test_without_a_stall_a_failed_probe_counts_once() -> None:
    t = up_tracker()
    assert t.record(False, SETTINGS, detail="timed out") is None
    assert t.state is UP
    assert t.failures == 1


def test_slow_request_answered_probe_changes_nothing() -> None:
    t = up_tracker(answered_at=10.0)
    assert t.observe_stall(3.0, 11.0, PASSIVE, SETTINGS).recheck
    assert t.record(True, SETTINGS, at=14.0) is None  # the probe answered: slow, not hung
    assert t.state is UP
    assert not t.stall_suspected
    assert (t.failures, t.transitioning) == (0, False)
    # The same request, still waiting: the server answered since it began; no new probe.
    assert not t.observe_stall(3.5, 11.0, PASSIVE, SETTINGS).recheck
    assert not t.stall_suspected
    # A later failed probe is one failure among ``fall``, as without any stall.
    assert t.record(False, SETTINGS, detail="timed out", at=16.0) is None
    assert t.state is UP
    # A request that began waiting after the last answer is new evidence.
    assert t.observe_stall(2.5, 14.5, PASSIVE, SETTINGS).recheck


def test_one_probe_per_suspicion() -> None:
    t = up_tracker()
    assert t.observe_stall(2.1, 5.0, PASSIVE, SETTINGS).recheck
    for waited, since in ((2.6, 5.0), (2.2, 5.4), (3.0, 6.0)):
        verdict = t.observe_stall(waited, since, PASSIVE, SETTINGS)
        assert not verdict.recheck  # the probe asked for (or in flight) decides
        assert verdict.transition is None
    assert t.recheck_requested


def test_wait_shorter_than_the_health_timeout_is_no_evidence() -> None:
    t = up_tracker()
    assert not t.observe_stall(1.9, 5.0, PASSIVE, SETTINGS).recheck
    assert not t.stall_suspected
    assert t.record(False, SETTINGS, detail="timed out") is None


def test_traffic_answering_withdraws_the_suspicion() -> None:
    t = up_tracker()
    assert t.observe_stall(2.5, 5.0, PASSIVE, SETTINGS).recheck
    t.observe_success()  # another request to the same backend was answered meanwhile
    assert not t.stall_suspected
    assert t.record(False, SETTINGS, detail="timed out") is None
    assert t.state is UP


def test_stalls_count_only_for_an_up_server() -> None:
    for state in (DOWN, UNKNOWN):
        t = HealthTracker("a", state)
        assert not t.observe_stall(5.0, 1.0, PASSIVE, SETTINGS).recheck
        assert not t.stall_suspected


def test_stalls_ignored_when_passive_checks_or_confirmation_are_off() -> None:
    for passive in (PassiveSettings(enabled=False), PassiveSettings(confirm_stalls=False)):
        t = up_tracker()
        assert not t.observe_stall(5.0, 1.0, passive, SETTINGS).recheck
        assert t.record(False, SETTINGS, detail="timed out") is None
        assert t.state is UP


def test_any_failed_probe_confirms_and_the_server_comes_back_by_rise() -> None:
    t = up_tracker()
    t.observe_stall(2.5, 5.0, PASSIVE, SETTINGS)
    transition = t.record(False, SETTINGS, detail="HTTP 500 from /system_stats")
    assert transition is not None
    assert transition.new is DOWN
    assert t.record(True, SETTINGS) is None  # rise = 2
    back = t.record(True, SETTINGS)
    assert back is not None
    assert back.new is UP


def test_admin_or_url_change_drops_the_suspicion() -> None:
    t = up_tracker()
    t.observe_stall(2.5, 5.0, PASSIVE, SETTINGS)
    t.adopt(DOWN)
    assert not t.stall_suspected
    t = up_tracker()
    t.observe_stall(2.5, 5.0, PASSIVE, SETTINGS)
    t.reset(UP)
    assert not t.stall_suspected
    assert t.record(False, SETTINGS) is None


def test_stall_wins_over_a_pre_fatal_passive_error() -> None:
    """Both kinds of evidence pending: one failed probe marks down, naming the stall."""
    t = up_tracker()
    t.observe_failure("reset", "boom", PASSIVE, SETTINGS)  # sudden-death: pre-fatal
    t.observe_stall(2.5, 5.0, PASSIVE, SETTINGS)
    transition = t.record(False, SETTINGS, detail="timed out")
    assert transition is not None
    assert transition.new is DOWN
    assert "stalled" in transition.reason
