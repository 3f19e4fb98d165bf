"""The PACKED batch record: round trips, hostile bytes, and logs written as CBOR BATCH."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix.proto.raft_messages import Entry, EntryKind
from felix.raft.types import HardState
from felix.storage import segment_format as fmt
from felix.storage.errors import CorruptLogError
from felix.storage.memory_wal import MemoryWal
from felix.storage.segment_format import (
    SEGMENT_HEADER_BYTES,
    U64_MAX,
    BatchRecord,
    RecordScanner,
    RecordType,
    decode_any_batch,
    decode_packed_batch,
    encode_batch,
    encode_batch_cbor,
)
from tests.storage.model import CONF, entries

u64 = st.integers(0, U64_MAX)


@st.composite
def batches(draw: st.DrawFn) -> BatchRecord:
    count = draw(st.integers(0, 40))
    first = draw(st.integers(1, U64_MAX - count + 1))
    term = draw(u64)
    items = []
    for i in range(count):
        if draw(st.integers(0, 4)) == 0:  # a few term changes: several runs
            term = draw(u64)
        kind = draw(st.sampled_from(list(EntryKind)))
        items.append(Entry(first + i, term, kind, draw(st.binary(max_size=40))))
    snapshot = draw(st.none() | st.tuples(u64, u64))
    hard_state = draw(st.none() | st.builds(HardState, u64, st.none() | u64, u64))
    return BatchRecord(snapshot, items, hard_state)


def _payload(record: bytes) -> memoryview:
    scanner = RecordScanner(record, 0)
    ((_, record_type, payload),) = list(scanner)
    assert scanner.defect is None
    assert record_type == RecordType.PACKED
    return payload


@given(batches())
@settings(max_examples=300)
def test_packed_batches_round_trip(batch: BatchRecord) -> None:
    decoded = decode_packed_batch(_payload(encode_batch(batch)))
    assert decoded.snapshot == batch.snapshot
    assert decoded.hard_state == batch.hard_state
    assert decoded.entries == list(batch.entries)
    assert all(type(e.data) is bytes for e in decoded.entries)


@given(batches())
@settings(max_examples=100)
def test_cbor_and_packed_records_decode_to_the_same_batch(batch: BatchRecord) -> None:
    scanner = RecordScanner(encode_batch_cbor(batch), 0)
    ((_, record_type, payload),) = list(scanner)
    assert record_type == RecordType.BATCH
    assert decode_any_batch(record_type, payload) == decode_packed_batch(
        _payload(encode_batch(batch))
    )


def _mutations(payload: bytes, rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(300):
        buf = bytearray(payload)
        for _ in range(rng.randint(1, 3)):
            choice = rng.random()
            if choice < 0.5 and buf:
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            elif choice < 0.7 and buf:
                del buf[rng.randrange(len(buf)) :]
            elif choice < 0.85:
                buf[rng.randrange(len(buf) + 1) : 0] = rng.randbytes(rng.randint(1, 8))
            elif len(buf) >= 4:  # a big count or length, where the decoder must not trust it
                at = rng.randrange(len(buf) - 3)
                buf[at : at + 4] = struct.pack(">I", rng.choice((0, 1, 2**20, 2**32 - 1)))
        out.append(bytes(buf))
    return out


@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_hostile_packed_payloads_raise_value_error_only(count: int) -> None:
    rng = random.Random(count)
    terms = [1, 1, 2, 2, 2, 5, 5][:count]
    items = [Entry(10 + i, t, EntryKind(i % 3), bytes([i]) * i) for i, t in enumerate(terms)]
    batch = BatchRecord((9, 1), items, HardState(5, 2, 9))
    payload = bytes(_payload(encode_batch(batch)))
    for mutated in _mutations(payload, rng):
        try:
            decoded = decode_packed_batch(mutated)
        except ValueError:
            continue
        # Whatever decodes must be a well-formed batch the replay can apply.
        indexes = [e.index for e in decoded.entries]
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes))) if indexes else True
        assert all(1 <= i <= U64_MAX for i in indexes)
        assert all(type(e.kind) is EntryKind and type(e.data) is bytes for e in decoded.entries)


def test_the_single_entry_fast_path_agrees_with_the_general_decoder() -> None:
    rng = random.Random(7)
    payload = bytes(_payload(encode_batch(BatchRecord(None, entries(3, 3, 2), None))))
    offset = 8  # flags, reserved, count
    for mutated in [payload, *_mutations(payload, rng)]:
        results: list[Entry | None] = []
        for decode in (fmt._unpack_one_entry, lambda b, o: fmt._unpack_entries(b, o, 1)[0]):
            try:
                results.append(decode(mutated, offset))
            except ValueError:
                results.append(None)
        assert results[0] == results[1]


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (
            BatchRecord(
                None, [Entry(1, 1, EntryKind.NORMAL, b""), Entry(3, 1, EntryKind.NORMAL, b"")], None
            ),
            "consecutive",
        ),
        (BatchRecord(None, [Entry(1, 2**64, EntryKind.NORMAL, b"")], None), "layout"),
        (BatchRecord(None, [Entry(1, 1, 7, b"")], None), "kind"),  # type: ignore[arg-type]
        (BatchRecord(None, (), HardState(-1, None, 0)), "layout"),
    ],
)
def test_batches_the_layout_cannot_hold_are_refused(batch: BatchRecord, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_batch(batch)


def test_a_refused_batch_leaves_the_wal_usable() -> None:
    wal = MemoryWal()
    wal.open(CONF)
    wal.save(HardState(1, 1, 0), entries(1, 2, 1))
    bad = [Entry(3, 1, EntryKind.NORMAL, b"a"), Entry(5, 1, EntryKind.NORMAL, b"b")]
    with pytest.raises(ValueError, match="consecutive"):
        wal.save(None, bad)
    wal.save(None, entries(3, 4, 1))
    wal.crash("lose")
    assert wal.open(CONF).entries == entries(1, 4, 1)


def _first_batch_offset(wal: MemoryWal, path: str) -> int:
    """Where the first batch record starts (after the segment header and STATE)."""
    scanner = RecordScanner(wal.disk.read(path), SEGMENT_HEADER_BYTES)
    return [offset for offset, _, _ in scanner][1]


def _rewrite_from(wal: MemoryWal, path: str, offset: int, *records: bytes) -> None:
    wal.disk.cut(path, offset)
    for record in records:
        wal.disk.append(path, record)
    wal.disk.fsync(path)
    wal.crash("lose")


def test_a_log_written_as_cbor_batches_replays_and_accepts_packed_appends() -> None:
    wal = MemoryWal()
    wal.open(CONF)
    wal.save(HardState(1, 1, 0), entries(1, 1, 1))
    path = f"{wal.wal_dir}/{wal.disk.listdir(wal.wal_dir)[0]}"
    # The records as the first WAL version wrote them: CBOR BATCH.
    _rewrite_from(
        wal,
        path,
        _first_batch_offset(wal, path),
        encode_batch_cbor(BatchRecord(None, entries(1, 3, 1), HardState(1, 1, 0))),
        encode_batch_cbor(BatchRecord(None, entries(3, 4, 2), HardState(2, 2, 1))),
    )
    boot = wal.open(CONF)
    assert boot.entries == entries(1, 2, 1) + entries(3, 4, 2)
    assert boot.hard_state == HardState(2, 2, 1)
    wal.save(HardState(2, 2, 4), entries(5, 6, 2))  # PACKED, after the CBOR records
    wal.crash("lose")
    assert wal.open(CONF).entries == entries(1, 2, 1) + entries(3, 6, 2)


def test_a_malformed_packed_payload_with_a_good_checksum_refuses_to_start() -> None:
    wal = MemoryWal()
    wal.open(CONF)
    wal.save(HardState(1, 1, 0), entries(1, 3, 1))
    path = f"{wal.wal_dir}/{wal.disk.listdir(wal.wal_dir)[0]}"
    offset = _first_batch_offset(wal, path)
    payload = bytearray(_payload(wal.disk.read(path)[offset:]))
    # The last data length (just before 3 x 5 bytes of data) claims 7 bytes, not 5.
    payload[-15 - 4 : -15] = struct.pack(">I", 7)
    _rewrite_from(
        wal,
        path,
        offset,
        fmt.encode_record(RecordType.PACKED, bytes(payload)),  # checksum matches
        encode_batch(BatchRecord(None, (), HardState(1, 1, 1))),  # so it is not the tail
    )
    with pytest.raises(CorruptLogError, match="malformed PACKED record") as info:
        wal.open(CONF)
    assert info.value.offset == offset
