"""The first-attempt fast path of ``pick_backend`` answers exactly what ``candidates`` ranks first.

Property tests over random registries: server states, enabled flags, priorities, latencies,
``auto_switch``, the preferred server, the serving one (configured, removed or none), config
replacements, and backend pools that lack some servers.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.models import FailoverSettings, GatewayConfig, ServerConfig
from gateway.registry import ServerRegistry, ServerState
from gateway.routing.select import candidates, first_choice, pick_backend

IDS = ("a", "b", "c", "d")
STATES = (ServerState.UP, ServerState.DOWN, ServerState.UNKNOWN)


@dataclass(frozen=True)
class FakeBackend:
    id: str


@st.composite
def configs(draw: st.DrawFn) -> GatewayConfig:
    ids = draw(st.lists(st.sampled_from(IDS), min_size=0, max_size=len(IDS), unique=True))
    servers = [
        ServerConfig(
            id=sid,
            name=sid,
            url=f"http://127.0.0.1:{9100 + IDS.index(sid)}",
            priority=draw(st.integers(0, 3)),
            enabled=draw(st.booleans()),
        )
        for sid in ids
    ]
    active = draw(st.none() | st.sampled_from(ids)) if ids else None
    return GatewayConfig(
        servers=servers,
        active=active,
        failover=FailoverSettings(auto_switch=draw(st.booleans())),
    )


@st.composite
def registries(draw: st.DrawFn) -> ServerRegistry:
    registry = ServerRegistry(draw(configs()))
    # A few runtime changes in random order: states, latencies, serving moves, new configs.
    for _ in range(draw(st.integers(0, 8))):
        step = draw(st.sampled_from(("state", "latency", "serve", "config")))
        if step == "config":
            registry.apply_config(draw(configs()), reason="test")
            continue
        if step == "serve":
            target = draw(st.none() | st.sampled_from((*IDS, "gone")))
            registry.set_serving(target, reason="test")
            continue
        if not registry.servers:
            continue
        sid = draw(st.sampled_from([s.id for s in registry.servers]))
        if step == "state":
            registry.set_state(sid, draw(st.sampled_from(STATES)), reason="test")
        else:
            registry.status(sid).latency = draw(st.none() | st.floats(0, 1))
    return registry


@settings(max_examples=400, deadline=None)
@given(registries())
def test_first_choice_is_the_first_candidate(registry: ServerRegistry) -> None:
    ranked = candidates(registry, frozenset())
    fast = first_choice(registry)
    if fast is not None:
        assert ranked
        assert ranked[0] == fast
    # The fast path declines only where the serving server is not what comes first.
    serving = registry.serving
    if ranked and serving is not None and ranked[0] == serving.id:
        down = registry.status(serving.id).state is ServerState.DOWN
        assert fast == serving.id or (down and registry.config.failover.auto_switch)


@settings(max_examples=400, deadline=None)
@given(registries(), st.sets(st.sampled_from(IDS)))
def test_pick_backend_equals_the_walk_over_candidates(
    registry: ServerRegistry, missing: set[str]
) -> None:
    pool = {sid: FakeBackend(sid) for sid in IDS if sid not in missing}
    expected = next((pool[sid] for sid in candidates(registry, frozenset()) if sid in pool), None)
    assert pick_backend(registry, pool, frozenset()) == expected


@settings(max_examples=300, deadline=None)
@given(registries())
def test_serving_is_the_configured_server_of_serving_id(registry: ServerRegistry) -> None:
    serving_id = registry.serving_id
    expected = registry.config.server(serving_id) if serving_id else None
    assert registry.serving is expected
    for server in registry.config.servers:
        assert registry.server(server.id) is registry.config.server(server.id)
    assert registry.server("gone") is None
    assert registry.server(None) is None
