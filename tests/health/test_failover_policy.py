"""The pure failover policy, driven by timed lists of state changes (no sockets, no clock)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.config.models import FailbackPolicy
from gateway.registry import ServerState
from gateway.routing.failover import FailoverPolicy, FailoverView, ServerView, Switch, rank

UP, DOWN, UNKNOWN = ServerState.UP, ServerState.DOWN, ServerState.UNKNOWN


@dataclass
class Sim:
    """A tiny world: servers change state at given times; the policy runs after each change and
    on every tick, and its switches are applied, as the controller does."""

    priorities: dict[str, int]
    preferred: str | None = "a"
    auto_switch: bool = True
    failback: FailbackPolicy = "auto"
    hold: float = 30.0
    latency: dict[str, float] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    enabled: dict[str, bool] = field(default_factory=dict)
    policy: FailoverPolicy = field(default_factory=FailoverPolicy)

    def __post_init__(self) -> None:
        self.state = dict.fromkeys(self.priorities, UNKNOWN)
        self.since = dict.fromkeys(self.priorities, 0.0)
        self.serving = self.preferred
        self.switches: list[tuple[float, str, str]] = []

    def view(self) -> FailoverView:
        return FailoverView(
            preferred=self.preferred,
            serving=self.serving,
            servers=[
                ServerView(
                    sid,
                    self.enabled.get(sid, True),
                    self.state[sid],
                    prio,
                    self.latency.get(sid),
                    self.since[sid],
                )
                for sid, prio in self.priorities.items()
            ],
            auto_switch=self.auto_switch,
            failback=self.failback,
            failback_hold=self.hold,
            busy=lambda sid: sid in self.busy,
        )

    def decide(self, now: float) -> Switch | None:
        decision = self.policy.decide(self.view(), now)
        if decision is not None:
            self.serving = decision.to
            self.switches.append((now, decision.kind, decision.to))
        return decision

    def run(
        self,
        events: Iterable[tuple[float, str, ServerState]],
        until: float = 0.0,
        tick: float = 1.0,
    ) -> list[tuple[float, str, str]]:
        """Apply ``(time, server, state)`` events in order; also decide every ``tick`` seconds."""
        timeline = sorted(events, key=lambda e: e[0])
        end = max([until] + [e[0] for e in timeline])
        ticks = [n * tick for n in range(int(end // tick) + 1)]
        moments = sorted({*ticks, *(e[0] for e in timeline)})
        i = 0
        for now in moments:
            while i < len(timeline) and timeline[i][0] <= now:
                t, sid, state = timeline[i]
                if self.state[sid] is not state:
                    self.state[sid], self.since[sid] = state, t
                self.decide(t)  # the controller runs after every state change
                i += 1
            self.decide(now)
        return self.switches


def test_serving_down_fails_over_to_best_by_priority_then_latency() -> None:
    sim = Sim({"a": 1, "b": 5, "c": 5, "d": 2}, latency={"b": 0.2, "c": 0.1, "d": 0.3})
    events = [(0, s, UP) for s in "abc"] + [(0, "d", DOWN), (5, "a", DOWN)]
    assert sim.run(events) == [(5, "failover", "c")]  # d (priority 2) is down; c beats b on latency


def test_failover_prefers_the_preferred_server_when_healthy() -> None:
    sim = Sim({"a": 9, "b": 1, "c": 2}, preferred="a")
    sim.serving = "c"  # after an earlier failover
    events = [(0, "a", UP), (0, "b", UP), (0, "c", UP), (3, "c", DOWN)]
    assert sim.run(events, tick=100) == [(3, "failover", "a")]  # no hold: c is dead


def test_all_down_no_change_then_first_back_is_used_at_once() -> None:
    sim = Sim({"a": 1, "b": 2, "c": 3})
    events = [(0, s, UP) for s in "abc"]
    events += [(10, "b", DOWN), (10, "c", DOWN), (20, "a", DOWN)]
    events += [(50, "c", UP), (60, "b", UP)]
    switches = sim.run(events, until=70)
    assert switches == [(50, "recover", "c")]  # nothing between 20 and 50; b (better) stays unused
    assert sim.serving == "c"


def test_recover_when_nothing_was_serving() -> None:
    sim = Sim({"a": 1}, preferred=None)
    sim.serving = None
    assert sim.run([(1, "a", UP)]) == [(1, "recover", "a")]


def test_failback_after_hold() -> None:
    sim = Sim({"a": 1, "b": 2}, hold=30)
    events = [(0, "a", UP), (0, "b", UP), (5, "a", DOWN), (10, "a", UP)]
    assert sim.run(events, until=60) == [(5, "failover", "b"), (40, "failback", "a")]


def test_failback_waits_while_the_serving_server_is_busy() -> None:
    sim = Sim({"a": 1, "b": 2}, hold=30)
    sim.run([(0, "a", UP), (0, "b", UP), (5, "a", DOWN), (10, "a", UP)], until=20)
    sim.busy.add("b")
    sim.run([], until=100)
    assert sim.serving == "b"
    assert sim.policy.next_check(sim.view(), 100) == sim.policy.busy_poll
    sim.busy.clear()
    decision = sim.decide(101)
    assert decision is not None
    assert (decision.kind, decision.to) == ("failback", "a")
    assert "idle" in decision.reason


def test_manual_failback_never_returns() -> None:
    sim = Sim({"a": 1, "b": 2}, failback="manual", hold=1)
    events = [(0, "a", UP), (0, "b", UP), (5, "a", DOWN), (10, "a", UP)]
    assert sim.run(events, until=1000, tick=10) == [(5, "failover", "b")]
    assert sim.policy.next_check(sim.view(), 1000) is None


def test_flapping_preferred_server_causes_no_ping_pong() -> None:
    """a flaps every 10 s (its checks already passed rise/fall); the hold is never reached."""
    sim = Sim({"a": 1, "b": 2}, hold=30)
    events = [(0, "a", UP), (0, "b", UP)]
    events += [(t, "a", DOWN if (t // 10) % 2 else UP) for t in range(10, 300, 10)]
    switches = sim.run(events, until=300)
    assert switches == [(10, "failover", "b")]


def test_auto_switch_off_never_moves() -> None:
    sim = Sim({"a": 1, "b": 2}, auto_switch=False)
    assert sim.run([(0, "a", UP), (0, "b", UP), (5, "a", DOWN)], until=100) == []


def test_unknown_serving_is_not_failed() -> None:
    sim = Sim({"a": 1, "b": 2})
    assert sim.run([(0, "b", UP)], until=10) == []


def test_disabled_or_removed_serving_moves() -> None:
    sim = Sim({"a": 1, "b": 2}, enabled={"a": False})
    sim.state["b"] = UP
    decision = sim.policy.decide(sim.view(), 0)
    assert decision is not None
    assert "disabled" in decision.reason
    sim = Sim({"a": 1, "b": 2}, enabled={"a": False})
    switches = sim.run([(0, "a", UP), (0, "b", UP)])
    assert switches == [(0, "failover", "b")]
    gone = Sim({"b": 2}, preferred="b")
    gone.serving = "x"
    gone.state["b"] = UP
    decision = gone.policy.decide(gone.view(), 0)
    assert decision is not None
    assert decision.to == "b"
    assert "removed" in decision.reason


def test_healthy_serving_is_not_left_for_a_better_non_preferred_server() -> None:
    sim = Sim({"a": 1, "b": 5, "c": 2}, hold=0)
    events = [(0, "b", UP), (0, "a", DOWN), (0, "c", DOWN), (1, "c", UP)]
    switches = sim.run(events, until=50)
    assert switches == [(0, "failover", "b")]  # c (priority 2) came up, but b is fine


def test_next_check_reports_the_remaining_hold() -> None:
    sim = Sim({"a": 1, "b": 2}, hold=30)
    sim.run([(0, "a", UP), (0, "b", UP), (5, "a", DOWN), (10, "a", UP)], until=12)
    assert sim.policy.next_check(sim.view(), 12) == 28
    assert Sim({"a": 1}).policy.next_check(Sim({"a": 1}).view(), 0) is None


def test_rank_orders_preferred_then_priority_latency_id() -> None:
    views = [
        ServerView("z", True, UP, 1, None),
        ServerView("y", True, UP, 1, 0.5),
        ServerView("x", True, UP, 1, 0.5),
        ServerView("p", True, UP, 9, 9.0),
        ServerView("d", True, DOWN, 0, 0.0),
        ServerView("off", False, UP, 0, 0.0),
    ]
    assert [v.id for v in rank(views, "p")] == ["p", "x", "y", "z"]
