"""The hand-written record encoder in `felix.metadata.digest` against cbor2.

The digest is defined by ``cbor2.dumps([kind, key, sorted(value.items())])``; every node
must hash records to the same bits, so the fast encoder has to produce exactly those
bytes for every value, or give up (None) and let cbor2 do it.  The reference below is
the implementation the fast path replaced.
"""

from __future__ import annotations

import enum
import math
import struct
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from hashlib import blake2b
from typing import Any

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from felix.metadata import digest
from felix.metadata.commands import (
    CreateStream,
    DrainNode,
    MoveShardLeader,
    NodeHealth,
    RegisterNode,
    SetConfig,
    SetQuota,
    SetTenant,
)
from felix.metadata.digest import (
    digest_of_records,
    fast_payload,
    record_hash,
    record_payload,
)
from felix.metadata.model import NodeState
from felix.proto.client_messages import SERVER_TO_CLIENT, Change, Delta, Deltas

from .harness import Harness


def reference_payload(kind: object, key: object, value: Mapping[Any, object]) -> bytes:
    return cbor2.dumps([kind, key, sorted(value.items())])


def reference_hash(kind: object, key: object, value: Mapping[Any, object]) -> int:
    payload = reference_payload(kind, key, value)
    return int.from_bytes(blake2b(payload, digest_size=8).digest(), "big")


@pytest.fixture(autouse=True)
def fresh_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no compiled per-kind encoders (other tests leave some)."""
    monkeypatch.setattr(digest, "_PLANS", {})
    monkeypatch.setattr(digest, "_PLAN_MISSES", {})


# --- values ---------------------------------------------------------------------------

BOUNDARIES = [0, 1, 23, 24, 25, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64]
EDGE_INTS = sorted({sign * b + d for b in BOUNDARIES for d in (-1, 0, 1) for sign in (1, -1)})
IN_RANGE = [n for n in EDGE_INTS if -(2**64) <= n < 2**64]
ints = st.sampled_from(IN_RANGE) | st.integers(-(2**64), 2**64 - 1)
big_ints = (
    st.sampled_from([n for n in EDGE_INTS if n not in IN_RANGE])
    | st.integers(min_value=2**64)
    | st.integers(max_value=-(2**64) - 1)
)


def _bits(pattern: int) -> float:
    value: float = struct.unpack(">d", pattern.to_bytes(8, "big"))[0]
    return value


SPECIAL_FLOATS = [
    0.0,
    -0.0,
    math.inf,
    -math.inf,
    math.nan,
    -math.nan,
    _bits(0x7FF0000000000001),  # signalling NaN payload
    _bits(0xFFF8000000000123),  # negative NaN with payload
    5e-324,
    1.5,
    65504.0,
    1e300,
]
floats = st.sampled_from(SPECIAL_FLOATS) | st.floats(allow_nan=True, allow_infinity=True)
# Text across lengths 23/24/255/256 bytes and any code point but lone surrogates
# (non-BMP included); surrogates are tested on their own below.
texts = st.text(max_size=300) | st.sampled_from(
    ["", "a" * 23, "a" * 24, "é" * 12, "é" * 128, "\U0001f600" * 6, "x" * 255, "x" * 256]
)


class Colour(enum.StrEnum):
    RED = "red"
    ODD = "odd"

    def __new__(cls, value: str) -> Colour:  # the str data differs from .value
        member = str.__new__(cls, value.upper())
        member._value_ = value
        return member


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 30

    def __new__(cls, value: int) -> Level:  # the int data differs from .value
        member = int.__new__(cls, value * 1000)
        member._value_ = value
        return member


enums = st.sampled_from([*NodeState, *Colour, *Level])
supported_scalars = (
    st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=300) | enums
)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.none() | st.booleans() | ints | texts | st.binary(), children)
    )


supported_values = st.recursive(supported_scalars, containers, max_leaves=20)


class PlainStr(str):
    pass


class PlainInt(int):
    pass


class Shade(enum.Enum):
    DARK = 1


unsupported_scalars = st.one_of(
    big_ints,
    st.binary(max_size=8).map(bytearray),
    st.frozensets(st.integers(0, 3), max_size=2),
    st.text(max_size=5).map(PlainStr),
    st.integers(-30, 30).map(PlainInt),
    st.just(Shade.DARK),
    st.lists(st.integers(0, 3), max_size=2).map(lambda items: OrderedDict.fromkeys(items)),
)
any_values = st.recursive(supported_scalars | unsupported_scalars, containers, max_leaves=20)
field_names = st.text(max_size=30) | st.sampled_from(["index", "leader", "replicas", "é"])


def has_unsupported(value: object) -> bool:
    t = type(value)
    if t is int:
        return not -(2**64) <= value < 2**64  # type: ignore[operator]
    if t in (str, bytes, float, bool, type(None)) or isinstance(value, (NodeState, Colour, Level)):
        return False
    if t in (list, tuple):
        return any(has_unsupported(item) for item in value)  # type: ignore[attr-defined]
    if t is dict:
        return any(has_unsupported(k) or has_unsupported(v) for k, v in value.items())  # type: ignore[attr-defined]
    return True


# --- properties -----------------------------------------------------------------------


def outcome(fn: Any, *args: object) -> object:
    """The result, or the exception type: the fallback must fail exactly as before."""
    try:
        return fn(*args)
    except Exception as exc:  # compared, not swallowed
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(supported_values)
@example(2**64 - 1)
@example(-(2**64))
@example(math.nan)
@example(-0.0)
@example(True)
@example(1)
@example([True, 1, 1.0, False, 0, 0.0])
@example({1: "one", False: "false", 0.5: None})
def test_encoder_writes_cbor2_bytes_for_every_supported_value(value: object) -> None:
    assert digest._encode(value) == cbor2.dumps(value)


@settings(max_examples=300, deadline=None)
@given(any_values)
def test_unsupported_values_are_refused_never_miswritten(value: object) -> None:
    try:
        encoded = digest._encode(value)
    except digest._Unsupported:
        assert has_unsupported(value)
    else:
        assert not has_unsupported(value)
        assert encoded == cbor2.dumps(value)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["shard", "node", "config"]) | texts,
    texts,
    st.dictionaries(field_names, supported_values, max_size=8),
)
def test_supported_records_take_the_fast_path_and_hash_as_before(
    kind: str, key: str, value: dict[str, object]
) -> None:
    payload = fast_payload(kind, key, value)
    assert payload is not None
    assert payload == reference_payload(kind, key, value)
    assert record_hash(kind, key, value) == reference_hash(kind, key, value)


@settings(max_examples=300, deadline=None)
@given(texts, st.dictionaries(field_names, any_values, max_size=6))
def test_any_record_hashes_as_before(key: str, value: dict[str, object]) -> None:
    expected = outcome(reference_payload, "shard", key, value)
    assert outcome(record_payload, "shard", key, value) == expected
    assert outcome(record_hash, "shard", key, value) == outcome(reference_hash, "shard", key, value)
    fast = fast_payload("shard", key, value)
    if any(has_unsupported(v) for v in value.values()):
        assert fast is None
    else:
        assert fast == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(field_names, supported_values, max_size=6), max_size=12))
def test_one_kind_with_changing_field_sets(values: list[dict[str, object]]) -> None:
    """The first record fixes the kind's compiled encoder; the others miss it."""
    for n, value in enumerate(values):
        assert record_hash("node", str(n), value) == reference_hash("node", str(n), value)


