"""Round trips for every message type, and the decoder's refusal of everything else."""

from __future__ import annotations

import copy
import dataclasses
import gc
import io
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix.gc_pause import GC_PAUSE_BYTES, decode_paused, gc_paused
from felix.proto.cbor import (
    _SCHEMAS,
    Registry,
    ScalarValue,
    _codec_for,
    _dict_codec,
    dataclass_slot_setters,
    from_plain,
    safe_loads,
    to_plain,
    wire_type,
)
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    RECORD_FIELDS_MAX,
    SERVER_TO_CLIENT,
    Change,
    Name,
    SnapshotChunk,
)
from felix.proto.errors import DecodeError, ProtocolError, SchemaError, UnknownMessageType
from felix.proto.raft_messages import PEER, AppendEntries, Entry, EntryKind, TimeoutNow
from felix.proto.versions import BASELINE, PROTOCOL_VERSION_NEXT
from tests.proto.strategies import message_strategy

REGISTRIES = (PEER, CLIENT_TO_SERVER, SERVER_TO_CLIENT)
ALL_TYPES = [(reg, cls) for reg in REGISTRIES for cls in reg.classes]


def test_every_message_type_is_covered() -> None:
    names = {cls.__name__ for _, cls in ALL_TYPES}
    for expected in (
        "PeerHello",
        "HelloAck",
        "HelloRefused",
        "RequestVote",
        "VoteResponse",
        "AppendEntries",
        "AppendResponse",
        "InstallSnapshot",
        "SnapshotResponse",
        "TimeoutNow",
        "ClientHello",
        "ReportHealth",
        "WriteRequest",
        "WriteResult",
        "SnapshotChunk",
        "Deltas",
        "WatchProgress",
        "Resync",
        "Error",
    ):
        assert expected in names


@pytest.mark.parametrize(
    ("registry", "cls"), ALL_TYPES, ids=[f"{r.name}:{c.__name__}" for r, c in ALL_TYPES]
)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_round_trip(registry: Registry, cls: type, data: st.DataObject) -> None:
    """80 examples × 19 message types > 1,000 round trips per run, at every version: a
    field newer than the version comes back as its default."""
    msg = data.draw(message_strategy(cls))
    for version in range(BASELINE, PROTOCOL_VERSION_NEXT + 1):
        if registry.since(cls) > version:
            continue
        encoded = registry.encode(msg, version)
        newer = {
            f.name: f.default
            for f, since in zip(dataclasses.fields(cls), _SCHEMAS[cls].since, strict=True)
            if since > version
        }
        assert registry.decode(encoded, version) == dataclasses.replace(msg, **newer)
        # Encoding is deterministic: the same message gives the same bytes.
        assert registry.encode(registry.decode(encoded, version), version) == encoded


def _append(**overrides: Any) -> dict[str, Any]:
    plain: dict[str, Any] = {
        "type": "AppendEntries",
        "term": 2,
        "leader": 1,
        "prev_log_index": 0,
        "prev_log_term": 0,
        "entries": [[1, 2, 0, b"x"]],
        "leader_commit": 0,
        "seq": 0,
    }
    plain.update(overrides)
    return plain


def _decode_plain(plain: Any, registry: Registry = PEER) -> Any:
    return registry.decode(cbor2.dumps(plain))


def test_valid_plain_map_decodes() -> None:
    msg = _decode_plain(_append())
    assert msg == AppendEntries(2, 1, 0, 0, (Entry(1, 2, EntryKind.NORMAL, b"x"),), 0, 0)
    assert isinstance(msg.entries[0].kind, EntryKind)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"term": -1}, "AppendEntries.term: integer -1 out of range"),
        ({"term": 2**64 - 1}, "AppendEntries.term: integer 18446744073709551615 out of range"),
        ({"term": "2"}, "AppendEntries.term: expected integer, got text"),
        ({"term": True}, "AppendEntries.term: expected integer, got bool"),
        ({"term": 2.0}, "AppendEntries.term: expected integer, got float"),
        ({"leader": 0}, "AppendEntries.leader: integer 0 out of range"),
        ({"leader": None}, "AppendEntries.leader: expected integer, got null"),
        ({"entries": {}}, "AppendEntries.entries: expected array, got map"),
        ({"entries": [[1, 2, 0]]}, "AppendEntries.entries[0]: Entry needs 4 items"),
        ({"entries": [[1, 2, 0, b""], [2, 2, 7, b""]]}, "entries[1].kind: 7 is not one of"),
        ({"entries": [[1, 2, 0, "text"]]}, "entries[0].data: expected bytes, got text"),
        ({"seq": [1]}, "AppendEntries.seq: expected integer, got array"),
        ({"extra": 1}, "AppendEntries: unexpected field(s): extra"),
    ],
)
def test_schema_errors_name_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError) as info:
        _decode_plain(_append(**overrides))
    assert message in str(info.value)


