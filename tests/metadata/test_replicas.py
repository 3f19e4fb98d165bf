"""Reassignment make-before-break and the safety checks, on the pure state machine
(every entry also checked against a broker-style view and the digest by the harness)."""

from __future__ import annotations

from felix.metadata.commands import (
    AckDrain,
    CancelReassignment,
    CreateStream,
    DecommissionNode,
    DrainNode,
    ExpireNode,
    FinishReassignment,
    NodeHealth,
    ReassignShard,
    RegisterNode,
    RemoveNode,
    ReplicaReady,
    SetConfig,
    UndrainNode,
    UpdateStream,
)
from felix.metadata.model import Shard

from .harness import Harness, cluster, with_stream

SIX = {1: "a", 2: "b", 3: "c", 4: "a", 5: "b", 6: "c"}


def shard(h: Harness, key: str = "s/0") -> Shard:
    return h.state.shards[key]


def test_a_move_is_make_before_break_and_every_step_is_one_entry() -> None:
    h = with_stream(cluster(SIX), "s", 1)
    old = shard(h).replicas
    leader = shard(h).leader
    assert leader == old[0]
    new = next(n for n in (4, 5, 6) if n not in old)
    target = (new, *old[1:])  # replace the leader
    h.ok(ReassignShard("s/0", target, reason="test"))
    s = shard(h)
    assert s.replicas == (*target, old[0]) and s.adding == (new,) and s.removing == (old[0],)
    assert s.catching_up == (new,) and s.leader == leader  # nothing left, nothing moved
    assert h.state.reassigning == {"s/0"} and h.state.moves_of(new) == 1
    h.reject(ReassignShard("s/0", old), match="cancel that first")
    h.reject(FinishReassignment("s/0"), match="still catching up")
    epoch = s.leader_epoch
    h.ok(ReplicaReady("s/0", new))
    s = shard(h)  # the leaving leader hands over first, with a new epoch
    assert s.catching_up == () and s.removing == (old[0],) and s.leader in target
    assert s.leader_epoch == epoch + 1 and old[0] in s.replicas
    h.ok(FinishReassignment("s/0"))
    s = shard(h)
    assert s.replicas == target and not s.reassigning and s.leader_epoch == epoch + 1
    assert h.state.reassigning == set() and h.state.moves_of(new) == 0
    assert "s/0" not in h.state.node_shards(old[0])
    h.check_view()


def test_a_move_that_keeps_the_leader_finishes_when_the_new_replica_is_ready() -> None:
    h = with_stream(cluster(SIX), "s", 1)
    old = shard(h).replicas
    new = next(n for n in (4, 5, 6) if n not in old)
    target = (*old[:2], new)
    h.ok(ReassignShard("s/0", target))
    h.ok(ReplicaReady("s/0", new))
    assert shard(h).replicas == target and not shard(h).reassigning
    assert h.ok(ReplicaReady("s/0", new)).changes == ()  # a repeated report is harmless
    h.reject(ReplicaReady("s/0", old[2]), match="is not a replica")


def test_cancel_returns_to_the_original_replicas() -> None:
    h = with_stream(cluster(SIX), "s", 1)
    old = shard(h)
    new = next(n for n in (4, 5, 6) if n not in old.replicas)
    h.ok(ReassignShard("s/0", (new, *old.replicas[1:])))
    h.ok(ReplicaReady("s/0", new))  # leadership moved to a staying replica
    h.ok(CancelReassignment("s/0"))
    s = shard(h)
    assert set(s.replicas) == set(old.replicas) and not s.reassigning and s.catching_up == ()
    assert s.leader in old.replicas
    h.reject(CancelReassignment("s/0"), match="not being reassigned")


def test_a_catching_up_replica_never_leads() -> None:
    h = with_stream(cluster(SIX), "s", 1)
    old = shard(h).replicas
    new = next(n for n in (4, 5, 6) if n not in old)
    h.ok(ReassignShard("s/0", (new, *old[1:])))
    for r in old:
        h.ok(NodeHealth(r, "down"))
    assert shard(h).leader is None  # offline rather than led by an incomplete copy
    h.ok(ReplicaReady("s/0", new))
    assert shard(h).leader == new


def test_moves_are_bounded_per_node_and_per_cluster_unless_forced() -> None:
    h = with_stream(cluster(SIX), "s", 6)
    h.ok(SetConfig("moves_per_node_max", 1))
    h.ok(SetConfig("moves_cluster_max", 2))
    moves = []
    for key, s in sorted(h.state.shards.items()):
        spare = [n for n in SIX if n not in s.replicas]
        moves.append((key, spare[0], s.replicas))
    key0, add0, rep0 = moves[0]
    h.ok(ReassignShard(key0, (add0, *rep0[1:])))
    busy = next(m for m in moves[1:] if rep0[0] in m[2])  # rep0[0] is leaving in move 0
    spare = next(n for n in SIX if n not in busy[2])
    kept = tuple(r for r in busy[2] if r != rep0[0])
    h.reject(ReassignShard(busy[0], (spare, *kept)), match="already has moves_per_node_max=1")
    h.ok(SetConfig("moves_per_node_max", 10))
    h.ok(ReassignShard(moves[1][0], (moves[1][1], *moves[1][2][1:])))
    h.reject(ReassignShard(moves[2][0], (moves[2][1], *moves[2][2][1:])), match="moves_cluster")
    h.ok(ReassignShard(moves[2][0], (moves[2][1], *moves[2][2][1:]), force=True))
    assert len(h.state.reassigning) == 3


