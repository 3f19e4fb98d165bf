"""Properties of the replica planner over random states (issue 13)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from felix.metadata.commands import (
    CreateStream,
    DecommissionNode,
    ExpireNode,
    NodeHealth,
    RegisterNode,
    RemoveNode,
    ReplicaReady,
    UpdateStream,
)
from felix.metadata.planner import (
    BrokerInfo,
    PlanInput,
    PlannerLimits,
    apply_moves,
    commands_for,
    input_of,
    limits_of,
    plan,
)

from .harness import Harness, cluster


@st.composite
def states(draw: st.DrawFn, *, all_live: bool = False) -> PlanInput:
    count = draw(st.integers(2, 30))
    racks = draw(st.integers(1, 4))
    brokers = {}
    for b in range(1, count + 1):
        kind = (
            "live" if all_live else draw(st.sampled_from(["live", "live", "live", "down", "gone"]))
        )
        brokers[b] = BrokerInfo(
            rack=f"r{draw(st.integers(0, racks - 1))}",
            live=kind == "live",
            evacuate=kind == "gone",
            why="is down past the timeout" if kind == "gone" else "",
        )
    shards = {}
    for n in range(draw(st.integers(0, 300))):
        rf = draw(st.integers(1, min(3, count)))
        replicas = draw(st.permutations(range(1, count + 1)))[:rf]
        shards[f"s/{n}"] = tuple(replicas)
    return PlanInput(brokers, shards)


LIMITS = st.builds(
    PlannerLimits,
    moves_per_node_max=st.integers(1, 4),
    moves_cluster_max=st.integers(1, 64),
    skew_max=st.integers(1, 3),
    rack_aware=st.booleans(),
)


def live_count(given: PlanInput, replicas: tuple[int, ...]) -> int:
    return sum(1 for b in replicas if given.brokers[b].live and not given.brokers[b].evacuate)


@settings(max_examples=200, deadline=None)
@given(given=states(), limits=LIMITS)
def test_a_plan_is_bounded_safe_and_deterministic(given: PlanInput, limits: PlannerLimits) -> None:
    steps = plan(given, limits)
    assert steps == plan(given, limits)  # same state in, same plan out
    moves = steps.moves
    assert len(moves) <= limits.moves_cluster_max
    assert len(steps.leader_moves) <= limits.leader_moves_max
    per_node: dict[int, int] = {}
    for move in moves:
        assert move.add is not None and move.remove is not None  # no RF given: swaps only
        gone = given.brokers[move.remove]
        counted = [move.add] if gone.evacuate and not gone.live else [move.add, move.remove]
        for b in counted:  # removing a copy from a dead broker costs it nothing
            per_node[b] = per_node.get(b, 0) + 1
        assert given.brokers[move.add].live and not given.brokers[move.add].evacuate
        assert move.reason
    for step in steps.leader_moves:
        assert given.brokers[step.node].live and step.reason
    assert all(n <= limits.moves_per_node_max for n in per_node.values())
    assert len({m.shard for m in moves}) == len(moves)  # one move per shard at a time
    after = apply_moves(given.shards, moves)
    for key, replicas in after.items():
        assert len(set(replicas)) == len(replicas), (key, replicas)  # never two on one broker
        assert live_count(given, replicas) >= live_count(given, given.shards[key])


@settings(max_examples=100, deadline=None)
@given(given=states(all_live=True), skew=st.integers(1, 3))
def test_repeated_passes_converge_within_the_skew(given: PlanInput, skew: int) -> None:
    limits = PlannerLimits(
        moves_per_node_max=2, moves_cluster_max=32, skew_max=skew, rack_aware=False
    )
    shards = dict(given.shards)
    for _ in range(400):
        moves = plan(PlanInput(given.brokers, shards), limits).moves
        if not moves:
            break
        shards = apply_moves(shards, moves)
    else:
        raise AssertionError("no convergence in 400 passes")
    load = {b: 0 for b in given.brokers}
    for replicas in shards.values():
        for b in replicas:
            load[b] += 1
    # Within the skew, unless every remaining move would put two replicas on one broker.
    spread = max(load.values()) - min(load.values())
    if spread > skew:
        most = max(load, key=lambda b: load[b])
        least = min(load, key=lambda b: load[b])
        assert all(least in r for r in shards.values() if most in r)


@settings(max_examples=100, deadline=None)
@given(given=states(), limits=LIMITS, cap=st.integers(1, 40))
def test_a_plan_respects_capacity_and_never_worsens_rack_spread(
    given: PlanInput, limits: PlannerLimits, cap: int
) -> None:
    limits = PlannerLimits(
        limits.moves_per_node_max, limits.moves_cluster_max, limits.skew_max, cap, True
    )
    steps = plan(given, limits)
    load: dict[int, int] = {b: 0 for b in given.brokers}
    for replicas in given.shards.values():
        for b in _replicas(replicas):
            load[b] += 1
    for move in steps.moves:
        assert move.add is not None
        load[move.add] += 1  # the leaving copy stays until the move completes
        assert load[move.add] <= cap
    after = apply_moves(given.shards, steps.moves)

    def racks(replicas: tuple[int, ...]) -> int:
        return len({given.brokers[b].rack for b in replicas})

    for key, replicas in after.items():
        assert racks(replicas) >= racks(_replicas(given.shards[key])) or any(
            given.brokers[b].evacuate for b in _replicas(given.shards[key])
        )


def _replicas(value: object) -> tuple[int, ...]:
    assert isinstance(value, tuple)
    return value


# --- against the real state machine: plan, propose, apply, report ready -------------------


def run_passes(h: Harness, passes_max: int = 500) -> int:
    """Plan on the state, apply every command (each must be accepted), report every
    catching-up replica ready; until a pass has nothing to do.  Checks the bounds and
    the live-replica floor after every entry."""
    limits = limits_of(h.state)
    floor = {key: live_caught_up(h, key) for key in h.state.shards}
    for passes in range(passes_max):
        steps = plan(input_of(h.state), limits_of(h.state))
        ready = [(key, r) for key, s in sorted(h.state.shards.items()) for r in s.catching_up]
        if not len(steps) and not ready:
            return passes
        for command in [*commands_for(h.state, steps), *(ReplicaReady(k, r) for k, r in ready)]:
            h.ok(command)
            assert len(h.state.reassigning) <= limits.moves_cluster_max
            up = [n for n in h.state.nodes if h.state._is_up(n)]  # removing from a dead one is free
            assert all(h.state.moves_of(n) <= limits.moves_per_node_max for n in up)
            for key in h.state.reassigning:
                assert live_caught_up(h, key) >= min(floor[key], 2), key
    raise AssertionError(f"no convergence in {passes_max} passes")


def live_caught_up(h: Harness, key: str) -> int:
    s = h.state.shards[key]
    return sum(1 for r in s.caught_up() if h.state._is_live(r))


def skews(h: Harness) -> tuple[int, int]:
    live = [n.id for n in h.state.nodes.values() if n.accepts_replicas]
    replicas = [len(h.state.node_shards(n)) for n in live]
    leaders = [h.state.leader_count(n) for n in live]
    return max(replicas) - min(replicas), max(leaders) - min(leaders)


def test_ten_brokers_join_fifty_and_the_cluster_rebalances_within_the_bounds() -> None:
    h = cluster({n: f"r{n % 5}" for n in range(1, 51)})
    h.ok(CreateStream("s", 600, "acme", replication_factor=3))
    for n in range(51, 61):
        h.ok(RegisterNode(n, f"10.0.1.{n}:9092", f"r{n % 5}"))
        h.ok(NodeHealth(n, "up"))
    assert all(not h.state.node_shards(n) for n in range(51, 61))
    run_passes(h)
    replica_skew, leader_skew = skews(h)
    assert replica_skew <= h.state._cfg_int("replica_skew_max")
    assert leader_skew <= h.state._cfg_int("leader_skew_max")
    assert all(h.state.node_shards(n) for n in range(51, 61))
    for s in h.state.shards.values():
        assert len(s.replicas) == 3 and s.leader == s.replicas[0] and not s.catching_up
        assert len({h.state.nodes[r].rack for r in s.replicas}) == 3  # spread kept
    h.check_view()


def test_dead_and_decommissioned_brokers_are_emptied_and_rf_changes_are_reached() -> None:
    h = cluster({n: f"r{n % 3}" for n in range(1, 13)})
    h.ok(CreateStream("s", 60, "acme", replication_factor=3))
    for n in (2, 3):
        h.ok(NodeHealth(n, "down"))
        h.ok(ExpireNode(n, h.state.nodes[n].epoch))
    h.ok(DecommissionNode(4))
    h.ok(UpdateStream("s", replication_factor=4))
    run_passes(h)
    for n in (2, 3, 4):
        assert h.state.node_shards(n) == []
    for s in h.state.shards.values():
        assert len(s.replicas) == 4 and all(h.state._is_live(r) for r in s.replicas)
    h.ok(RemoveNode(4))
    h.ok(UpdateStream("s", replication_factor=2))
    run_passes(h)
    assert all(len(s.replicas) == 2 for s in h.state.shards.values())