def test_missing_field_is_named() -> None:
    plain = _append()
    del plain["leader_commit"]
    with pytest.raises(SchemaError, match=r"missing field\(s\): leader_commit"):
        _decode_plain(plain)


def test_missing_type_and_unknown_type() -> None:
    plain = _append()
    del plain["type"]
    with pytest.raises(SchemaError, match="missing field: type"):
        _decode_plain(plain)
    with pytest.raises(UnknownMessageType, match="'Nope'"):
        _decode_plain(_append(type="Nope"))
    with pytest.raises(UnknownMessageType):
        _decode_plain(_append(type=7))


def test_channels_do_not_accept_each_others_messages() -> None:
    encoded = PEER.encode(TimeoutNow(term=1, leader=2))
    for registry in (CLIENT_TO_SERVER, SERVER_TO_CLIENT):
        with pytest.raises(UnknownMessageType):
            registry.decode(encoded)


def test_top_level_must_be_a_map() -> None:
    for item in ([1, 2], 5, "AppendEntries", None, b"x"):
        with pytest.raises(SchemaError, match="must be a map"):
            _decode_plain(item)


def test_trailing_bytes_refused() -> None:
    encoded = PEER.encode(TimeoutNow(term=1, leader=2))
    with pytest.raises(DecodeError, match="1 trailing byte"):
        PEER.decode(encoded + b"\x00")


@pytest.mark.parametrize("tag", [*range(0, 64), 100, 256, 258, 260, 261, 1004, 55799, 2**32])
def test_every_tag_refused(tag: int) -> None:
    """Felix uses no CBOR tags: dates, bignums, shared refs, regexes... all refused."""
    for payload in (1, b"\x01" * 8, "x", [1], {"a": 1}):
        tagged = cbor2.dumps(cbor2.CBORTag(tag, payload))
        with pytest.raises(DecodeError, match="invalid CBOR"):
            safe_loads(tagged, max_depth=8)
    inside = cbor2.dumps(_append(seq=cbor2.CBORTag(tag, 1)))
    with pytest.raises(DecodeError):
        PEER.decode(inside)


def test_shared_reference_amplification_refused() -> None:
    """Tags 28/29 would let 30 KB expand to megabytes; refused outright."""
    shared = b"\xd8\x1c" + cbor2.dumps(list(range(100)))  # tag 28: shareable
    payload = b"\x98\x64" + shared + b"\xd8\x1d\x00" * 99  # 100 refs to the same list
    with pytest.raises(DecodeError):
        safe_loads(payload, max_depth=8)


def test_regex_tag_refused() -> None:
    with pytest.raises(DecodeError):
        safe_loads(b"\xd8\x23" + cbor2.dumps("(a+)+$"), max_depth=8)


def test_nesting_deeper_than_the_schema_needs_is_refused() -> None:
    # Peer messages need depth 5 at most (InstallSnapshot.meta.conf.addresses[i]).
    assert PEER.max_depth == 5
    deep = _append(entries=[[1, 2, 0, [[[[[b""]]]]]]])
    with pytest.raises(DecodeError, match="invalid CBOR"):
        _decode_plain(deep)
    bomb = b"\x81" * 100_000 + b"\x00"
    for registry in REGISTRIES:
        with pytest.raises(DecodeError):
            registry.decode(bomb)


def test_indefinite_lengths_refused() -> None:
    with pytest.raises(DecodeError):
        safe_loads(b"\x9f\x01\x02\xff", max_depth=4)  # indefinite array
    with pytest.raises(DecodeError):
        safe_loads(b"\x5f\x41a\x41b\xff", max_depth=4)  # indefinite bytes


