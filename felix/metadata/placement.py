"""Deterministic replica placement and leader choice.

Placement is greedy and rack-striped: for each new shard, the leader slot goes to the
candidate with the fewest leaderships (then fewest replicas, then lowest id); every
further slot prefers a rack the shard does not use yet, then the fewest replicas, then
the lowest id.  Loads include the replicas placed earlier in the same command, so one
large create_stream balances by itself.  No randomness and no dict-order dependence:
the same state and command give the same placement on every node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from felix.metadata.errors import rejected
from felix.metadata.model import Shard


@dataclass(slots=True)
class NodeLoad:
    """A live candidate node and its current load (mutated while placing)."""

    id: int
    rack: str
    replicas: int
    leaders: int


def place_shards(
    candidates: Sequence[NodeLoad],
    count: int,
    replication_factor: int,
    replicas_per_node_max: int,
    rack_aware: bool,
) -> list[tuple[int, ...]]:
    """Replica tuples (leader first) for ``count`` new shards, or raise `CommandError`."""
    if replication_factor > len(candidates):
        raise rejected(
            f"replication factor {replication_factor} needs that many live nodes; "
            f"{len(candidates)} are live (up and not draining)"
        )
    ordered = sorted(candidates, key=lambda n: n.id)
    return [
        _place_one(ordered, replication_factor, replicas_per_node_max, rack_aware)
        for _ in range(count)
    ]


def _place_one(
    nodes: Sequence[NodeLoad], rf: int, replicas_max: int, rack_aware: bool
) -> tuple[int, ...]:
    chosen: list[int] = []
    racks: set[str] = set()
    for slot in range(rf):
        rank = _leader_rank if slot == 0 else _follower_rank(racks if rack_aware else set())
        fits = [n for n in nodes if n.id not in chosen and n.replicas < replicas_max]
        if not fits:
            raise rejected(
                f"not enough capacity: every live node holds shards_per_node_max="
                f"{replicas_max} replicas"
            )
        best = min(fits, key=rank)
        chosen.append(best.id)
        racks.add(best.rack)
        best.replicas += 1
        if slot == 0:
            best.leaders += 1
    return tuple(chosen)


def _leader_rank(node: NodeLoad) -> tuple[int, int, int]:
    return (node.leaders, node.replicas, node.id)


def _follower_rank(used_racks: set[str]) -> Callable[[NodeLoad], tuple[bool, int, int]]:
    def rank(node: NodeLoad) -> tuple[bool, int, int]:
        return (node.rack in used_racks, node.replicas, node.id)

    return rank


def choose_leader(
    replicas: Sequence[int],
    leader: int | None,
    is_live: Callable[[int], bool],
    is_up: Callable[[int], bool],
) -> int | None:
    """The leader a shard should have now; returns ``leader`` itself when it may stay.

    A live leader stays (no needless churn).  Otherwise the first live replica in
    replica order takes over; failing that, an up-but-draining leader keeps its shard
    (a drain never makes a shard unavailable); failing that, the first up replica;
    else None (the shard is offline until a replica comes back).
    """
    if leader is not None and is_live(leader):
        return leader
    for replica in replicas:
        if is_live(replica):
            return replica
    if leader is not None and is_up(leader):
        return leader
    return next((r for r in replicas if is_up(r)), None)


def leader_candidates(shard: Shard) -> tuple[int, ...]:
    """The replicas that may lead ``shard``, in preference order: caught-up replicas that
    stay (the target set), then caught-up ones leaving; never one still catching up."""
    waiting = shard.catching_up
    staying = tuple(r for r in shard.target if r not in waiting)
    return staying + tuple(r for r in shard.removing if r not in waiting)