# --- the per-kind encoder ---------------------------------------------------------------


SHARD = {"stream": "orders", "index": 3, "replicas": (1, 2, 3), "leader": 1, "leader_epoch": 7}


def test_the_compiled_encoder_handles_each_value_type_per_field() -> None:
    assert record_hash("shard", "orders/3", SHARD) == reference_hash("shard", "orders/3", SHARD)
    assert "shard" in digest._PLANS
    variants: list[object] = [
        None, True, False, 0, 23, 24, 1023, 1024, -1, -25, 2**64 - 1, -(2**64), 1.5, math.nan,
        "", "x" * 23, "x" * 24, "é" * 200, "\U0001f600", b"raw", (), [1, "a"], {"k": [None]},
        NodeState.UP, Level.HIGH,
    ]  # fmt: skip
    for field in SHARD:
        for variant in variants:
            value = {**SHARD, field: variant}
            payload = digest._PLANS["shard"]("orders/3", value)
            assert payload == reference_payload("shard", "orders/3", value), (field, variant)
    for key in ["", "k" * 255, "k" * 256, "k" * 70_000, "ключ"]:
        assert record_hash("shard", key, SHARD) == reference_hash("shard", key, SHARD)


def test_the_compiled_encoder_misses_other_field_sets() -> None:
    record_hash("shard", "s/0", SHARD)
    plan = digest._PLANS["shard"]
    fewer = {k: v for k, v in SHARD.items() if k != "leader"}
    renamed = {**fewer, "leaderr": 1}
    more = {**SHARD, "extra": 1}
    for value in (fewer, renamed, more, {}):
        assert plan("s/0", value) is None
        assert record_hash("shard", "s/0", value) == reference_hash("shard", "s/0", value)
    assert plan("s/0", dict(reversed(SHARD.items()))) == reference_payload("shard", "s/0", SHARD)


def test_a_kind_whose_fields_changed_gets_a_new_encoder() -> None:
    record_hash("tenant", "t", {"name": "t"})
    first = digest._PLANS["tenant"]
    newer = {"name": "t", "display_name": "T"}
    for _ in range(digest._PLAN_MISSES_MAX):
        assert record_hash("tenant", "t", newer) == reference_hash("tenant", "t", newer)
    second = digest._PLANS["tenant"]
    assert second is not first
    assert second("t", newer) == reference_payload("tenant", "t", newer)
    assert first("t", newer) is None