def test_duplicate_and_non_text_keys_refused() -> None:
    with pytest.raises(DecodeError):
        safe_loads(b"\xa2\x61a\x01\x61a\x02", max_depth=4)  # {"a": 1, "a": 2}
    with pytest.raises(DecodeError):
        safe_loads(b"\xa1\x81\x01\x01", max_depth=4)  # {[1]: 1}


def test_invalid_utf8_refused() -> None:
    with pytest.raises(DecodeError):
        safe_loads(b"\x62\xff\xfe", max_depth=4)


def test_huge_declared_lengths_fail_without_allocating() -> None:
    for header in (b"\x5b", b"\x7b", b"\x9b", b"\xbb"):  # bytes, text, array, map
        with pytest.raises(DecodeError):
            safe_loads(header + b"\x00\x00\x00\x01\x00\x00\x00\x00", max_depth=4)


def test_string_length_bounds() -> None:
    hello = {"type": "Hello", "cluster_id": "c" * 129, "node_id": 1, "version_min": 1}
    hello["version_max"] = 1
    with pytest.raises(SchemaError, match=r"Hello\.cluster_id: text of 129 characters exceeds"):
        _decode_plain(hello)


def test_record_values_are_checked() -> None:
    def deltas(value: Any) -> dict[str, Any]:
        change = ["stream", "s1", {"retention": value}]
        return {"type": "Deltas", "deltas": [[0, 1, b"", [change]]]}

    assert _decode_plain(deltas([1, "a"]), SERVER_TO_CLIENT).deltas[0].changes[0].value == {
        "retention": (1, "a")
    }
    with pytest.raises(SchemaError, match=r"deltas\[0\]\.changes\[0\]\.value\.retention"):
        _decode_plain(deltas({"nested": 1}), SERVER_TO_CLIENT)
    with pytest.raises(SchemaError, match="expected integer or text, got float"):
        _decode_plain(deltas([1.5]), SERVER_TO_CLIENT)


def test_to_plain_matches_the_wire() -> None:
    msg = TimeoutNow(term=3, leader=4)
    decoded = cbor2.load(io.BytesIO(PEER.encode(msg)))
    assert decoded == {"type": "TimeoutNow", **to_plain(msg)}


# --- the fast paths agree with the general decoders ---------------------------------------

RECORD_ITEMS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.binary(max_size=6)
    | st.sampled_from(["x" * 4097, "y" * 65537, b"z" * 65537, 2**63, -(2**63) - 1]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=2)
    ),
    max_leaves=8,
)
RECORD_MAPS = st.dictionaries(
    st.text(max_size=4) | st.integers() | st.sampled_from(["k" * 257]), RECORD_ITEMS, max_size=4
)


def _outcome(decode: Any, value: object) -> tuple[str, object]:
    try:
        return "ok", decode(value)
    except SchemaError as exc:
        return "error", str(exc)


@settings(max_examples=400, deadline=None)
@given(value=RECORD_MAPS | RECORD_ITEMS | st.just({f"f{i}": i for i in range(257)}))
def test_record_maps_decode_as_the_general_map_decoder_does(value: object) -> None:
    """Change.value (``dict[Name, ScalarValue] | None``) goes through `_record_codec`:
    the same result, or the same refusal and message, as `_dict_codec` over
    `_scalar_value_decode`; and the input is left as it was."""
    fast = _SCHEMAS[Change].codecs[2].decode
    general = _dict_codec(
        _codec_for(Name, "t"), _codec_for(ScalarValue, "t"), RECORD_FIELDS_MAX
    ).decode
    before = copy.deepcopy(value)
    expected = ("ok", None) if value is None else _outcome(general, value)
    assert _outcome(fast, value) == expected
    assert value == before


def test_a_refusal_names_the_bad_record_after_good_ones() -> None:
    def deltas(*changes: list[Any]) -> dict[str, Any]:
        return {"type": "Deltas", "deltas": [[0, 1, b"", list(changes)]]}

    good = {"replicas": [1, 2], "leader": 1}
    msg = _decode_plain(deltas(["shard", "s/0", good], ["shard", "s/1", good]), SERVER_TO_CLIENT)
    assert msg.deltas[0].changes[1].value == {"replicas": (1, 2), "leader": 1}
    bad = {"replicas": [1, 2.5], "leader": 1}
    with pytest.raises(
        SchemaError, match=r"changes\[2\]\.value\.replicas: \[1\]: expected integer"
    ):
        _decode_plain(deltas(["a", "b", good], ["a", "c", good], ["a", "d", bad]), SERVER_TO_CLIENT)
    with pytest.raises(SchemaError, match=r"changes\[1\]\.key: text of 257 characters"):
        _decode_plain(deltas(["a", "b", None], ["a", "k" * 257, None]), SERVER_TO_CLIENT)


