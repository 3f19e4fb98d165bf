"""Coalescing (felix.server.coalesce): the net effect of many deltas, applied once by a
real broker cache, equals applying every one of them in turn -- records, digest, typed
tables, routing and ownership -- and the cache's own digest check passes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix.broker.cache import DeltaAssembler, MetadataCache
from felix.metadata.digest import digest_bytes
from felix.metadata.model import ConfigEntry, Node, Shard, Stream, Tenant
from felix.metadata.view import RecordView, apply_changes
from felix.proto.client_messages import Change, Delta
from felix.server.coalesce import NetDelta, coalesce
from felix.server.watch_hub import delta_size, split_delta

ME = 2  # the broker whose ownership the caches track

# A small key space, so that records are updated, deleted and recreated often.
NODE_IDS = (1, 2, 3)
SHARD_INDEXES = (0, 1, 2)


def _node(node_id: int, variant: int) -> Change:
    node = Node(node_id, f"10.0.0.{variant % 3}:9000", "r1", "up", variant, variant % 2 == 1, None)
    return Change("node", node.key, node.to_record())


def _shard(index: int, leader: int | None, replicas: tuple[int, ...], epoch: int) -> Change:
    shard = Shard("s", index, replicas, leader, epoch)
    return Change("shard", shard.key, shard.to_record())


def _deleted(kind: str, key: str) -> Change:
    return Change(kind, key, None)


changes = st.one_of(
    st.builds(_node, st.sampled_from(NODE_IDS), st.integers(0, 5)),
    st.builds(
        _shard,
        st.sampled_from(SHARD_INDEXES),
        st.one_of(st.none(), st.sampled_from(NODE_IDS)),
        st.lists(st.sampled_from(NODE_IDS), max_size=3, unique=True).map(tuple),
        st.integers(0, 5),
    ),
    st.builds(
        lambda n, v: Change("config", f"c{n}", ConfigEntry(f"c{n}", v).to_record()),
        st.integers(0, 1),
        st.one_of(st.integers(0, 3), st.booleans(), st.sampled_from(["a", "b"])),
    ),
    st.builds(
        lambda shards: Change("stream", "s", Stream("s", "t", shards, 3, 1000).to_record()),
        st.integers(1, 3),
    ),
    st.just(Change("tenant", "t", Tenant("t", "T", None, None, None).to_record())),
    st.builds(_deleted, st.just("node"), st.sampled_from([str(n) for n in NODE_IDS])),
    st.builds(_deleted, st.just("shard"), st.sampled_from([f"s/{i}" for i in SHARD_INDEXES])),
    st.builds(_deleted, st.sampled_from(["stream", "tenant"]), st.sampled_from(["s", "t"])),
    st.builds(_deleted, st.just("config"), st.sampled_from(["c0", "c1"])),
)
# Empty deltas are versions too (a NOOP or CONFIG entry); a record may change twice in one.
histories = st.tuples(
    st.lists(changes, max_size=8),  # the view the broker starts from
    st.lists(st.lists(changes, max_size=5), min_size=1, max_size=40),
    st.integers(1, 1000),  # the first version
)


def published(
    initial: Sequence[Change], steps: Sequence[Sequence[Change]], first: int
) -> tuple[RecordView, list[Change], bytes, list[Delta]]:
    """What the control plane publishes: the starting view (records, digest), then one
    delta per step, each carrying the digest of the view after it."""
    view: RecordView = {}
    digest = apply_changes(view, initial)
    records = [Change(kind, key, value) for (kind, key), value in view.items()]
    start = digest_bytes(digest)
    deltas = []
    version = first
    for step in steps:
        digest = apply_changes(view, step, digest)
        deltas.append(Delta(version, version + 1, digest_bytes(digest), tuple(step)))
        version += 1
    return view, records, start, deltas


def cache_at(version: int, digest: bytes, records: Sequence[Change]) -> MetadataCache:
    cache = MetadataCache(ME, verify_deltas=True)
    cache.apply_snapshot(version, digest, records)
    return cache


def tables(cache: MetadataCache) -> tuple[object, ...]:
    return (
        cache.version,
        cache.digest,
        cache.records,
        cache.nodes,
        cache.streams,
        cache.shards,
        cache.tenants,
        cache.config,
        cache.routing,
        cache.owned,
    )


@settings(max_examples=300, deadline=None)
@given(histories)
def test_one_net_delta_gives_the_view_of_every_delta_in_turn(
    history: tuple[list[Change], list[list[Change]], int],
) -> None:
    initial, steps, first = history
    view, records, start, deltas = published(initial, steps, first)
    each = cache_at(first, start, records)
    for delta in deltas:
        each.apply_delta(delta)
    net = coalesce(deltas)
    assert (net.prev_version, net.version) == (first, first + len(steps))
    assert net.digest == deltas[-1].digest
    idents = [(c.kind, c.key) for c in net.changes]
    assert len(idents) == len(set(idents)), "one change per record"
    assert set(idents) == {(c.kind, c.key) for step in steps for c in step}

    once = cache_at(first, start, records)
    once.apply_delta(net)  # verify_deltas: the cache recomputes the digest and checks it
    assert once.records == view == each.records
    assert tables(once) == tables(each)
    assert once.recompute_digest() == once.digest and once.hashes_consistent()


@settings(max_examples=150, deadline=None)
@given(histories, st.integers(60, 400))
def test_a_net_delta_in_parts_is_applied_whole_at_the_last(
    history: tuple[list[Change], list[list[Change]], int], part_bytes_max: int
) -> None:
    """Bigger than one message, the net delta goes out as `DeltaPart`s: the broker
    assembles them and applies the whole at the end marker, with the same result."""
    initial, steps, first = history
    view, records, start, deltas = published(initial, steps, first)
    net = coalesce(deltas)
    cache = cache_at(first, start, records)
    assembler = DeltaAssembler()
    parts = split_delta(net, part_bytes_max)
    for part in parts[:-1]:
        assert assembler.add(part) is None
        assert cache.version == first  # nothing applied before the last part
    whole = assembler.add(parts[-1])
    assert whole is not None
    cache.apply_delta(whole)
    assert cache.records == view and cache.digest_bytes == deltas[-1].digest


@settings(max_examples=150, deadline=None)
@given(histories, st.data())
def test_folding_as_batches_arrive_equals_folding_at_once(
    history: tuple[list[Change], list[list[Change]], int], data: st.DataObject
) -> None:
    """The hub folds each fanned-out batch as it comes; where the batches split does not
    matter, and the held size is the size estimate of the one delta sent."""
    initial, steps, first = history
    _, _, _, deltas = published(initial, steps, first)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(deltas)), max_size=5)) | {len(deltas)})
    held = NetDelta(deltas[0])
    start = 1
    for cut in cuts:
        held.extend(deltas[start:cut])
        start = cut
    assert held.delta() == coalesce(deltas)
    assert held.versions == len(deltas) and held.records == len(held.delta().changes)
    assert held.size_bytes == delta_size(held.delta())


def test_the_held_size_grows_with_records_not_versions() -> None:
    """A thousand versions rewriting the same three records hold three changes."""
    deltas = [Delta(v, v + 1, digest_bytes(v), (_node(1 + v % 3, v % 5),)) for v in range(1000)]
    held = NetDelta(deltas[0])
    sizes = []
    for delta in deltas[1:]:
        held.add(delta)
        sizes.append(held.size_bytes)
    assert held.records == 3 and held.versions == 1000
    three = Delta(0, 0, digest_bytes(0), tuple(_node(n, 4) for n in NODE_IDS))
    assert max(sizes) <= delta_size(three)
    assert sum(delta_size(d) for d in deltas) > 100 * max(sizes)


def test_a_delete_stays_a_delete_and_a_recreate_is_the_latest() -> None:
    a1, a2 = _node(1, 1), _node(1, 2)
    gone = _deleted("node", "1")
    deltas = [
        Delta(0, 1, b"x" * 8, (a1,)),
        Delta(1, 2, b"y" * 8, (gone,)),
        Delta(2, 3, b"z" * 8, (_node(2, 0),)),
        Delta(3, 4, b"w" * 8, (gone, _deleted("node", "2"), _node(2, 3), a2, gone)),
    ]
    assert coalesce(deltas).changes == (gone, _node(2, 3))
    assert coalesce(deltas[:3]).changes == (gone, _node(2, 0))
    assert coalesce(deltas[:1]) == deltas[0]


@pytest.mark.parametrize(
    "deltas",
    [
        [],
        [Delta(0, 1, b"", ()), Delta(2, 3, b"", ())],  # a gap
        [Delta(0, 1, b"", ()), Delta(0, 1, b"", ())],  # a repeat
        [Delta(3, 3, b"", ())],  # does not advance
    ],
)
def test_deltas_that_do_not_chain_are_refused(deltas: list[Delta]) -> None:
    with pytest.raises(ValueError):
        coalesce(deltas)


def test_a_refused_delta_folds_nothing() -> None:
    held = NetDelta(Delta(0, 1, b"a" * 8, (_node(1, 0),)))
    before = held.delta()
    with pytest.raises(ValueError, match="does not follow version 1"):
        held.add(Delta(2, 3, b"b" * 8, (_node(2, 0),)))
    assert held.delta() == before and held.size_bytes == delta_size(before)
