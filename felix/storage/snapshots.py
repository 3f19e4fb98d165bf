"""Snapshot files: written atomically, checked on every read, the newest K kept.

Theory of operation
-------------------
A snapshot is one file, ``<index:016x>-<term:016x>.snap``::

     0       4        6      8            12           16          16+m        16+m+n
    +-------+--------+------+------------+------------+-----------+-----------+---------+
    | magic | version| zero | meta_len m | hcrc u32   | meta CBOR | data      | crc u32 |
    | FXSN  |  u16   | u16  |    u32     | crc32(0..12| (Snapshot | n = meta. | crc32 of|
    |       |        |      |            |  + meta)   |  Meta)    |  size     |  data   |
    +-------+--------+------+------------+------------+-----------+-----------+---------+

The file is written to ``<name>.tmp``, fsynced, renamed into place and the directory
fsynced: a crash leaves either the old set of snapshots or the new one, plus perhaps a
stale ``.tmp`` that `SnapshotStore.open` deletes (it was never acknowledged).  A final
file that is cut short or fails its checksum cannot come from a crash, so it is refused
with `CorruptSnapshotError`, never used and never deleted silently: boot falls back to
an older kept snapshot plus the log, which the WAL keeps from the oldest kept snapshot
on (`oldest_index`; docs/architecture.md §4, "Snapshot fallback").  The trailer repeats
``meta.crc32`` so a receiver can check a transfer it reassembled from chunks.
"""

from __future__ import annotations

import posixpath
import struct
import zlib
from typing import Final

from felix.proto.cbor import dumps, from_plain, safe_loads, schema_depth, to_plain
from felix.proto.errors import ProtocolError
from felix.proto.raft_messages import ConfState, SnapshotMeta
from felix.storage.errors import CorruptSnapshotError
from felix.storage.files import Files, OsFiles, append_all

SNAPSHOT_MAGIC: Final = b"FXSN"
SNAPSHOT_VERSION: Final = 1
SNAPSHOT_SUFFIX: Final = ".snap"
TEMP_SUFFIX: Final = ".tmp"
_HEADER: Final = struct.Struct(">4sHHI")
HEADER_BYTES: Final = _HEADER.size + 4
META_BYTES_MAX: Final = 64 * 1024
SNAPSHOTS_KEEP_DEFAULT: Final = 3
_U32: Final = struct.Struct(">I")


def snapshot_meta(index: int, term: int, conf: ConfState, data: bytes) -> SnapshotMeta:
    """The meta for ``data`` taken at ``index``/``term`` (size and checksum filled in)."""
    return SnapshotMeta(index, term, conf, len(data), zlib.crc32(data))


def snapshot_name(index: int, term: int) -> str:
    return f"{index:016x}-{term:016x}{SNAPSHOT_SUFFIX}"


def parse_snapshot_name(name: str) -> tuple[int, int] | None:
    if not name.endswith(SNAPSHOT_SUFFIX) or len(name) != 33 + len(SNAPSHOT_SUFFIX):
        return None
    try:
        return int(name[:16], 16), int(name[17:33], 16)
    except ValueError:
        return None


def encode_snapshot_header(meta: SnapshotMeta) -> bytes:
    meta_bytes = dumps(to_plain(meta))
    head = _HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, len(meta_bytes))
    return head + _U32.pack(zlib.crc32(meta_bytes, zlib.crc32(head))) + meta_bytes


