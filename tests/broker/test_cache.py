"""The broker's pure cache: snapshots, deltas, gaps, digests, routing and ownership.

Deltas come from the real `MetadataState` (through `tests/metadata/harness.py`), so the
cache is checked against exactly what the control plane would send.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest

from felix.broker.cache import (
    AssemblyError,
    CacheError,
    DeltaAssembler,
    DigestMismatch,
    GapError,
    MetadataCache,
    Ownership,
    OwnershipEvent,
    OwnershipLedger,
    RecordError,
    ShardId,
    ShardRole,
    SnapshotAssembler,
)
from felix.metadata.commands import (
    CreateStream,
    DeleteStream,
    DrainNode,
    MoveShardLeader,
    NodeHealth,
    RegisterNode,
    SetConfig,
    UndrainNode,
    UpdateStream,
)
from felix.metadata.digest import digest_bytes
from felix.metadata.view import view_of
from felix.proto.client_messages import Change, Delta, DeltaPart, SnapshotChunk
from felix.server.watch_hub import split_delta
from tests.metadata.harness import Harness, cluster


def snapshot_of(h: Harness, node_id: int | None = 1) -> MetadataCache:
    cache = MetadataCache(node_id)
    cache.apply_snapshot(h.state.version, h.state.digest, h.records())
    return cache


def expected_routing(h: Harness) -> dict[ShardId, str | None]:
    routes: dict[ShardId, str | None] = {}
    for shard in h.state.shards.values():
        leader = h.state.nodes.get(shard.leader) if shard.leader is not None else None
        routes[(shard.stream, shard.index)] = leader.address if leader else None
    return routes


def expected_owned(h: Harness, me: int) -> dict[ShardId, ShardRole]:
    owned: dict[ShardId, ShardRole] = {}
    for shard in h.state.shards.values():
        if shard.leader == me:
            owned[(shard.stream, shard.index)] = ShardRole.LEADER
        elif me in shard.replicas:
            owned[(shard.stream, shard.index)] = ShardRole.REPLICA
    return owned


def check_equal(cache: MetadataCache, h: Harness) -> None:
    state = h.state
    assert cache.version == state.version
    assert cache.digest_bytes == state.digest
    assert cache.records == view_of(state.records())
    assert cache.nodes == state.nodes
    assert cache.streams == state.streams
    assert cache.tenants == state.tenants
    assert cache.config == {k[1]: v["value"] for k, v in cache.records.items() if k[0] == "config"}
    assert {f"{s}/{i}": v for (s, i), v in cache.shards.items()} == state.shards
    assert cache.routing == expected_routing(h)
    if cache.node_id is not None:
        assert {k: o.role for k, o in cache.owned.items()} == expected_owned(h, cache.node_id)
    assert cache.recompute_digest() == cache.digest and cache.hashes_consistent()


def test_snapshot_then_deltas_track_the_state() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    cache = snapshot_of(h)
    check_equal(cache, h)
    delta = h.ok(CreateStream("orders", 4, "acme", replication_factor=2))
    update = cache.apply_delta(delta)
    assert update.version == delta.version and update.changes == delta.changes
    assert sorted(update.routes) == [("orders", i) for i in range(4)]
    check_equal(cache, h)
    assert cache.streams["orders"].shards == 4
    assert cache.shards_of("orders")[2].index == 2
    leader = cache.shards[("orders", 0)].leader
    assert cache.leader_address("orders", 0) == f"10.0.0.{leader}:9092"
    assert cache.node(2) is not None and cache.node(2).rack == "b"  # type: ignore[union-attr]
    cache.apply_delta(h.ok(SetConfig("streams_max", 7)))
    assert cache.config["streams_max"] == 7
    check_equal(cache, h)


def test_a_delta_must_follow_the_version() -> None:
    h = cluster({1: "a", 2: "b"})
    empty = MetadataCache(1)
    first = h.deltas[0]
    with pytest.raises(GapError):
        empty.apply_delta(first)  # no view yet
    cache = snapshot_of(h)
    d1 = h.ok(CreateStream("a", 1, "acme", replication_factor=1))
    d2 = h.ok(CreateStream("b", 1, "acme", replication_factor=1))
    with pytest.raises(GapError) as info:
        cache.apply_delta(d2)  # skips d1
    assert info.value.version == d1.prev_version
    cache.apply_delta(d1)
    with pytest.raises(GapError):
        cache.apply_delta(d1)  # a duplicate
    cache.apply_delta(d2)
    check_equal(cache, h)


def test_a_digest_mismatch_applies_nothing() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    cache = snapshot_of(h)
    h.ok(CreateStream("orders", 3, "acme"))
    cache.apply_delta(h.deltas[-1])
    good = h.ok(UpdateStream("orders", shards=5))
    bad = Delta(good.prev_version, good.version, digest_bytes(12345), good.changes)
    before = (dict(cache.records), dict(cache.routing), dict(cache.owned), cache.digest)
    with pytest.raises(DigestMismatch) as info:
        cache.apply_delta(bad)
    assert info.value.expected == digest_bytes(12345)
    assert before == (dict(cache.records), dict(cache.routing), dict(cache.owned), cache.digest)
    assert cache.version == good.prev_version and cache.hashes_consistent()
    cache.apply_delta(good)  # the real one still applies
    check_equal(cache, h)


def test_a_snapshot_with_a_wrong_digest_is_refused() -> None:
    h = cluster({1: "a"})
    cache = snapshot_of(h)
    h.ok(NodeHealth(1, "down"))
    with pytest.raises(DigestMismatch):
        cache.apply_snapshot(h.state.version, digest_bytes(1), h.records())
    assert cache.version == h.state.version - 1  # unchanged
    cache.apply_delta(h.deltas[-1])
    check_equal(cache, h)


def test_routing_follows_leaders_addresses_and_deletes() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    h.ok(CreateStream("s", 2, "acme"))
    cache = snapshot_of(h)
    shard = cache.shards[("s", 0)]
    other = next(r for r in shard.replicas if r != shard.leader)
    update = cache.apply_delta(h.ok(MoveShardLeader("s/0", other)))
    assert update.routes == (("s", 0),)
    assert cache.routing[("s", 0)] == f"10.0.0.{other}:9092"
    # The leader re-registers at a new address: every shard it leads is re-routed.
    update = cache.apply_delta(h.ok(RegisterNode(other, "new-host:1", "b")))
    check_equal(cache, h)
    led = {k for k, s in cache.shards.items() if s.leader == other}
    assert set(update.routes) >= {k for k in led if cache.routing[k] == "new-host:1"}
    for cmd in (NodeHealth(other, "up"), DeleteStream("s")):
        cache.apply_delta(h.ok(cmd))
        check_equal(cache, h)
    assert cache.routing == {}


def test_ownership_events_per_delta() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    cache = snapshot_of(h, node_id=1)
    update = cache.apply_delta(h.ok(CreateStream("s", 3, "acme", replication_factor=2)))
    started = {e.shard: e for e in update.ownership}
    assert all(e.started and e.previous is None for e in started.values())
    assert {k: e.role for k, e in started.items()} == expected_owned(h, 1)
    led = [k for k, e in started.items() if e.role is ShardRole.LEADER]
    assert led, "node 1 leads something"
    # Other nodes' changes that do not touch our shards produce no events.
    assert cache.apply_delta(h.ok(NodeHealth(3, "up"))).ownership == ()
    # Draining moves leadership away: leader -> replica, never a stop.
    update = cache.apply_delta(h.ok(DrainNode(1)))
    moved = {e.shard: e for e in update.ownership}
    assert set(moved) == set(led)
    assert all(
        e.previous is ShardRole.LEADER and e.role is ShardRole.REPLICA for e in moved.values()
    )
    node = cache.node()
    assert node is not None and node.draining and node.drained_version == cache.version
    # Undrain and take a leadership back: replica -> leader, with the new epoch.
    cache.apply_delta(h.ok(UndrainNode(1)))
    shard = led[0]
    update = cache.apply_delta(h.ok(MoveShardLeader(f"{shard[0]}/{shard[1]}", 1)))
    (event,) = [e for e in update.ownership if e.shard == shard]
    assert (event.previous, event.role) == (ShardRole.REPLICA, ShardRole.LEADER)
    assert event.leader_epoch == cache.shards[shard].leader_epoch
    update = cache.apply_delta(h.ok(DeleteStream("s")))
    assert {e.shard for e in update.ownership if e.stopped} == set(expected_owned_before(started))
    assert cache.owned == {}
    check_equal(cache, h)


def expected_owned_before(started: dict[ShardId, OwnershipEvent]) -> list[ShardId]:
    return list(started)


def test_ownership_across_a_snapshot_replace_is_the_diff() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    h.ok(CreateStream("keep", 3, "acme"))  # rf 3: node 1 owns every shard
    h.ok(CreateStream("gone", 2, "acme"))
    cache = snapshot_of(h, node_id=1)
    consumer = {k: o.role for k, o in cache.owned.items()}
    before = dict(cache.owned)
    # While disconnected: a drain moves leaderships, a stream goes, one appears.
    h.ok(DrainNode(1))
    h.ok(DeleteStream("gone"))
    h.ok(UndrainNode(1))
    h.ok(CreateStream("new", 2, "acme"))
    update = cache.apply_snapshot(h.state.version, h.state.digest, h.records())
    assert update.replaced
    for event in update.ownership:
        assert event.version == h.state.version
        assert (consumer.get(event.shard)) == event.previous  # continues what was seen
        if event.role is None:
            del consumer[event.shard]
        else:
            consumer[event.shard] = event.role
    assert consumer == expected_owned(h, 1)
    unchanged = [k for k in before if k in cache.owned and before[k].same_as(cache.owned[k])]
    assert not {e.shard for e in update.ownership} & set(unchanged)  # nothing repeated
    check_equal(cache, h)
    # The same snapshot again changes nothing and says so.
    again = cache.apply_snapshot(h.state.version, h.state.digest, h.records())
    assert again.ownership == () and again.routes == ()


def project(owned: dict[ShardId, Ownership]) -> dict[ShardId, tuple[ShardRole, int | None]]:
    """What ownership events promise: the role, and the epoch while leading."""
    return {
        k: (o.role, o.leader_epoch if o.role is ShardRole.LEADER else None)
        for k, o in owned.items()
    }


def test_random_histories_keep_cache_and_ownership_exact() -> None:
    rng = random.Random(7)
    h = cluster({n: f"r{n % 3}" for n in range(1, 7)})
    caches = {me: snapshot_of(h, me) for me in (1, 4)}
    seen = {me: {k: o for k, o in c.owned.items()} for me, c in caches.items()}
    streams: list[str] = []
    for step in range(300):
        roll = rng.random()
        node = rng.randrange(1, 7)
        if roll < 0.25:
            name = f"s{step}"
            cmd: object = CreateStream(name, rng.randrange(1, 5), "acme", rng.randrange(1, 4))
            streams.append(name)
        elif roll < 0.35 and streams:
            cmd = DeleteStream(streams.pop(rng.randrange(len(streams))))
        elif roll < 0.45 and streams:
            cmd = UpdateStream(rng.choice(streams), shards=rng.randrange(1, 8))
        elif roll < 0.6:
            cmd = NodeHealth(node, rng.choice(["up", "down"]))
        elif roll < 0.7:
            cmd = DrainNode(node) if rng.random() < 0.5 else UndrainNode(node)
        elif roll < 0.8 and h.state.shards:
            key = rng.choice(sorted(h.state.shards))
            cmd = MoveShardLeader(key, rng.choice(h.state.shards[key].replicas))
        elif roll < 0.85:
            cmd = RegisterNode(node, f"host{step}:1", f"r{node % 3}")
        else:
            cmd = SetConfig("streams_max", rng.randrange(50, 100))
        delta = h.apply(cmd).delta  # type: ignore[arg-type]
        for me, cache in caches.items():
            for event in cache.apply_delta(delta).ownership:
                known = seen[me].get(event.shard)
                assert (known.role if known else None) == event.previous
                now = None if event.role is None else Ownership(event.role, event.leader_epoch)
                assert not (now.same_as(known) if now else known is None), "a no-op event"
                if now is None:
                    del seen[me][event.shard]
                else:
                    seen[me][event.shard] = now
            assert project(seen[me]) == project(cache.owned)
        if step % 50 == 0:
            for cache in caches.values():
                check_equal(cache, h)
    for cache in caches.values():
        check_equal(cache, h)


def test_a_split_delta_applies_only_at_its_last_part() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    cache = snapshot_of(h)
    delta = h.ok(CreateStream("big", 40, "acme"))
    parts = split_delta(delta, 600)
    assert len(parts) > 2
    assembler = DeltaAssembler()
    for part in parts[:-1]:
        assert assembler.add(part) is None
        assert cache.version == delta.prev_version and "big" not in cache.streams
    whole = assembler.add(parts[-1])
    assert whole == delta and not assembler.pending
    cache.apply_delta(whole)
    check_equal(cache, h)
    # Out of order or mixed versions are refused (and the partial delta dropped).
    assert assembler.add(parts[0]) is None
    with pytest.raises(AssemblyError):
        assembler.add(parts[2])
    assert not assembler.pending
    other = DeltaPart(9, 10, delta.digest, 1, True, ())
    assembler.add(parts[0])
    with pytest.raises(AssemblyError):
        assembler.add(other)


def test_snapshot_chunks_assemble_at_the_end_marker() -> None:
    h = cluster({1: "a", 2: "b"})
    records = h.records()
    v, d = h.state.version, h.state.digest
    chunks = [
        SnapshotChunk(None, v, d, seq, tuple(records[seq * 2 : seq * 2 + 2]), last)
        for seq, last in ((0, False), (1, False), (2, True))
    ]
    records_tail = records[6:]
    chunks[-1] = SnapshotChunk(None, v, d, 2, tuple(records[4:6] + records_tail), True)
    assembler = SnapshotAssembler()
    assert assembler.add(chunks[0]) is None and assembler.add(chunks[1]) is None
    assert assembler.pending
    whole = assembler.add(chunks[2])
    assert whole is not None and not assembler.pending
    version, digest, stage = whole
    assert (version, digest) == (v, d) and stage.records == view_of(records)
    cache = MetadataCache(1)
    cache.apply_snapshot(version, digest, stage)
    check_equal(cache, h)
    with pytest.raises(CacheError):  # a stage is applied once
        MetadataCache(1).apply_snapshot(version, digest, stage)
    with pytest.raises(AssemblyError):
        assembler.add(chunks[1])
    # A chunk of another version in the middle drops what was staged.
    assembler.add(chunks[0])
    with pytest.raises(AssemblyError):
        assembler.add(SnapshotChunk(None, v + 1, d, 1, chunks[1].records, False))
    assert not assembler.pending


def test_a_staged_snapshot_with_a_wrong_digest_changes_nothing() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    h.ok(CreateStream("s", 4, "acme"))
    cache = snapshot_of(h)
    h.ok(DrainNode(1))
    assembler = SnapshotAssembler()
    whole = assembler.add(SnapshotChunk(None, h.state.version, digest_bytes(7), 0,
                                        tuple(h.records()), True))  # fmt: skip
    assert whole is not None
    before = (dict(cache.records), dict(cache.routing), dict(cache.owned), cache.version)
    with pytest.raises(DigestMismatch):
        cache.apply_snapshot(*whole)
    assert before == (dict(cache.records), dict(cache.routing), dict(cache.owned), cache.version)
    cache.apply_delta(h.deltas[-1])
    check_equal(cache, h)


@pytest.mark.parametrize("node_id", [None, 1, 2])
def test_snapshot_records_in_any_order_give_the_same_view(node_id: int | None) -> None:
    """Shards before the nodes that lead them (and any other order) route the same."""
    h = cluster({1: "a", 2: "b", 3: "c"})
    h.ok(CreateStream("s", 6, "acme", replication_factor=2))
    h.ok(NodeHealth(3, "down"))
    records = h.records()
    for seed in range(5):
        shuffled = list(records)
        random.Random(seed).shuffle(shuffled)
        if seed == 0:
            shuffled.sort(key=lambda c: c.kind != "shard")  # every shard first
        cache = MetadataCache(node_id)
        update = cache.apply_snapshot(h.state.version, h.state.digest, shuffled)
        check_equal(cache, h)
        assert update.routes == tuple(sorted(cache.routing))
        assert [e.shard for e in update.ownership] == sorted(cache.owned)


def test_a_malformed_or_repeated_snapshot_record_changes_nothing() -> None:
    h = cluster({1: "a", 2: "b"})
    h.ok(CreateStream("s", 2, "acme", replication_factor=2))
    cache = snapshot_of(h)
    records = h.records()
    shard = next(c for c in records if c.kind == "shard")
    assert shard.value is not None
    bad_schema = Change("shard", shard.key, {**shard.value, "extra": 1})
    bad_key = Change("shard", "s/x", shard.value)
    bad_node = Change("node", "one", next(c.value for c in records if c.kind == "node"))
    no_value = Change("config", "c", {"name": "c"})
    before = (dict(cache.records), dict(cache.shards), dict(cache.routing), cache.version)
    for bad in (bad_schema, bad_key, bad_node, no_value):
        with pytest.raises(CacheError):
            cache.apply_snapshot(h.state.version, h.state.digest, [*records, bad])
    with pytest.raises(AssemblyError):  # the same record twice
        cache.apply_snapshot(h.state.version, h.state.digest, [*records, shard])
    assert before == (dict(cache.records), dict(cache.shards), dict(cache.routing), cache.version)
    # Deleted records (value None) in a snapshot are skipped.
    again = cache.apply_snapshot(
        h.state.version, h.state.digest, [*records, Change("stream", "ghost", None)]
    )
    assert again.routes == () and again.ownership == ()
    check_equal(cache, h)


def test_audit_finds_a_record_changed_behind_the_caches_back() -> None:
    h = cluster({1: "a", 2: "b"})
    cache = snapshot_of(h)
    assert cache.audit(list(cache.records)) == []
    ident = ("node", "2")
    cache.records[ident]["rack"] = "tampered"
    assert cache.audit(list(cache.records)) == [ident]
    assert cache.recompute_digest() != cache.digest


def event(
    shard: str, prev: ShardRole | None, role: ShardRole | None, epoch: int, v: int
) -> OwnershipEvent:
    return OwnershipEvent((shard, 0), prev, role, epoch, v)


def test_the_ledger_coalesces_per_shard_for_a_slow_consumer() -> None:
    L, R = ShardRole.LEADER, ShardRole.REPLICA
    ledger = OwnershipLedger()
    ledger.push([event("a", None, L, 1, 10), event("b", None, R, 1, 10)])
    assert ledger.pop() == event("a", None, L, 1, 10)  # a fast consumer sees each event
    # Unconsumed: b started then stopped -> nothing; a lost and regained the lead.
    ledger.push([event("b", R, None, 1, 11), event("a", L, R, 2, 11), event("c", None, R, 1, 11)])
    ledger.push([event("a", R, L, 3, 12)])
    assert ledger.take() == [event("a", L, L, 3, 12), event("c", None, R, 1, 11)]
    assert ledger.delivered == {("a", 0): Ownership(L, 3), ("c", 0): Ownership(R, 1)}
    assert ledger.coalesced == 2
    # A replica that flaps back to replica (same role) is no news; order is first change.
    ledger.push([event("c", R, None, 1, 13), event("d", None, L, 1, 13)])
    ledger.push([event("c", None, R, 2, 14)])
    assert ledger.take() == [event("d", None, L, 1, 13)]
    assert ledger.pop() is None and len(ledger) == 0


def test_changes_that_delete_absent_records_are_harmless() -> None:
    h = cluster({1: "a"})
    cache = snapshot_of(h)
    noop = Delta(cache.version or 0, (cache.version or 0) + 1, h.state.digest,
                 (Change("stream", "ghost", None),))  # fmt: skip
    update = cache.apply_delta(noop)
    assert update.routes == () and update.ownership == ()


def test_unverified_deltas_trust_the_digest_and_the_audit_recomputes() -> None:
    h = cluster({1: "a", 2: "b", 3: "c"})
    cache = MetadataCache(1, verify_deltas=False)
    cache.apply_snapshot(h.state.version, h.state.digest, h.records())
    cache.apply_delta(h.ok(CreateStream("s", 3, "acme")))
    check_equal(cache, h)
    assert not cache.hashes_valid and cache.hashes_consistent()
    with pytest.raises(CacheError):  # CacheError: no per-record hashes
        cache.audit([])
    good = h.ok(DrainNode(2))
    cache.apply_delta(Delta(good.prev_version, good.version, digest_bytes(1), good.changes))
    assert not cache.hashes_consistent()  # a lie is caught by the recompute
    cache.verify_deltas = True  # switching back rebuilds the hashes first
    cache.digest = cache.recompute_digest()
    cache.apply_delta(h.ok(UndrainNode(2)))
    check_equal(cache, h)


def test_a_dropped_cache_is_freed_without_the_cyclic_gc() -> None:
    """No reference cycle through the cache: its whole view goes as soon as it is
    dropped, not at some later full collection (which would pay for it then)."""
    import gc
    import weakref

    h = cluster({1: "a", 2: "b", 3: "c"})
    h.ok(CreateStream("s", 4, "acme"))
    cache = snapshot_of(h)
    cache.apply_delta(h.ok(DrainNode(1)))
    gone = weakref.ref(cache)
    gc.disable()
    try:
        del cache
        assert gone() is None
    finally:
        gc.enable()


def test_a_delta_with_one_malformed_record_changes_nothing() -> None:
    """The records are checked before anything moves: a good change ahead of a bad one
    is not applied either (no version, records, tables, routing or ownership events)."""
    h = cluster({1: "a", 2: "b", 3: "c"})
    h.ok(CreateStream("s", 3, "acme"))
    cache = snapshot_of(h)
    good = h.ok(MoveShardLeader("s/0", next(r for r in h.state.shards["s/0"].replicas
                                            if r != h.state.shards["s/0"].leader)))  # fmt: skip
    node = next(c for c in h.records() if c.kind == "node")
    assert node.value is not None
    for bad_value, problem in (
        ({**node.value, "epoch": -1}, "field epoch"),
        ({**node.value, "state": "sleepy"}, "field state"),
        ({**node.value, "id": "1"}, "field id"),
        ({k: v for k, v in node.value.items() if k != "rack"}, "fields missing ['rack']"),
    ):
        bad = Delta(good.prev_version, good.version, good.digest,
                    (*good.changes, Change("node", node.key, bad_value)))  # fmt: skip
        before = (cache.version, cache.digest, dict(cache.records), dict(cache.shards),
                  dict(cache.nodes), dict(cache.routing), dict(cache.owned))  # fmt: skip
        with pytest.raises(RecordError, match=re.escape(f"node record '{node.key}': {problem}")):
            cache.apply_delta(bad)
        assert before == (cache.version, cache.digest, dict(cache.records), dict(cache.shards),
                          dict(cache.nodes), dict(cache.routing), dict(cache.owned))  # fmt: skip
    for kind, key in (("bogus", "x"), ("node", "07"), ("shard", "s/x")):
        with pytest.raises(RecordError):
            cache.apply_delta(replace(good, changes=(*good.changes, Change(kind, key, None))))
    with pytest.raises(CacheError, match="does not advance"):
        cache.apply_delta(replace(good, version=good.prev_version))
    cache.apply_delta(good)
    check_equal(cache, h)
