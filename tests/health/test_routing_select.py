"""Candidate order for one request (pure: a registry in memory, no sockets)."""

from __future__ import annotations

from gateway.config.models import FailoverSettings, GatewayConfig, ServerConfig
from gateway.proxy.upstream import BackendPool
from gateway.registry import ServerRegistry, ServerState
from gateway.routing.select import candidates, make_picker, pick_backend

UP, DOWN = ServerState.UP, ServerState.DOWN


def registry(
    *,
    auto_switch: bool = True,
    disabled: tuple[str, ...] = (),
    active: str = "a",
) -> ServerRegistry:
    servers = [
        ServerConfig(
            id=sid,
            name=sid,
            url=f"http://127.0.0.1:{9000 + i}",
            priority=prio,
            enabled=sid not in disabled,
        )
        for i, (sid, prio) in enumerate([("a", 1), ("b", 3), ("c", 2), ("d", 2)])
    ]
    config = GatewayConfig(
        servers=servers, active=active, failover=FailoverSettings(auto_switch=auto_switch)
    )
    return ServerRegistry(config)


def states(reg: ServerRegistry, **state: ServerState) -> ServerRegistry:
    for sid, s in state.items():
        reg.set_state(sid, s, reason="test")
    return reg


def test_serving_first_then_healthy_best_first() -> None:
    reg = states(registry(), a=UP, b=UP, c=UP, d=UP)
    reg.status("c").latency = 0.3
    reg.status("d").latency = 0.1
    assert candidates(reg, frozenset()) == ["a", "d", "c", "b"]
    assert candidates(reg, frozenset({"a"})) == ["d", "c", "b"]
    assert candidates(reg, frozenset({"a", "d", "c", "b"})) == []


def test_preferred_is_the_first_retry_after_a_failover() -> None:
    reg = states(registry(), a=UP, b=UP, c=UP, d=DOWN)
    reg.set_serving("b", reason="test", kind="failover")
    assert candidates(reg) == ["b", "a", "c"]


def test_unknown_serving_is_tried_and_down_servers_are_not_retried() -> None:
    reg = states(registry(), b=UP, c=DOWN)
    assert candidates(reg) == ["a", "b"]


def test_down_serving_is_skipped_while_others_are_up() -> None:
    reg = states(registry(), a=DOWN, b=UP)
    assert candidates(reg) == ["b"]


def test_all_down_fails_open_on_serving_once() -> None:
    reg = states(registry(), a=DOWN, b=DOWN, c=DOWN, d=DOWN)
    assert candidates(reg) == ["a"]
    assert candidates(reg, frozenset({"a"})) == []


def test_never_a_disabled_server() -> None:
    reg = states(registry(disabled=("a", "c")), a=UP, b=UP, c=UP, d=UP)
    assert candidates(reg) == ["d", "b"]  # the serving server was disabled


def test_auto_switch_off_means_serving_only() -> None:
    reg = states(registry(auto_switch=False), a=DOWN, b=UP)
    assert candidates(reg) == ["a"]
    assert candidates(reg, frozenset({"a"})) == []
    reg = states(registry(auto_switch=False, disabled=("a",)), b=UP)
    assert candidates(reg) == []


def test_pick_backend_and_picker() -> None:
    reg = states(registry(), a=UP, b=UP)
    pool = BackendPool(reg.config)
    backend = pick_backend(reg, pool, frozenset())
    assert backend is not None
    assert backend.id == "a"
    pick = make_picker(reg, pool)
    second = pick(frozenset({"a"}))
    assert second is not None
    assert second.id == "b"
    assert pick(frozenset({"a", "b"})) is None
