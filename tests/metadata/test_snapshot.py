"""Digest helpers and snapshot integrity checks."""

from __future__ import annotations

import pytest

from felix.metadata.commands import CreateStream
from felix.metadata.digest import digest_int, digest_of_records
from felix.metadata.errors import SnapshotError
from felix.metadata.snapshot import decode_snapshot, encode_snapshot
from felix.metadata.state import MetadataState
from felix.metadata.view import apply_changes
from felix.proto.cbor import dumps
from felix.proto.client_messages import Change

from .harness import cluster, with_stream


def test_digest_is_order_independent_and_field_order_independent() -> None:
    a = Change("node", "1", {"x": 1, "y": "two"})
    b = Change("node", "2", {"y": "two", "x": 2})
    assert digest_of_records([a, b]) == digest_of_records([b, a])
    a2 = Change("node", "1", {"y": "two", "x": 1})
    assert digest_of_records([a2]) == digest_of_records([a])
    assert digest_of_records([]) == bytes(8)
    assert digest_of_records([a]) != digest_of_records([Change("node", "1", {"x": 2})])


def test_apply_changes_tracks_the_digest_incrementally() -> None:
    view: dict = {}
    digest = apply_changes(view, [Change("k", "a", {"v": 1}), Change("k", "b", {"v": 2})])
    digest = apply_changes(view, [Change("k", "a", None), Change("k", "zz", None)], digest)
    assert view == {("k", "b"): {"v": 2}}
    assert digest.to_bytes(8, "big") == digest_of_records(view)
    assert digest_int(digest_of_records(view)) == digest
    with pytest.raises(ValueError):
        digest_int(b"\x00")


def test_empty_state_round_trips() -> None:
    restored = MetadataState.restore(MetadataState().snapshot())
    assert restored.version == 0 and restored.digest == bytes(8)


def snapshot_parts() -> tuple[int, bytes, tuple[Change, ...]]:
    h = with_stream(cluster({1: "a", 2: "b", 3: "c"}), "s", 2)
    h.ok(CreateStream("t", 1, "acme"))
    version, digest, records, tokens, _ = decode_snapshot(h.state.snapshot())
    assert tokens == ()
    return version, digest, records


def test_a_tampered_record_fails_the_digest() -> None:
    version, digest, records = snapshot_parts()
    shard = next(r for r in records if r.kind == "shard")
    assert shard.value is not None
    forged = Change("shard", shard.key, {**shard.value, "leader_epoch": 9})
    tampered = tuple(forged if r is shard else r for r in records)
    with pytest.raises(SnapshotError, match="digest does not match"):
        MetadataState.restore(encode_snapshot(version, digest, tampered))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: (*r, r[0]), "duplicate"),
        (lambda r: (*r, Change("widget", "1", {})), "unknown record kind"),
        (lambda r: (*r, Change("tenant", "x", {"name": "x"})), "fields"),
        (lambda r: (*r, Change("tenant", "x", None)), "is empty"),
        (
            lambda r: (
                *r,
                Change(
                    "tenant",
                    "y",
                    {
                        "name": "x",
                        "display_name": "",
                        "streams_max": None,
                        "shards_max": None,
                        "bytes_per_s": None,
                    },
                ),
            ),
            "does not match its fields",
        ),
        (
            lambda r: (*r, Change("config", "k", {"name": "k", "value": None})),
            "field value has type",
        ),
    ],
)
def test_inconsistent_snapshots_are_refused(mutate: object, match: str) -> None:
    version, digest, records = snapshot_parts()
    data = encode_snapshot(version, digest, mutate(records))  # type: ignore[operator]
    with pytest.raises(SnapshotError, match=match):
        MetadataState.restore(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xa0",
        dumps([3, 0, bytes(8), [], []]),
        dumps([2, 0, bytes(8), []]),
        dumps([1, 0, b"\x00", []]),
        dumps([1, 0]),
        dumps([2, 0, bytes(8), [], [["x", "admin", None, "0" * 64, None, ""]]]),
    ],
)
def test_undecodable_snapshots_are_refused(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        MetadataState.restore(data)


def test_snapshot_encoder_freezes_the_view_before_later_applies() -> None:
    """The encoder may run in a thread while apply goes on: it must see the state as it
    was when it was made, byte for byte what snapshot() gave then."""
    from felix.metadata.commands import SetTenant, encode_command
    from felix.metadata.state import MetadataState

    state = MetadataState()
    state.apply(1, encode_command(SetTenant("a")))
    expected = state.snapshot()
    encode = state.snapshot_encoder()
    state.apply(2, encode_command(SetTenant("b")))
    assert encode() == expected
    assert MetadataState.restore(encode()).version == 1