def decode_snapshot_header(path: str, head: bytes) -> tuple[SnapshotMeta, int]:
    """``(meta, data_offset)`` from the first bytes of a snapshot file."""
    if len(head) < HEADER_BYTES:
        raise CorruptSnapshotError(path, 0, "snapshot header cut short")
    magic, version, _zero, meta_len = _HEADER.unpack_from(head)
    if magic != SNAPSHOT_MAGIC:
        raise CorruptSnapshotError(path, 0, f"bad magic {magic!r} (not a Felix snapshot)")
    if version != SNAPSHOT_VERSION:
        raise CorruptSnapshotError(path, 4, f"unsupported snapshot format version {version}")
    if meta_len > META_BYTES_MAX or len(head) < HEADER_BYTES + meta_len:
        raise CorruptSnapshotError(path, 8, f"snapshot meta of {meta_len} bytes cut short")
    meta_bytes = head[HEADER_BYTES : HEADER_BYTES + meta_len]
    crc = zlib.crc32(meta_bytes, zlib.crc32(head[: _HEADER.size]))
    if _U32.unpack_from(head, _HEADER.size)[0] != crc:
        raise CorruptSnapshotError(path, 12, "snapshot header checksum mismatch")
    try:
        plain = safe_loads(meta_bytes, max_depth=schema_depth(SnapshotMeta) + 1)
        meta = from_plain(SnapshotMeta, plain)
    except ProtocolError as exc:
        raise CorruptSnapshotError(path, HEADER_BYTES, f"bad snapshot meta: {exc}") from None
    return meta, HEADER_BYTES + meta_len


def read_snapshot_meta(files: Files, path: str) -> tuple[SnapshotMeta, int]:
    """``(meta, data_offset)`` of any snapshot file; its length must match the header."""
    head = files.read_range(path, 0, HEADER_BYTES + META_BYTES_MAX)
    meta, data_offset = decode_snapshot_header(path, head)
    expected = data_offset + meta.size + 4
    actual = files.size(path)
    if actual != expected:
        problem = f"file is {actual} bytes, its header promises {expected} (cut short?)"
        raise CorruptSnapshotError(path, min(actual, expected), problem)
    return meta, data_offset


def load_snapshot_file(files: Files, path: str) -> tuple[SnapshotMeta, bytes]:
    """Read and fully check any snapshot file (header, length, data checksum)."""
    meta, data_offset = read_snapshot_meta(files, path)
    blob = files.read(path)
    data = blob[data_offset : data_offset + meta.size]
    if len(data) != meta.size:
        raise CorruptSnapshotError(path, len(blob), "file changed while reading (cut short)")
    trailer = _U32.unpack_from(blob, data_offset + meta.size)[0]
    if zlib.crc32(data) != meta.crc32 or trailer != meta.crc32:
        raise CorruptSnapshotError(path, data_offset, "snapshot data checksum mismatch")
    return meta, data