def test_wide_records_and_many_kinds_use_the_generic_path() -> None:
    wide = {f"f{i:03}": i for i in range(digest._PLAN_FIELDS_MAX + 1)}
    assert record_hash("wide", "k", wide) == reference_hash("wide", "k", wide)
    assert "wide" not in digest._PLANS
    for n in range(digest._PLANS_MAX + 5):
        assert record_hash(f"kind{n}", "k", {"a": n}) == reference_hash(f"kind{n}", "k", {"a": n})
    assert len(digest._PLANS) == digest._PLANS_MAX


# --- fallbacks ---------------------------------------------------------------------------


cyclic: list[object] = []
cyclic.append(cyclic)


@pytest.mark.parametrize(
    ("kind", "key", "value"),
    [
        ("shard", "k", {"big": 2**64}),
        ("shard", "k", {"small": -(2**64) - 1}),
        ("shard", "k", {"ba": bytearray(b"x")}),
        ("shard", "k", {"sub": PlainStr("x")}),
        ("shard", "k", {"sub": PlainInt(3)}),
        ("shard", "k", {"enum": Shade.DARK}),
        ("shard", "k", {"nested": [1, {2: frozenset()}]}),
        ("shard", "k", {1: "int field name", 2: "another"}),
        ("shard", "k", {1: "mixed", "a": "field names"}),
        ("shard", "k", {PlainStr("a"): 1}),
        ("shard", "k", {"s": "\ud800"}),
        ("shard", "\udfff", {"s": 1}),
        ("\ud800", "k", {"s": 1}),
        ("shard", "k", {"cycle": cyclic}),
        (NodeState.UP, "k", {"a": 1}),
        ("shard", Colour.RED, {"a": 1}),
        ("shard", 7, {"a": 1}),
        ("shard", "k", types.MappingProxyType({"a": 1, "b": (2,)})),
        ("shard", "k", OrderedDict([("b", 1), ("a", 2)])),
    ],
)
def test_unusual_records_fall_back_to_cbor2(kind: Any, key: Any, value: Any) -> None:
    assert fast_payload(kind, key, value) is None
    for _ in range(2):  # second time through a compiled encoder, where one exists
        assert outcome(record_hash, kind, key, value) == outcome(reference_hash, kind, key, value)
        assert outcome(record_payload, kind, key, value) == outcome(
            reference_payload, kind, key, value
        )


def test_fallback_is_not_taken_for_a_record_that_the_encoder_writes() -> None:
    value = {"state": NodeState.DOWN, "level": Level.LOW, "f": -0.0, "b": b"", "n": None}
    assert fast_payload("node", "1", value) == reference_payload("node", "1", value)
    assert fast_payload("node", "1", value) == reference_payload("node", "1", value)  # compiled


# --- real records -----------------------------------------------------------------------


def populated() -> Harness:
    h = Harness()
    for node_id in range(1, 8):
        h.ok(RegisterNode(node_id, f"10.0.{node_id}.1:9092", f"rack-{node_id % 3}"))
        h.ok(NodeHealth(node_id, "up"))
    h.ok(NodeHealth(5, "down"))
    h.ok(RegisterNode(8, "[::1]:9092"))  # never reported: its state is a NodeState member
    h.ok(DrainNode(6))
    h.ok(SetTenant("acme", display_name="Acmé Corp"))
    h.ok(SetTenant("globex"))
    h.ok(SetQuota("acme", streams_max=100, shards_max=None, bytes_per_s=10**9))
    h.ok(SetConfig("shards_per_node_max", 70_000))
    h.ok(SetConfig("rack_aware_placement", False))
    h.ok(CreateStream("orders", 40, "acme", replication_factor=3, retention_ms=86_400_000))
    h.ok(CreateStream("clicks.v2", 3, "globex", replication_factor=1))
    h.ok(MoveShardLeader("orders/7", 2))
    return h


def real_records() -> Iterator[Change]:
    yield from populated().records()


def test_real_records_from_the_model_hash_as_before() -> None:
    records = list(real_records())
    assert {r.kind for r in records} == {"node", "stream", "shard", "tenant", "config"}
    node_states = [r.value["state"] for r in records if r.kind == "node" and r.value]
    assert {type(state) for state in node_states} == {str, NodeState}  # both shapes occur
    for record in records:
        assert record.value is not None
        assert fast_payload(record.kind, record.key, record.value) is not None
        assert record_hash(record.kind, record.key, record.value) == reference_hash(
            record.kind, record.key, record.value
        )
    total = sum(reference_hash(r.kind, r.key, r.value) for r in records if r.value is not None)
    assert digest_of_records(records) == (total % 2**64).to_bytes(8, "big")


def test_real_records_as_a_broker_decodes_them_hash_as_before() -> None:
    """What a broker holds: the records after a CBOR round trip (plain str, tuples)."""
    records = tuple(real_records())
    message = Deltas((Delta(0, 1, bytes(8), records),))
    decoded = SERVER_TO_CLIENT.decode(SERVER_TO_CLIENT.encode(message))
    changes = decoded.deltas[0].changes
    assert len(changes) == len(records)
    for change in changes:
        assert change.value is not None
        assert record_hash(change.kind, change.key, change.value) == reference_hash(
            change.kind, change.key, change.value
        )
    assert digest_of_records(changes) == digest_of_records(records)
