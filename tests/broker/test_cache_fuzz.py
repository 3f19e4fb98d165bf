"""Hypothesis: a delta or snapshot, valid or with any field mutated, is either applied
exactly or refused with `CacheError` and changes nothing at all.

Valid histories come from the real `MetadataState` (commands through
`tests/metadata/harness.py`); one delta (or snapshot record) is then mutated: a field
of another type, a dropped or extra field, a wrong enum string, a negative or huge int,
another kind, a bad key, the digest bytes, the versions.  With the digest *re-signed*
over the mutated records (what a buggy or hostile server that signs what it sends would
do), only the record check stands between the mutation and the cache, so the test's
own oracle (`record_valid`, written from `felix.metadata.model.from_record` and not
from the cache's code) decides what must apply; with the original digest a mutation
that changes anything must be refused.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from felix.broker.cache import (
    CONVERTERS,
    CacheError,
    DeltaAssembler,
    MetadataCache,
    RecordError,
    SnapshotAssembler,
)
from felix.metadata.commands import (
    Command,
    CreateStream,
    DeleteStream,
    DrainNode,
    MoveShardLeader,
    NodeHealth,
    RegisterNode,
    SetConfig,
    SetQuota,
    SetTenant,
    UndrainNode,
    UpdateStream,
)
from felix.metadata.digest import digest_bytes
from felix.metadata.errors import SnapshotError
from felix.metadata.model import KINDS, MODEL_CLASSES, from_record
from felix.metadata.view import apply_changes
from felix.proto.client_messages import Change, Delta, DeltaPart, SnapshotChunk
from tests.metadata.harness import Harness, cluster

ID_MAX = 2**63 - 1
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- the oracle -----------------------------------------------------------------------


def plain(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value


def record_valid(kind: object, key: object, value: object) -> bool:
    """What the record model accepts (`from_record`), with the model's implied ranges:
    ints (ids, epochs, counts, quotas) in [0, 2**63), a node's state one of NodeState,
    replicas node ids; a deletion needs a well-formed key of a known kind."""
    if kind not in KINDS:
        return False
    if value is None:
        return deleted_key_valid(str(kind), key)
    if type(value) is not dict or type(key) is not str:
        return False
    record = {name: plain(v) for name, v in value.items()}
    try:
        obj = from_record(str(kind), key, record)
    except (SnapshotError, TypeError):
        return False
    for name, allowed in MODEL_CLASSES[str(kind)].types.items():
        v = record[name]
        if allowed != (int, bool, str) and type(v) is int and not 0 <= v <= ID_MAX:
            return False
    if kind == "node" and record["state"] not in ("registered", "up", "down"):
        return False
    id_tuples = [v for v in record.values() if isinstance(v, tuple)]  # replicas, adding, ...
    return obj is not None and all(0 <= r <= ID_MAX for ids in id_tuples for r in ids)


def canonical_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and str(int(text)) == text and int(text) <= ID_MAX


def deleted_key_valid(kind: str, key: object) -> bool:
    if type(key) is not str:
        return False
    if kind == "node":
        return canonical_id(key)
    if kind == "shard":
        _, sep, index = key.rpartition("/")
        return bool(sep) and canonical_id(index)
    return True


# --- observing a cache ------------------------------------------------------------------


def observe(cache: MetadataCache) -> tuple[Any, ...]:
    """Everything a failed apply must leave as it was."""
    return (
        cache.version,
        cache.digest,
        cache.hashes_valid,
        dict(cache.records),
        dict(cache._hashes),
        dict(cache.nodes),
        dict(cache.streams),
        dict(cache.shards),
        dict(cache.tenants),
        dict(cache.config),
        dict(cache.routing),
        dict(cache.owned),
        {leader: set(shards) for leader, shards in cache._led_by.items() if shards},
        list(cache._events),
    )


def derived(cache: MetadataCache) -> tuple[Any, ...]:
    """The tables derived from the records (not the version, digest or hashes)."""
    return observe(cache)[3:4] + observe(cache)[5:]


def rebuilt(cache: MetadataCache) -> MetadataCache:
    """The same records applied as one snapshot to a fresh cache."""
    fresh = MetadataCache(cache.node_id)
    records = [Change(kind, key, value) for (kind, key), value in cache.records.items()]
    fresh.apply_snapshot(cache.version or 0, digest_bytes(fresh_digest(records)), records)
    return fresh


def fresh_digest(records: list[Change]) -> int:
    try:
        return apply_changes({}, records)
    except Exception:  # not even hashable as records
        return 0


def check_applied_exactly(cache: MetadataCache, records: dict[Any, Any]) -> None:
    """The incrementally updated view equals one built from scratch from its records."""
    assert cache.records == records
    assert derived(cache) == derived(rebuilt(cache))


# --- histories --------------------------------------------------------------------------

NODES = (1, 2, 3, 4)


def command(h: Harness, step: int, roll: int, pick: int) -> Command:
    state = h.state
    node = NODES[pick % len(NODES)]
    streams = sorted(state.streams)
    shards = sorted(state.shards)
    if roll == 0 or not streams:
        return CreateStream(f"s{step}", 1 + pick % 3, "acme", 1 + pick % 3)
    if roll == 1:
        return UpdateStream(streams[pick % len(streams)], shards=1 + pick % 5)
    if roll == 2:
        return DeleteStream(streams[pick % len(streams)])
    if roll == 3:
        return NodeHealth(node, ("up", "down")[pick % 2])
    if roll == 4:
        return DrainNode(node) if pick % 2 else UndrainNode(node)
    if roll == 5 and shards:
        key = shards[pick % len(shards)]
        replicas = state.shards[key].replicas
        return MoveShardLeader(key, replicas[pick % len(replicas)])
    if roll == 6:
        return RegisterNode(node, f"host{step}:1", f"r{pick % 2}")
    if roll == 7:
        return SetConfig("streams_max", 50 + pick)
    if roll == 8:
        return SetQuota("acme", streams_max=None if pick % 2 else 100 + pick)
    return SetTenant(f"t{pick % 3}", f"tenant {step}", remove=pick % 4 == 0)


@st.composite
def histories(draw: st.DrawFn) -> tuple[Harness, list[Delta], int | None]:
    """(harness at the end, the deltas after the snapshot point, whose node id)."""
    h = cluster({n: f"r{n % 2}" for n in NODES})
    h.ok(CreateStream("orders", 3, "acme", 2))
    steps = draw(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 99)), max_size=6))
    for step, (roll, pick) in enumerate(steps):
        h.apply(command(h, step, roll, pick))
    snapshot_at = len(h.deltas)
    more = draw(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 99)), min_size=1, max_size=4))
    for step, (roll, pick) in enumerate(more, start=len(steps)):
        h.apply(command(h, step, roll, pick))
    node_id = draw(st.sampled_from([None, 1, 2]))
    return h, h.deltas[snapshot_at:], node_id


def cache_before(h: Harness, deltas: list[Delta], node_id: int | None) -> MetadataCache:
    """A cache holding the view just before ``deltas`` (the earlier deltas replayed)."""
    records: dict[tuple[str, str], Any] = {}
    digest = 0
    for delta in h.deltas[: len(h.deltas) - len(deltas)]:
        digest = apply_changes(records, delta.changes, digest)
    cache = MetadataCache(node_id)
    changes = [Change(kind, key, value) for (kind, key), value in records.items()]
    cache.apply_snapshot(deltas[0].prev_version, digest_bytes(digest), changes)
    return cache


# --- mutations --------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([-(2**63), 2**63, 2**64 - 1, ID_MAX]),
    st.text(max_size=4),
    st.sampled_from(["UP", "bogus", "", "up", "down", "registered"]),
    st.booleans(),
    st.none(),
    st.binary(max_size=3),
    st.lists(st.one_of(st.integers(-2, 4), st.text(max_size=2)), max_size=3).map(tuple),
)
bad_keys = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["07", "-1", "", "x", "1/", "/1", "orders/x", "orders/-1", "orders/01",
                     "99999999999999999999", "١"]),
)  # fmt: skip

Mutation = Callable[[Change], Change]


@st.composite
def record_mutations(draw: st.DrawFn) -> Mutation:
    how = draw(st.sampled_from(["field", "drop", "extra", "kind", "key", "delete", "value"]))
    if how == "field":
        index, new = draw(st.integers(0, 10)), draw(scalars)

        def mutate(change: Change) -> Change:
            value = dict(change.value or {"x": 1})
            name = sorted(value)[index % len(value)]
            return replace(change, value={**value, name: new})
    elif how == "drop":
        index = draw(st.integers(0, 10))

        def mutate(change: Change) -> Change:
            value = dict(change.value or {"x": 1})
            del value[sorted(value)[index % len(value)]]
            return replace(change, value=value)
    elif how == "extra":
        name, new = draw(st.sampled_from(["extra", "id", "name", ""])), draw(scalars)

        def mutate(change: Change) -> Change:
            return replace(change, value={**(change.value or {}), name: new})
    elif how == "kind":
        kind = draw(st.sampled_from([*KINDS, "bogus", ""]))

        def mutate(change: Change) -> Change:
            return replace(change, kind=kind)
    elif how == "key":
        key = draw(bad_keys)

        def mutate(change: Change) -> Change:
            return replace(change, key=key)
    elif how == "delete":

        def mutate(change: Change) -> Change:
            return replace(change, value=None)
    else:
        new = draw(st.one_of(scalars, st.just({})))

        def mutate(change: Change) -> Change:
            return replace(change, value=new)

    return mutate


def mutate_delta(delta: Delta, index: int, mutation: Mutation) -> Delta:
    changes = list(delta.changes)
    if not changes:
        changes = [Change("stream", "ghost", None)]
    at = index % len(changes)
    changes[at] = mutation(changes[at])
    return replace(delta, changes=tuple(changes))


def signed(delta: Delta, cache: MetadataCache) -> tuple[Delta, dict[Any, Any]]:
    """``delta`` with the digest of the records it leads to (and those records)."""
    records = dict(cache.records)
    try:
        digest = apply_changes(records, delta.changes, cache.digest)
    except Exception:  # not even hashable as a record: keep the server's digest
        return delta, {}
    return replace(delta, digest=digest_bytes(digest)), records


def apply_one(cache: MetadataCache, delta: Delta, via_parts: bool) -> None:
    if not via_parts:
        cache.apply_delta(delta)
        return
    assembler = DeltaAssembler()
    whole = None
    changes = delta.changes
    for seq, start in enumerate(range(0, max(len(changes), 1), 2)):
        last = start + 2 >= len(changes)
        part = DeltaPart(delta.prev_version, delta.version, delta.digest, seq, last,
                         changes[start : start + 2])  # fmt: skip
        whole = assembler.add(part)
    assert whole == delta
    cache.apply_delta(whole)


# --- the properties ---------------------------------------------------------------------


@pytest.mark.parametrize("verify", [True, False])
@FUZZ
@given(
    history=histories(),
    index=st.integers(0, 50),
    mutation=record_mutations(),
    via_parts=st.booleans(),
)
def test_a_signed_mutated_delta_applies_iff_its_records_are_valid(
    verify: bool,
    history: tuple[Harness, list[Delta], int | None],
    index: int,
    mutation: Mutation,
    via_parts: bool,
) -> None:
    h, deltas, node_id = history
    cache = cache_before(h, deltas, node_id)
    cache.verify_deltas = verify
    bad, records = signed(mutate_delta(deltas[0], index, mutation), cache)
    valid = all(record_valid(c.kind, c.key, c.value) for c in bad.changes)
    event(f"valid: {valid}")
    before = observe(cache)
    if not valid:
        with pytest.raises(CacheError):
            apply_one(cache, bad, via_parts)
        assert observe(cache) == before
        for delta in deltas:  # the real history still applies: nothing was half done
            apply_one(cache, delta, via_parts)
        check_applied_exactly(cache, h.view)
        assert cache.digest_bytes == h.state.digest and cache.version == h.state.version
        return
    apply_one(cache, bad, via_parts)
    assert cache.version == bad.version and cache.digest_bytes == bad.digest
    check_applied_exactly(cache, records)
    if verify:
        assert cache.hashes_consistent() and cache.recompute_digest() == cache.digest


@FUZZ
@given(
    history=histories(),
    index=st.integers(0, 50),
    mutation=st.one_of(
        record_mutations().map(lambda m: ("record", m)),
        st.binary(max_size=9).map(lambda d: ("digest", d)),
        st.integers(-3, 3).map(lambda n: ("prev_version", n)),
        st.integers(-3, 3).map(lambda n: ("version", n)),
    ),
)
def test_a_mutated_delta_applies_exactly_or_changes_nothing(
    history: tuple[Harness, list[Delta], int | None],
    index: int,
    mutation: tuple[str, Any],
) -> None:
    """With the server's digest: the cache ends equal to the server's state, or raises
    `CacheError` and is untouched (then the real delta still applies)."""
    h, deltas, node_id = history
    cache = cache_before(h, deltas, node_id)
    reference = cache_before(h, deltas, node_id)
    reference.apply_delta(deltas[0])
    good = deltas[0]
    what, how = mutation
    if what == "record":
        bad = mutate_delta(good, index, how)
    elif what == "digest":
        bad = replace(good, digest=how)
    else:
        bad = replace(good, **{what: getattr(good, what) + how})
    before = observe(cache)
    try:
        cache.apply_delta(bad)
    except CacheError as exc:
        event(f"refused: {type(exc).__name__}")
        assert observe(cache) == before
        cache.apply_delta(good)
        assert observe(cache) == observe(reference)
        return
    event(f"applied: {what}")
    assert cache.version == bad.version  # only the version is not covered by the digest
    assert observe(cache)[1:] == observe(reference)[1:]


@FUZZ
@given(
    history=histories(),
    index=st.integers(0, 500),
    mutation=record_mutations(),
    chunk=st.integers(1, 40),
    resign=st.booleans(),
)
def test_a_mutated_snapshot_installs_iff_valid_else_changes_nothing(
    history: tuple[Harness, list[Delta], int | None],
    index: int,
    mutation: Mutation,
    chunk: int,
    resign: bool,
) -> None:
    h, deltas, node_id = history
    cache = cache_before(h, deltas, node_id)  # an older view, to be replaced
    records = h.records()
    at = index % len(records)
    records[at] = mutation(records[at])
    live = [c for c in records if c.value is not None]  # a snapshot skips value None
    idents = [(c.kind, c.key) for c in live]
    valid = len(set(idents)) == len(idents) and all(
        record_valid(c.kind, c.key, c.value) for c in live
    )
    digest = digest_bytes(fresh_digest(live)) if resign else h.state.digest
    before = observe(cache)
    assembler = SnapshotAssembler()
    try:
        whole = None
        for seq, start in enumerate(range(0, len(records), chunk)):
            part = tuple(records[start : start + chunk])
            last = start + chunk >= len(records)
            whole = assembler.add(SnapshotChunk(None, h.state.version, digest, seq, part, last))
        assert whole is not None
        cache.apply_snapshot(*whole)
    except CacheError as exc:
        event(f"refused: {type(exc).__name__}, valid={valid}, resign={resign}")
        assert not (valid and resign), "a valid, correctly signed snapshot was refused"
        assert observe(cache) == before
        return
    event(f"installed: resign={resign}")
    assert valid
    assert cache.version == h.state.version and cache.digest_bytes == digest
    check_applied_exactly(cache, {(c.kind, c.key): c.value for c in live})


NATURAL_KEYS = {"node": "1", "shard": "orders/0", "stream": "orders", "tenant": "acme",
                "config": "acme"}  # fmt: skip


@FUZZ
@given(
    kind=st.sampled_from(KINDS),
    key=st.one_of(st.none(), bad_keys),
    value=st.dictionaries(
        st.sampled_from(
            sorted({name for cls in MODEL_CLASSES.values() for name in cls.types} | {"x"})
        ),
        scalars,
        max_size=2,
    ),
)
def test_the_compiled_record_check_agrees_with_the_model(
    kind: str, key: str | None, value: dict[str, Any]
) -> None:
    """The fast path and the explaining path of `CONVERTERS` against the model (a None
    ``key`` stands for the record's own key)."""
    key = NATURAL_KEYS[kind] if key is None else key
    cls = MODEL_CLASSES[kind]
    fills: dict[str, dict[str, Any]] = {
        "node": {"id": 1, "address": "a:1", "rack": "", "state": "up", "epoch": 3,
                 "draining": False, "drained_version": None},
        "stream": {"name": "orders", "tenant": "acme", "shards": 2, "replication_factor": 1,
                   "retention_ms": 5},
        "shard": {"stream": "orders", "index": 0, "replicas": (1, 2), "leader": 1,
                  "leader_epoch": 0},
        "tenant": {"name": "acme", "display_name": "", "streams_max": None, "shards_max": 3,
                   "bytes_per_s": None},
        "config": {"name": "acme", "value": 7},
    }  # fmt: skip
    record = {**fills[kind], **{k: v for k, v in value.items() if k in cls.types or k == "x"}}
    if value.get("x") is None:
        record.pop("x", None)
    valid = record_valid(kind, key, record)
    try:
        table_key, obj = CONVERTERS[kind](key, record)
    except RecordError as exc:
        event("refused")
        assert not valid, exc
        assert exc.kind == kind and exc.key == key and repr(key) in str(exc)
        return
    event("converted")
    assert valid
    assert obj == from_record(kind, key, record) and obj.to_record() == record
    if kind == "node":
        assert table_key == obj.id
    elif kind == "shard":
        assert table_key == (obj.stream, obj.index)
    else:
        assert table_key == obj.name
