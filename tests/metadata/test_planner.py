"""Properties of the replica planner over random states (issue 13, work in progress)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from felix.metadata.planner import BrokerInfo, PlanInput, PlannerLimits, apply_moves, plan


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
    moves = plan(given, limits)
    assert moves == plan(given, limits)  # same state in, same plan out
    assert len(moves) <= limits.moves_cluster_max
    per_node: dict[int, int] = {}
    for move in moves:
        for b in (move.add, move.remove):
            per_node[b] = per_node.get(b, 0) + 1
        assert given.brokers[move.add].live and not given.brokers[move.add].evacuate
        assert move.reason
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
        moves = plan(PlanInput(given.brokers, shards), limits)
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