def test_a_move_only_adds_brokers_that_accept_replicas() -> None:
    h = with_stream(cluster(SIX), "s", 1)
    old = shard(h).replicas
    new = next(n for n in (4, 5, 6) if n not in old)
    h.ok(DrainNode(new))
    h.reject(ReassignShard("s/0", (new, *old[1:])), match=f"node {new} does not accept")
    h.reject(ReassignShard("s/0", (99, *old[1:])), match="node 99 is not registered")


def test_drain_and_admin_down_are_refused_below_min_live_replicas_unless_forced() -> None:
    h = with_stream(cluster({1: "a", 2: "b", 3: "c"}), "s", 12)  # every node holds all
    h.ok(DrainNode(1))  # 2 live replicas remain of RF 3: allowed
    error = h.reject(DrainNode(2), match="fewer live caught-up replicas")
    assert "s/0, s/1" in error.detail and "and 2 more" in error.detail  # names ten
    h.reject(NodeHealth(2, "down", operator=True), match="marking down node 2")
    h.ok(NodeHealth(2, "down"))  # the failure detector's verdict is a fact, not refused
    h.ok(NodeHealth(2, "up"))
    delta = h.ok(DrainNode(3, force=True))
    assert delta.version == h.state.version  # forced: recorded in the log entry itself
    h.ok(SetConfig("min_live_replicas", 1))
    h.ok(UndrainNode(3))
    h.ok(DrainNode(2))  # one live replica of RF 3 now suffices


def test_controlled_shutdown_completes_only_when_acked() -> None:
    h = with_stream(cluster(SIX), "s", 6)
    h.ok(DrainNode(1))
    node = h.state.nodes[1]
    assert node.drained_version is not None and not node.drain_acked
    h.reject(AckDrain(1, node.drained_version - 1), code="conflict", match="drained_version")
    h.ok(AckDrain(1, node.drained_version))
    assert h.state.nodes[1].drain_acked
    h.ok(UndrainNode(1))
    assert not h.state.nodes[1].drain_acked and h.state.nodes[1].drained_version is None


def test_expiry_marks_a_dead_broker_for_re_replication_and_a_return_clears_it() -> None:
    h = with_stream(cluster(SIX), "s", 6)
    epoch = h.state.nodes[2].epoch
    h.reject(ExpireNode(2, epoch), code="conflict", match="is up")
    h.ok(NodeHealth(2, "down"))
    h.reject(ExpireNode(2, epoch + 1), code="conflict", match="stale")
    h.ok(ExpireNode(2, epoch))
    assert h.state.nodes[2].evacuate == "down_timeout"
    h.ok(NodeHealth(2, "up"))
    assert h.state.nodes[2].evacuate == ""


def test_decommission_then_remove() -> None:
    h = with_stream(cluster({1: "a", 2: "b", 3: "c"}), "s", 2)
    h.reject(DecommissionNode(1), match="no other live broker can take a replica of 2")
    h.ok(RegisterNode(4, "10.0.0.4:9092", "a"))
    h.ok(NodeHealth(4, "up"))
    h.ok(DecommissionNode(1))
    assert h.state.nodes[1].evacuate == "decommission" and not h.state.nodes[1].accepts_replicas
    h.reject(RemoveNode(1), match="still holds 2 replica(s): s/0, s/1")
    for key in ("s/0", "s/1"):
        target = tuple(4 if r == 1 else r for r in shard(h, key).replicas)
        h.ok(ReassignShard(key, target))
        h.ok(ReplicaReady(key, 4))
        if shard(h, key).reassigning:
            h.ok(FinishReassignment(key))
    h.ok(RemoveNode(1))
    assert 1 not in h.state.nodes
    h.ok(CreateStream("t", 2, "acme"))  # placement never picks a removed node
    assert all(1 not in s.replicas for s in h.state.shards.values())


def test_strict_rack_spread_refuses_crowded_placement_unless_forced() -> None:
    h = cluster({1: "a", 2: "a", 3: "b"})
    h.ok(SetConfig("rack_aware_placement_strict", True))
    h.reject(CreateStream("s", 1, "acme", replication_factor=3), match="live racks: a, b")
    h.ok(CreateStream("s", 1, "acme", replication_factor=2))
    h.reject(UpdateStream("s", shards=2, replication_factor=3), match="two replicas")
    h.ok(CreateStream("t", 1, "acme", replication_factor=3, force=True))


def test_replication_factor_may_change_within_live_brokers() -> None:
    h = with_stream(cluster(SIX), "s", 2)
    h.reject(UpdateStream("s", replication_factor=7), match="7 needs that many live brokers")
    h.ok(UpdateStream("s", replication_factor=4))
    assert h.state.streams["s"].replication_factor == 4  # the planner adds the replicas
    assert len(shard(h).replicas) == 3


def test_removing_the_last_caught_up_replica_is_refused() -> None:
    h = with_stream(cluster(SIX), "s", 1)
    old = shard(h).replicas
    spare = [n for n in SIX if n not in old]
    h.ok(ReassignShard("s/0", tuple(spare)))  # all three replaced
    h.ok(ReplicaReady("s/0", spare[0]))
    h.reject(FinishReassignment("s/0"), match="still catching up")
    h.ok(FinishReassignment("s/0", force=True))  # the operator knows better: recorded
    s = shard(h)
    assert s.replicas == tuple(spare) and s.leader == spare[0]
    assert s.catching_up == tuple(spare[1:])
