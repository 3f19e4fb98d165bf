"""Rack-striped, balanced placement; leadership failover; drain completion."""

from __future__ import annotations

from collections import Counter

from felix.metadata.commands import (
    CreateStream,
    DeleteStream,
    DrainNode,
    MoveShardLeader,
    NodeHealth,
    RegisterNode,
    SetConfig,
    UndrainNode,
)
from felix.metadata.placement import NodeLoad, choose_leader, place_shards

from .harness import cluster, with_stream

SIX = {1: "a", 2: "a", 3: "b", 4: "b", 5: "c", 6: "c"}


def test_replicas_span_distinct_racks() -> None:
    h = with_stream(cluster(SIX), "s", 30)
    for shard in h.state.shards.values():
        assert len({SIX[n] for n in shard.replicas}) == 3, shard


def test_replicas_and_leaders_are_balanced() -> None:
    h = with_stream(cluster(SIX), "s", 30)
    replicas = Counter(n for s in h.state.shards.values() for n in s.replicas)
    leaders = Counter(s.leader for s in h.state.shards.values())
    assert set(replicas.values()) == {15}
    assert set(leaders.values()) == {5}


def test_balance_accounts_for_existing_load() -> None:
    h = with_stream(cluster({1: "a", 2: "b", 3: "c"}), "s", 3, rf=1)
    h.ok(RegisterNode(4, "h:4", "d"))
    h.ok(NodeHealth(4, "up"))
    h.ok(CreateStream("t", 1, "acme", replication_factor=1))
    assert h.state.shards["t/0"].replicas == (4,)


def test_rack_awareness_can_be_turned_off() -> None:
    h = cluster(SIX)
    h.ok(SetConfig("rack_aware_placement", False))
    h.ok(CreateStream("s", 1, "acme", replication_factor=2))
    assert h.state.shards["s/0"].replicas == (1, 2)


def test_placement_skips_nodes_that_are_not_live() -> None:
    h = cluster(SIX)
    h.ok(DrainNode(1))
    h.ok(NodeHealth(2, "down"))
    h.ok(RegisterNode(7, "h:7", "a"))  # registered but never up: fenced
    h.ok(CreateStream("s", 12, "acme"))
    used = {n for s in h.state.shards.values() for n in s.replicas}
    assert used == {3, 4, 5, 6}


def test_place_shards_is_deterministic_regardless_of_input_order() -> None:
    def loads() -> list[NodeLoad]:
        return [NodeLoad(i, "abc"[i % 3], i % 2, 0) for i in range(9)]

    forward = place_shards(loads(), 20, 3, 100, True)
    backward = place_shards(list(reversed(loads())), 20, 3, 100, True)
    assert forward == backward


def test_choose_leader_rules() -> None:
    live = {2, 3}
    up = {1, 2, 3}

    def choose(replicas: tuple[int, ...], leader: int | None) -> int | None:
        return choose_leader(replicas, leader, live.__contains__, up.__contains__)

    assert choose((1, 2, 3), 3) == 3  # a live leader stays
    assert choose((1, 2, 3), 1) == 2  # draining leader -> first live replica
    assert choose((1, 4), 1) == 1  # draining, no live replica: keeps it
    assert choose((4, 1), 4) == 1  # down leader, only a draining one up
    assert choose((4, 5), 4) is None  # nothing up: offline


def test_node_down_moves_leadership_to_another_live_replica() -> None:
    h = with_stream(cluster(SIX), "s", 12)
    led = [k for k, s in h.state.shards.items() if s.leader == 1]
    delta = h.ok(NodeHealth(1, "down"))
    assert {c.key for c in delta.changes if c.kind == "shard"} == set(led)
    for key in led:
        shard = h.state.shards[key]
        assert shard.leader == next(r for r in shard.replicas if r != 1)
        assert shard.leader_epoch == 2
    assert h.state.leader_count(1) == 0


def test_leaderless_shard_recovers_when_a_replica_returns() -> None:
    h = with_stream(cluster({1: "a", 2: "b"}), "s", 1, rf=2)
    h.ok(NodeHealth(1, "down"))
    h.ok(NodeHealth(2, "down"))
    assert h.state.shards["s/0"].leader is None
    h.ok(NodeHealth(2, "up"))
    assert h.state.shards["s/0"].leader == 2


def test_reregistration_fences_and_moves_leadership() -> None:
    h = with_stream(cluster(SIX), "s", 6)
    assert h.state.leader_count(1) > 0
    h.ok(RegisterNode(1, "10.0.0.1:9092", "a"))
    assert h.state.leader_count(1) == 0


def test_drain_moves_leadership_and_completes() -> None:
    h = with_stream(cluster(SIX), "s", 12)
    delta = h.ok(DrainNode(3))
    node = h.state.nodes[3]
    assert node.draining and h.state.leader_count(3) == 0
    assert node.drained_version == delta.version  # completed by this very entry
    assert any(c.kind == "shard" for c in delta.changes)


def test_drain_waits_while_no_other_replica_can_lead() -> None:
    h = with_stream(cluster({1: "a", 2: "b"}), "s", 1, rf=2)
    leader = h.state.shards["s/0"].leader
    assert leader is not None
    other = 3 - leader
    h.ok(NodeHealth(other, "down"))
    h.reject(DrainNode(leader), match="s/0; move replicas first, or use --force")
    h.ok(DrainNode(leader, force=True))  # the operator knows better
    assert h.state.shards["s/0"].leader == leader  # never make a shard unavailable
    assert h.state.nodes[leader].drained_version is None
    delta = h.ok(NodeHealth(other, "up"))
    assert h.state.shards["s/0"].leader == other
    assert h.state.nodes[leader].drained_version == delta.version


def test_drain_completes_when_the_last_led_stream_is_deleted() -> None:
    h = with_stream(cluster({1: "a"}), "s", 2, rf=1)
    h.reject(DrainNode(1), match="2 shard")  # no other replica can lead
    h.ok(DrainNode(1, force=True))
    assert h.state.nodes[1].drained_version is None
    delta = h.ok(DeleteStream("s"))
    assert h.state.nodes[1].drained_version == delta.version


def test_drain_is_undone_by_undrain_and_survives_a_restart() -> None:
    h = with_stream(cluster(SIX), "s", 6)
    h.ok(DrainNode(2))
    h.ok(RegisterNode(2, "10.0.0.2:9092", "a"))
    assert h.state.nodes[2].draining
    h.ok(NodeHealth(2, "up"))
    h.reject(MoveShardLeader(next(iter(h.state.node_shards(2))), 2), match="not live")
    h.ok(UndrainNode(2))
    assert h.state.nodes[2].drained_version is None
    key = h.state.node_shards(2)[0]
    h.ok(MoveShardLeader(key, 2))
    assert h.state.shards[key].leader == 2


def test_shards_per_node_max_limits_placement() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    h.ok(SetConfig("shards_per_node_max", 2))
    h.ok(CreateStream("s", 2, "acme"))
    h.reject(CreateStream("t", 1, "acme"), match="shards_per_node_max=2")
