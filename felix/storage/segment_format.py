"""On-disk layout of WAL segments (pure: no trio, os or time; bytes in, values out).

Theory of operation
-------------------
The WAL is a numbered sequence of segment files, ``<seq:016x>-<first_index:016x>.wal``.
Each starts with a fixed header, then records.  Every ``Ready`` becomes exactly **one**
batch record (PACKED), so a batch is durable as a whole or not at all: after a crash a
batch is either complete with a good checksum, or it is the torn final record of the last
segment and recovery truncates it (it was never acknowledged: the fsync never returned).

Segment header (28 bytes, big-endian)::

     0       4       6       8                16                24      28
    +-------+-------+-------+----------------+----------------+-------+
    | magic |version| zero  |   seq (u64)    | first_index u64| crc32 |
    | FXWL  |  u16  |  u16  |                |                | of 0..24
    +-------+-------+-------+----------------+----------------+-------+

Record (16 bytes of framing around a payload)::

     0            4      5        8            12              12+n          16+n
    +------------+------+--------+------------+---------------+-------------+
    | length u32 | type | 3 zero | hcrc u32   | payload       | crc u32     |
    | n = payload|  u8  | bytes  | crc32(0..8)|   n bytes     | crc32(0..8 +|
    |   bytes    |      |        |            |               |  payload)   |
    +------------+------+--------+------------+---------------+-------------+

The header has its own checksum so a flipped bit in ``length`` is caught as corruption
instead of looking like a record that runs past the end of the file (a "torn tail").
Checksums are CRC-32 (``zlib.crc32``, IEEE polynomial): crc32c would be the usual choice
but it is not in the standard library, and CRC-32 detects the same error classes
(all burst errors up to 32 bits, any odd number of flipped bits).

Record types and payloads:

* STATE (CBOR array) ``[term, vote|null, commit, base_index, base_term, last_index]`` --
  first record of every segment: the hard state, the snapshot the log starts after, and
  the last log index when the segment was opened.  Each segment is self-describing, so
  older segments can be deleted after a snapshot without losing the hard state.
* PACKED -- one ``Ready``: an optional snapshot marker (the log restarts after it),
  entries (the log is first truncated from the first entry's index), then the hard state.
  What the WAL writes.  A packed binary layout (big-endian), because encoding entries as
  CBOR cost more than the fsync at a batch of 256::

      flags u8 (1: snapshot marker, 2: hard state, 4: the hard state has a vote)
      3 zero bytes, count u32 (entries)
      [snap_index u64, snap_term u64]              if flags & 1
      [term u64, vote u64 (0 if none), commit u64]  if flags & 2
      if count > 0:
        first_index u64, runs u32 (r)              entry i has index first_index + i
        r x run length u32, r x term u64           terms run-length encoded, in order
        count x kind u8, count x data length u32
        the entries' data, concatenated

  Decoding checks every count, length and value against the bytes actually present
  (after the record checksum passed), so hostile bytes raise ValueError, never more.
* BATCH (CBOR array, read only) ``[[snap_index, snap_term]|null, [[index, term, kind,
  data], ...], hard_state|null]`` -- the same content as PACKED, as the first version of
  the WAL wrote it.  Still replayed, so an existing log needs no migration; a binary
  that predates PACKED refuses a log holding one (as an invalid record type).

`RecordScanner` walks a segment and stops at the first defect; `Defect.torn` says
whether the defect is the kind a crash leaves at the tail (partial header, record cut
short, zero-filled tail, a final record whose checksum fails, a record followed only by
the zeros a torn append leaves) or damage a crash cannot
explain.  Deciding what to do with it is the WAL's job, not this module's.
"""

from __future__ import annotations

import enum
import itertools
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
    BATCH = 2  # CBOR: read only (logs written before PACKED)
    PACKED = 3  # what `encode_batch` writes