def test_generated_decoders_build_the_same_objects_as_the_constructor() -> None:
    """Decoders set the slots of frozen dataclasses directly: equal, hashable, frozen;
    a class whose __init__ does more is built by calling it."""
    plain = {"type": "Snapshot", "request_id": None, "version": 3, "digest": b"d", "seq": 0,
             "records": [["node", "1", {"a": [1, "x"]}]], "last": True, "history": ""}  # fmt: skip
    change = _decode_plain(plain, SERVER_TO_CLIENT).records[0]
    assert change == Change("node", "1", {"a": (1, "x")}) and type(change) is Change
    assert hash(Change("node", "1", None)) == hash(_decode_plain(
        {**plain, "records": [["node", "1", None]]}, SERVER_TO_CLIENT).records[0])  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.kind = "other"  # type: ignore[misc]

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            raise AssertionError("must run")

    @dataclasses.dataclass(frozen=True, slots=True)
    class HandWritten:
        n: int

        def __init__(self, n: int) -> None:
            object.__setattr__(self, "n", n + 1)

    assert dataclass_slot_setters(Change, ("kind", "key", "value")) is not None
    assert dataclass_slot_setters(Checked, ("n",)) is None
    assert dataclass_slot_setters(HandWritten, ("n",)) is None
    assert dataclass_slot_setters(Change, ("kind", "key")) is None  # not every field
    wire_type(Checked)
    wire_type(HandWritten)
    with pytest.raises(AssertionError, match="must run"):
        from_plain(Checked, {"n": 1})
    assert from_plain(HandWritten, {"n": 1}) == HandWritten(1)


def test_big_messages_decode_with_the_gc_paused_and_restored() -> None:
    records = tuple(Change("shard", f"s/{i}", {"replicas": (1, 2, 3)}) for i in range(2000))
    payload = SERVER_TO_CLIENT.encode(SnapshotChunk(None, 1, b"d", 0, records, True))
    small = SERVER_TO_CLIENT.encode(SnapshotChunk(None, 1, b"d", 0, (), True))
    assert len(payload) >= GC_PAUSE_BYTES > len(small)
    seen: list[bool] = []
    real_decode = SERVER_TO_CLIENT.decode

    def spy(data: Any) -> Any:
        seen.append(gc.isenabled())
        return real_decode(data)

    assert gc.isenabled()
    assert decode_paused(spy, payload).records == records
    with pytest.raises(DecodeError):
        decode_paused(spy, payload[:-1])
    decode_paused(spy, small)
    assert gc.isenabled()
    gc.disable()  # somebody else's pause is left alone
    try:
        decode_paused(spy, payload)
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert seen == [False, False, True, False]
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()


@given(st.lists(st.sampled_from(["ok", "tag", "deep", "trailing", "dup", "indef"]), max_size=30))
def test_reused_decoders_carry_nothing_from_one_item_to_the_next(kinds: list[str]) -> None:
    """`safe_loads` reuses one decoder per thread and depth: any sequence of good and
    refused inputs decodes every good one exactly, and refuses every bad one."""
    good = {"a": [1, "x", {"b": None}], "n": -7}
    payloads = {
        "ok": cbor2.dumps(good),
        "tag": b"\xd8\x1c" + cbor2.dumps([1, 2]),  # shareable: would leave state behind
        "deep": b"\x81" * 20 + b"\x01",
        "trailing": cbor2.dumps(good) + b"\x00",
        "dup": b"\xa2\x61a\x01\x61a\x02",
        "indef": b"\x9f\x01\xff",
    }
    for kind in kinds:
        if kind == "ok":
            assert safe_loads(payloads[kind], max_depth=8) == good
        else:
            with pytest.raises(ProtocolError):
                safe_loads(payloads[kind], max_depth=8)
