"""On-disk layout of WAL segments (pure: no trio, os or time; bytes in, values out).

Theory of operation
-------------------
The WAL is a numbered sequence of segment files, ``<seq:016x>-<first_index:016x>.wal``.
Each starts with a fixed header, then records.  Every ``Ready`` becomes exactly **one**
BATCH record, so a batch is durable as a whole or not at all: after a crash a batch is
either complete with a good checksum, or it is the torn final record of the last segment
and recovery truncates it (it was never acknowledged, because the fsync never returned).

Segment header (28 bytes, big-endian)::

     0       4       6       8                16                24      28
    +-------+-------+-------+----------------+----------------+-------+
    | magic |version| zero  |   seq (u64)    | first_index u64| crc32 |
    | FXWL  |  u16  |  u16  |                |                | of 0..24
    +-------+-------+-------+----------------+----------------+-------+

Record (16 bytes of framing around a CBOR payload)::

     0            4      5        8            12              12+n          16+n
    +------------+------+--------+------------+---------------+-------------+
    | length u32 | type | 3 zero | hcrc u32   | payload (CBOR)| crc u32     |
    | n = payload|  u8  | bytes  | crc32(0..8)|   n bytes     | crc32(0..8 +|
    |   bytes    |      |        |            |               |  payload)   |
    +------------+------+--------+------------+---------------+-------------+

The header has its own checksum so a flipped bit in ``length`` is caught as corruption
instead of looking like a record that runs past the end of the file (a "torn tail").
Checksums are CRC-32 (``zlib.crc32``, IEEE polynomial): crc32c would be the usual choice
but it is not in the standard library, and CRC-32 detects the same error classes
(all burst errors up to 32 bits, any odd number of flipped bits).

Record types and payloads (CBOR arrays, positional to stay small):

* STATE ``[term, vote|null, commit, base_index, base_term, last_index]`` -- first record
  of every segment: the hard state, the snapshot the log starts after, and the last log
  index when the segment was opened.  Each segment is self-describing, so older segments
  can be deleted after a snapshot without losing the hard state.
* BATCH ``[[snap_index, snap_term]|null, [[index, term, kind, data], ...], hard_state|null]``
  -- one ``Ready``: an optional snapshot marker (the log restarts after it), entries
  (the log is first truncated from ``entries[0].index``), then the hard state.

`RecordScanner` walks a segment and stops at the first defect; `Defect.torn` says
whether the defect is the kind a crash leaves at the tail (partial header, record cut
short, zero-filled tail, a final record whose checksum fails, a record followed only by
the zeros a torn append leaves) or damage a crash cannot
explain.  Deciding what to do with it is the WAL's job, not this module's.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from felix.proto.cbor import dumps, safe_loads
from felix.proto.errors import ProtocolError
from felix.proto.raft_messages import Entry, EntryKind
from felix.raft.types import HardState

SEGMENT_MAGIC: Final = b"FXWL"
FORMAT_VERSION: Final = 1
SEGMENT_SUFFIX: Final = ".wal"
SEGMENT_HEADER: Final = struct.Struct(">4sHHQQ")
SEGMENT_HEADER_BYTES: Final = SEGMENT_HEADER.size + 4  # + crc32
RECORD_HEADER: Final = struct.Struct(">IB3x")
RECORD_HEADER_BYTES: Final = RECORD_HEADER.size + 4  # + header crc32
RECORD_OVERHEAD_BYTES: Final = RECORD_HEADER_BYTES + 4  # + payload crc32
RECORD_BYTES_MAX: Final = 64 * 1024 * 1024  # one batch; a larger Ready is refused
ENTRIES_PER_RECORD_MAX: Final = 1 << 20
PAYLOAD_DEPTH_MAX: Final = 4  # batch -> entries -> entry -> scalar
U64_MAX: Final = 2**64 - 1
_U32: Final = struct.Struct(">I")


class RecordType(enum.IntEnum):
    STATE = 1
    BATCH = 2


_RECORD_TYPES: Final = frozenset(int(t) for t in RecordType)
_KINDS: Final = {int(k): k for k in EntryKind}


class FormatError(Exception):
    """Bytes that do not follow this layout, at ``offset`` within one file."""

    def __init__(self, offset: int, problem: str, torn: bool = False) -> None:
        self.offset = offset
        self.problem = problem
        self.torn = torn
        super().__init__(f"offset {offset}: {problem}")


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    seq: int
    first_index: int  # the last log index when the segment was opened, plus one


@dataclass(frozen=True, slots=True)
class StateRecord:
    hard_state: HardState
    base_index: int  # the snapshot the log starts after (0, 0: none)
    base_term: int
    last_index: int


@dataclass(frozen=True, slots=True)
class BatchRecord:
    snapshot: tuple[int, int] | None  # (index, term): the log restarts after it
    entries: Sequence[Entry]
    hard_state: HardState | None


@dataclass(frozen=True, slots=True)
class Defect:
    offset: int
    problem: str
    torn: bool  # the kind of damage a crash leaves at the very end of the log


# ---------------------------------------------------------------------------------------
# Names and headers


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> SegmentHeader | None:
    """``(seq, first_index)`` from a segment file name, or None if it is not one."""
    if not name.endswith(SEGMENT_SUFFIX) or len(name) != 33 + len(SEGMENT_SUFFIX):
        return None
    seq_hex, dash, first_hex = name[:16], name[16], name[17:33]
    if dash != "-":
        return None
    try:
        return SegmentHeader(int(seq_hex, 16), int(first_hex, 16))
    except ValueError:
        return None


def encode_segment_header(seq: int, first_index: int) -> bytes:
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, seq, first_index)
    return body + _U32.pack(zlib.crc32(body))


def decode_segment_header(buf: bytes | memoryview) -> SegmentHeader:
    """Raises `FormatError` (``torn`` if the header is merely incomplete or all zeros)."""
    if len(buf) < SEGMENT_HEADER_BYTES:
        raise FormatError(0, f"segment header cut short ({len(buf)} bytes)", torn=True)
    head = bytes(buf[:SEGMENT_HEADER_BYTES])
    if head.count(0) == len(head):
        raise FormatError(0, "segment header is all zeros", torn=True)
    magic, version, _zero, seq, first_index = SEGMENT_HEADER.unpack_from(head)
    if _U32.unpack_from(head, SEGMENT_HEADER.size)[0] != zlib.crc32(head[: SEGMENT_HEADER.size]):
        raise FormatError(0, "segment header checksum mismatch")
    if magic != SEGMENT_MAGIC:
        raise FormatError(0, f"bad magic {magic!r} (not a Felix WAL segment)")
    if version != FORMAT_VERSION:
        raise FormatError(0, f"unsupported WAL format version {version}")
    return SegmentHeader(seq, first_index)


# ---------------------------------------------------------------------------------------
# Records


def encode_record(record_type: RecordType, payload: bytes) -> bytes:
    if len(payload) > RECORD_BYTES_MAX:
        raise ValueError(
            f"a WAL record of {len(payload)} bytes exceeds RECORD_BYTES_MAX={RECORD_BYTES_MAX}"
        )
    head = RECORD_HEADER.pack(len(payload), record_type)
    hcrc = zlib.crc32(head)
    return b"".join((head, _U32.pack(hcrc), payload, _U32.pack(zlib.crc32(payload, hcrc))))


class RecordScanner:
    """Iterate ``(offset, type, payload)`` over the records in ``buf[start:]``.

    Iteration stops at the end of the buffer or at the first defect; afterwards ``end`` is
    the offset just past the last good record and ``defect`` describes what stopped it.
    """

    def __init__(self, buf: bytes, start: int) -> None:
        self.buf = buf
        self.end = start
        self.defect: Defect | None = None

    def __iter__(self) -> Iterator[tuple[int, int, memoryview]]:
        buf, size, view = self.buf, len(self.buf), memoryview(self.buf)
        offset = self.end
        unpack_head, unpack_u32, crc32 = RECORD_HEADER.unpack_from, _U32.unpack_from, zlib.crc32
        while offset < size:
            if size - offset < RECORD_HEADER_BYTES:
                self.defect = Defect(offset, "record header cut short", torn=True)
                return
            length, record_type = unpack_head(buf, offset)
            hcrc = crc32(view[offset : offset + 8])
            if unpack_u32(buf, offset + 8)[0] != hcrc:
                self.defect = self._bad_header(offset)
                return
            if record_type not in _RECORD_TYPES or length > RECORD_BYTES_MAX:
                problem = f"record of type {record_type} and {length} bytes is not valid here"
                self.defect = Defect(offset, problem, torn=False)
                return
            start = offset + RECORD_HEADER_BYTES
            stop = start + length
            if stop + 4 > size:
                self.defect = Defect(offset, "final record cut short", torn=True)
                return
            payload = view[start:stop]
            if unpack_u32(buf, stop)[0] != crc32(payload, hcrc):
                final = _all_zero(buf, stop + 4)
                self.defect = Defect(offset, "record checksum mismatch", torn=final)
                return
            yield offset, record_type, payload
            offset = stop + 4
            self.end = offset

    def _bad_header(self, offset: int) -> Defect:
        if _all_zero(self.buf, offset):
            return Defect(offset, "zero-filled tail", torn=True)
        if self.buf.endswith(b"\0\0\0\0"):
            # A torn append: a prefix of the record, then blocks the crash left as zeros.
            # An intact final record ends with its CRC, four zero bytes with p = 2**-32.
            return Defect(offset, "record header damaged by a zero-filled torn write", torn=True)
        return Defect(offset, "record header checksum mismatch", torn=False)


def _all_zero(buf: bytes, offset: int) -> bool:
    """True if ``buf[offset:]`` is empty or all zero bytes (the tail a crash leaves)."""
    rest = buf[offset:]
    return rest.count(0) == len(rest)


# ---------------------------------------------------------------------------------------
# Payloads


def _hard_state_plain(hs: HardState) -> list[object]:
    return [hs.term, hs.vote, hs.commit]


def _hard_state(plain: object) -> HardState:
    if type(plain) is not list or len(plain) != 3:
        raise ValueError("hard state must be [term, vote, commit]")
    term, vote, commit = plain
    if not (_is_u64(term) and _is_u64(commit) and (vote is None or _is_u64(vote))):
        raise ValueError("hard state fields must be unsigned integers (vote may be null)")
    return HardState(term, vote, commit)


def _is_u64(value: object) -> bool:
    return type(value) is int and 0 <= value <= U64_MAX


def encode_state(state: StateRecord) -> bytes:
    hs = state.hard_state
    plain = [*_hard_state_plain(hs), state.base_index, state.base_term, state.last_index]
    return encode_record(RecordType.STATE, dumps(plain))


def encode_batch(batch: BatchRecord) -> bytes:
    snap = list(batch.snapshot) if batch.snapshot is not None else None
    entries = [[e.index, e.term, int(e.kind), e.data] for e in batch.entries]
    hs = _hard_state_plain(batch.hard_state) if batch.hard_state is not None else None
    return encode_record(RecordType.BATCH, dumps([snap, entries, hs]))


def decode_state(payload: bytes | memoryview) -> StateRecord:
    """Raises ValueError or `ProtocolError` on a malformed payload."""
    plain = safe_loads(payload, max_depth=PAYLOAD_DEPTH_MAX)
    if type(plain) is not list or len(plain) != 6:
        raise ValueError("STATE payload must be an array of 6 items")
    hs = _hard_state(plain[:3])
    base_index, base_term, last_index = plain[3:]
    if not (_is_u64(base_index) and _is_u64(base_term) and _is_u64(last_index)):
        raise ValueError("STATE indexes must be unsigned integers")
    if last_index < base_index:
        raise ValueError(f"STATE last_index {last_index} < base_index {base_index}")
    return StateRecord(hs, base_index, base_term, last_index)


def decode_batch(payload: bytes | memoryview) -> BatchRecord:
    """Raises ValueError or `ProtocolError` on a malformed payload.

    This is the replay hot path (a million entries at boot), so entries are checked with
    plain type tests instead of the generic schema walker.
    """
    plain = safe_loads(payload, max_depth=PAYLOAD_DEPTH_MAX)
    if type(plain) is not list or len(plain) != 3:
        raise ValueError("BATCH payload must be an array of 3 items")
    snap_plain, entries_plain, hs_plain = plain
    snapshot: tuple[int, int] | None = None
    if snap_plain is not None:
        if (
            type(snap_plain) is not list
            or len(snap_plain) != 2
            or not all(_is_u64(v) for v in snap_plain)
        ):
            raise ValueError("BATCH snapshot marker must be [index, term]")
        snapshot = (snap_plain[0], snap_plain[1])
    entries = _decode_entries(entries_plain)
    hs = _hard_state(hs_plain) if hs_plain is not None else None
    return BatchRecord(snapshot, entries, hs)


def _decode_entries(plain: object) -> list[Entry]:
    if type(plain) is not list:
        raise ValueError("BATCH entries must be an array")
    if len(plain) > ENTRIES_PER_RECORD_MAX:
        raise ValueError(f"BATCH holds {len(plain)} entries (max {ENTRIES_PER_RECORD_MAX})")
    kinds = _KINDS
    out: list[Entry] = []
    append = out.append
    expected = -1
    for item in plain:
        if type(item) is not list or len(item) != 4:
            raise ValueError("an entry must be [index, term, kind, data]")
        index, term, kind, data = item
        if type(index) is not int or type(term) is not int or type(data) is not bytes:
            raise ValueError("entry index/term must be integers and data bytes")
        if kind not in kinds or type(kind) is not int:
            raise ValueError(f"unknown entry kind {kind!r}")
        if index != expected and expected != -1:
            raise ValueError(f"entry {index} follows {expected - 1}: indexes must be consecutive")
        if index < 1 or term < 0 or index > U64_MAX or term > U64_MAX:
            raise ValueError(f"entry index {index} / term {term} out of range")
        expected = index + 1
        append(Entry(index, term, kinds[kind], data))
    return out


PAYLOAD_ERRORS: Final = (ValueError, ProtocolError)
"""What the payload decoders raise for bytes with a good checksum but a bad shape."""