_RECORD_TYPES: Final = frozenset(int(t) for t in RecordType)
BATCH_TYPES: Final = frozenset((RecordType.BATCH, RecordType.PACKED))
_KINDS: Final = {int(k): k for k in EntryKind}
_KIND_BYTES: Final = bytes(sorted(_KINDS))
# indexed by a kind byte already checked against _KIND_BYTES
_KIND_BY_BYTE: Final = tuple(_KINDS.get(b, EntryKind.NORMAL) for b in range(256))
_PACKED_HEAD: Final = struct.Struct(">B3xI")  # flags, count
_PAIR: Final = struct.Struct(">QQ")  # snapshot marker
_HARD_STATE: Final = struct.Struct(">QQQ")
_ENTRIES_HEAD: Final = struct.Struct(">QI")  # first index, term runs
_FLAG_SNAPSHOT: Final = 1
_FLAG_HARD_STATE: Final = 2
_FLAG_VOTE: Final = 4
_PACKED_PREFIXES: Final = {  # flags -> everything before the entries section
    flags: struct.Struct(
        ">B3sI"
        + ("QQ" if flags & _FLAG_SNAPSHOT else "")
        + ("QQQ" if flags & _FLAG_HARD_STATE else "")
    )
    for flags in range(8)
    if not (flags & _FLAG_VOTE and not flags & _FLAG_HARD_STATE)
}
# first index, runs, run length, term, kind, data length: one entry's tables
_ONE_ENTRY: Final = struct.Struct(">QIIQBI")


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
    """The record the WAL writes for one batch (PACKED); ValueError if it cannot be."""
    entries = batch.entries
    count = len(entries)
    flags = 0
    parts: list[bytes] = [b""]
    try:
        if batch.snapshot is not None:
            flags |= _FLAG_SNAPSHOT
            parts.append(_PAIR.pack(*batch.snapshot))
        hs = batch.hard_state
        if hs is not None:
            flags |= _FLAG_HARD_STATE
            if hs.vote is not None:
                flags |= _FLAG_VOTE
            parts.append(_HARD_STATE.pack(hs.term, hs.vote or 0, hs.commit))
        if count:
            _pack_entries(entries, parts)
        parts[0] = _PACKED_HEAD.pack(flags, count)
    except struct.error as exc:
        raise ValueError(f"batch does not fit the WAL record layout: {exc}") from None
    return _record(RecordType.PACKED, parts)


def _pack_entries(entries: Sequence[Entry], parts: list[bytes]) -> None:
    count = len(entries)
    if count > ENTRIES_PER_RECORD_MAX:
        raise ValueError(f"a batch of {count} entries exceeds {ENTRIES_PER_RECORD_MAX}")
    first = entries[0].index
    if [e.index for e in entries] != list(range(first, first + count)):
        raise ValueError("the entries of a batch must have consecutive indexes")
    terms = [e.term for e in entries]
    if terms.count(terms[0]) == count:
        run_terms: Sequence[int] = (terms[0],)
        run_lengths: Sequence[int] = (count,)
    else:
        runs = [(term, len(list(group))) for term, group in itertools.groupby(terms)]
        run_terms = [term for term, _ in runs]
        run_lengths = [length for _, length in runs]
    kinds = bytes([e.kind for e in entries])
    if kinds.translate(None, _KIND_BYTES):
        raise ValueError(f"unknown entry kind in {sorted(set(kinds))}")
    datas = [e.data for e in entries]
    runs_count = len(run_terms)
    parts += (
        _ENTRIES_HEAD.pack(first, runs_count),
        struct.pack(f">{runs_count}I", *run_lengths),
        struct.pack(f">{runs_count}Q", *run_terms),
        kinds,
        struct.pack(f">{count}I", *map(len, datas)),
        b"".join(datas),
    )


def _record(record_type: RecordType, parts: list[bytes]) -> bytes:
    """`encode_record` of ``b"".join(parts)``, copying the payload only once."""
    length = sum(map(len, parts))
    if length > RECORD_BYTES_MAX:
        raise ValueError(
            f"a WAL record of {length} bytes exceeds RECORD_BYTES_MAX={RECORD_BYTES_MAX}"
        )
    head = RECORD_HEADER.pack(length, record_type)
    hcrc = crc = zlib.crc32(head)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join((head, _U32.pack(hcrc), *parts, _U32.pack(crc)))


def encode_batch_cbor(batch: BatchRecord) -> bytes:
    """A BATCH record as the first WAL version wrote it (for tests of reading old logs)."""
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


def decode_packed_batch(payload: bytes | memoryview) -> BatchRecord:
    """Decode a PACKED payload; raises ValueError if it is malformed in any way."""
    buf = bytes(payload)
    size = len(buf)
    prefix = _PACKED_PREFIXES.get(buf[0]) if size else None
    if prefix is None:
        raise ValueError(f"PACKED payload has unknown flags ({size} bytes)")
    if size < prefix.size:
        raise ValueError(f"PACKED payload of {size} bytes is shorter than its header")
    flags, reserved, count, *fields = prefix.unpack_from(buf)
    if reserved != b"\0\0\0":
        raise ValueError("PACKED header has reserved bits set")
    snapshot: tuple[int, int] | None = None
    if flags & _FLAG_SNAPSHOT:
        snapshot = (fields[0], fields[1])
        del fields[:2]
    hard_state: HardState | None = None
    if flags & _FLAG_HARD_STATE:
        term, vote, commit = fields
        if flags & _FLAG_VOTE:
            hard_state = HardState(term, vote, commit)
        elif vote == 0:
            hard_state = HardState(term, None, commit)
        else:
            raise ValueError("PACKED hard state without a vote has a nonzero vote field")
    offset = prefix.size
    if count == 1:
        entries = [_unpack_one_entry(buf, offset)]
    elif count:
        entries = _unpack_entries(buf, offset, count)
    elif offset != size:
        raise ValueError(f"PACKED payload has {size - offset} trailing bytes")
    else:
        entries = []
    return BatchRecord(snapshot, entries, hard_state)