class SnapshotStore:
    """Snapshot files in one directory, over a `Files` (the real disk by default)."""

    def __init__(
        self, directory: str, files: Files | None = None, keep: int = SNAPSHOTS_KEEP_DEFAULT
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = directory
        self.files: Files = files if files is not None else OsFiles()
        self.keep = keep

    def open(self) -> None:
        """Create the directory and delete temp files a crash left (never acknowledged)."""
        self.files.makedirs(self.directory)
        stale = [n for n in self.files.listdir(self.directory) if n.endswith(TEMP_SUFFIX)]
        for name in stale:
            self.files.remove(self._path(name))
        if stale:
            self.files.fsync_dir(self.directory)

    def names(self) -> list[str]:
        """Snapshot file names, oldest first (by index, then term)."""
        found = [
            (parsed, name)
            for name in self.files.listdir(self.directory)
            if (parsed := parse_snapshot_name(name)) is not None
        ]
        return [name for _, name in sorted(found)]

    def oldest_index(self) -> int | None:
        """The index of the oldest kept snapshot, read from its file name alone (so a
        damaged file still counts): the WAL keeps the log after it (docs/architecture.md
        §4, "Snapshot fallback")."""
        names = self.names()
        parsed = parse_snapshot_name(names[0]) if names else None
        return parsed[0] if parsed is not None else None

    def latest_meta(self) -> SnapshotMeta | None:
        names = self.names()
        return self.read_meta(names[-1])[0] if names else None

    def latest(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot, fully checked; `CorruptSnapshotError` if it is damaged."""
        names = self.names()
        return self.load(names[-1]) if names else None

    def read_meta(self, name: str) -> tuple[SnapshotMeta, int]:
        """``(meta, data_offset)`` of snapshot file ``name``, its size and name checked."""
        path = self._path(name)
        meta, data_offset = read_snapshot_meta(self.files, path)
        if parse_snapshot_name(name) != (meta.index, meta.term):
            raise CorruptSnapshotError(path, HEADER_BYTES, "file name disagrees with its meta")
        return meta, data_offset

    def load(self, name: str) -> tuple[SnapshotMeta, bytes]:
        self.read_meta(name)
        return load_snapshot_file(self.files, self._path(name))

    def read_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        """``size`` bytes of the snapshot's data from ``offset`` (for InstallSnapshot)."""
        name = snapshot_name(meta.index, meta.term)
        stored, data_offset = self.read_meta(name)
        if stored != meta:
            raise ValueError(f"{name} holds a different snapshot than {meta}")
        size = max(0, min(size, meta.size - offset))
        return self.files.read_range(self._path(name), data_offset + offset, size)

    def save(self, meta: SnapshotMeta, data: bytes) -> None:
        """Write ``data`` atomically and durably; returns once it survives a crash."""
        if meta.size != len(data) or meta.crc32 != zlib.crc32(data):
            raise ValueError("snapshot meta size/crc32 do not describe the data")
        receiver = self.receive(meta)
        receiver.write_chunk(0, data)
        receiver.finish()

    def receive(self, meta: SnapshotMeta) -> SnapshotReceiver:
        """Start writing a snapshot that arrives in chunks (InstallSnapshot)."""
        return SnapshotReceiver(self, meta)

    def prune(self) -> None:
        """Delete all but the newest ``keep`` snapshots."""
        names = self.names()
        old = names[: max(0, len(names) - self.keep)]
        for name in old:
            self.files.remove(self._path(name))
        if old:
            self.files.fsync_dir(self.directory)

    def path_of(self, name: str) -> str:
        """The path of snapshot file ``name`` in this store."""
        return posixpath.join(self.directory, name)

    _path = path_of


class SnapshotReceiver:
    """Chunks in order into a temp file; `finish` checks size and CRC, then publishes it.

    A chunk at an offset already received is ignored (a retransmission); a gap is an error.
    """

    def __init__(self, store: SnapshotStore, meta: SnapshotMeta) -> None:
        self.store = store
        self.meta = meta
        self.name = snapshot_name(meta.index, meta.term)
        self.temp_path = store._path(self.name + TEMP_SUFFIX)
        self.received = 0
        self._crc = 0
        store.files.create(self.temp_path)
        append_all(store.files, self.temp_path, encode_snapshot_header(meta))

    def write_chunk(self, offset: int, chunk: bytes) -> None:
        if offset + len(chunk) <= self.received:
            return
        if offset != self.received:
            raise ValueError(f"snapshot chunk at {offset}, expected {self.received}")
        if self.received + len(chunk) > self.meta.size:
            raise ValueError("snapshot chunks exceed meta.size")
        append_all(self.store.files, self.temp_path, chunk)
        self._crc = zlib.crc32(chunk, self._crc)
        self.received += len(chunk)

    def finish(self) -> None:
        """Check, fsync, rename into place, fsync the directory, prune old snapshots."""
        files, meta = self.store.files, self.meta
        if self.received != meta.size or self._crc != meta.crc32:
            self.abort()
            raise ValueError("reassembled snapshot does not match its meta (size or crc32)")
        append_all(files, self.temp_path, _U32.pack(meta.crc32))
        files.fsync(self.temp_path)
        files.rename(self.temp_path, self.store._path(self.name))
        files.fsync_dir(self.store.directory)
        self.store.prune()

    def abort(self) -> None:
        if self.store.files.exists(self.temp_path):
            self.store.files.remove(self.temp_path)