def _unpack_one_entry(buf: bytes, offset: int) -> Entry:
    """`_unpack_entries` for ``count == 1`` (the replay hot path at low load)."""
    _need(len(buf), offset, _ONE_ENTRY.size, "entry tables")
    index, runs, run_length, term, kind, length = _ONE_ENTRY.unpack_from(buf, offset)
    offset += _ONE_ENTRY.size
    if index < 1 or runs != 1 or run_length != 1:
        raise ValueError(f"PACKED entry {index} has {runs} term runs of length {run_length}")
    if kind not in _KINDS:
        raise ValueError(f"unknown entry kind in {[kind]}")
    if length != len(buf) - offset:
        raise ValueError(
            f"PACKED entry data lengths add up to {length}, {len(buf) - offset} bytes remain"
        )
    return Entry(index, term, _KINDS[kind], buf[offset:])


def _unpack_entries(buf: bytes, offset: int, count: int) -> list[Entry]:
    """The entries section of a PACKED payload, which must end exactly at ``len(buf)``."""
    size = len(buf)
    if count > ENTRIES_PER_RECORD_MAX:
        raise ValueError(f"PACKED batch holds {count} entries (max {ENTRIES_PER_RECORD_MAX})")
    _need(size, offset, _ENTRIES_HEAD.size, "entries header")
    first, runs = _ENTRIES_HEAD.unpack_from(buf, offset)
    offset += _ENTRIES_HEAD.size
    if first < 1 or first > U64_MAX - count + 1:
        raise ValueError(f"PACKED entries {first}..+{count} out of range")
    if not 1 <= runs <= count:
        raise ValueError(f"PACKED batch of {count} entries has {runs} term runs")
    _need(size, offset, runs * 12 + count * 5, "entry tables")
    run_lengths = struct.unpack_from(f">{runs}I", buf, offset)
    offset += 4 * runs
    run_terms = struct.unpack_from(f">{runs}Q", buf, offset)
    offset += 8 * runs
    if min(run_lengths) < 1 or sum(run_lengths) != count:
        raise ValueError(f"PACKED term runs {run_lengths} do not add up to {count} entries")
    kinds = buf[offset : offset + count]
    offset += count
    if kinds.translate(None, _KIND_BYTES):
        raise ValueError(f"unknown entry kind in {sorted(set(kinds))}")
    lengths = struct.unpack_from(f">{count}I", buf, offset)
    offset += 4 * count
    if sum(lengths) != size - offset:
        raise ValueError(
            f"PACKED entry data lengths add up to {sum(lengths)}, {size - offset} bytes remain"
        )
    if runs == 1:
        terms: Iterator[int] = itertools.repeat(run_terms[0], count)
    else:
        terms = itertools.chain.from_iterable(map(itertools.repeat, run_terms, run_lengths))
    bounds = list(itertools.accumulate(lengths, initial=offset))
    datas = [buf[start:stop] for start, stop in itertools.pairwise(bounds)]
    kind_of = _KIND_BY_BYTE.__getitem__
    return list(map(Entry, range(first, first + count), terms, map(kind_of, kinds), datas))


def _need(size: int, offset: int, wanted: int, what: str) -> None:
    if size - offset < wanted:
        raise ValueError(f"PACKED payload cut short in the {what} (offset {offset})")


def decode_any_batch(record_type: int, payload: bytes | memoryview) -> BatchRecord:
    """Decode a batch record of either type (`BATCH_TYPES`)."""
    if record_type == RecordType.PACKED:
        return decode_packed_batch(payload)
    if record_type == RecordType.BATCH:
        return decode_batch(payload)
    raise ValueError(f"record type {record_type} is not a batch")


PAYLOAD_ERRORS: Final = (ValueError, ProtocolError)
"""What the payload decoders raise for bytes with a good checksum but a bad shape."""
