"""Backup files: one cluster's metadata state at one version, checksummed, written
atomically (docs/architecture.md §14).

Layout (the snapshot file's framing, with its own magic and meta)::

     0       4        6      8            12           16          16+m        16+m+n
    +-------+--------+------+------------+------------+-----------+-----------+---------+
    | magic | format | zero | meta_len m | hcrc u32   | meta CBOR | data      | crc u32 |
    | FXBK  |  u16   | u16  |    u32     | crc32(0..12| (Backup-  | n = meta. | crc32 of|
    |       |        |      |            |  + meta)   |  Meta)    |  size     |  data   |
    +-------+--------+------+------------+------------+-----------+-----------+---------+

``data`` is the control plane's own snapshot of the state (`MetadataState.snapshot`:
records, token hashes, lineage), so a restored cluster keeps its brokers' tokens.
`read_backup` checks the framing and both checksums, and `load_backup` also rebuilds the
state and refuses it unless its digest and version are the ones the meta names.  A file
is written to ``<path>.tmp``, fsynced, renamed and its directory fsynced: a crash leaves
the old file or the new one, never half of one.
"""

from __future__ import annotations

import posixpath
import struct
import zlib
from dataclasses import dataclass
from typing import Annotated, Final

from felix.metadata.errors import SnapshotError
from felix.metadata.state import MetadataState
from felix.proto.cbor import (
    MaxLen,
    dumps,
    from_plain,
    safe_loads,
    schema_depth,
    to_plain,
    wire_type,
)
from felix.proto.errors import ProtocolError
from felix.storage.files import Files, OsFiles, append_all

BACKUP_MAGIC: Final = b"FXBK"
BACKUP_FORMAT: Final = 1
BACKUP_SUFFIX: Final = ".fxbk"
TEMP_SUFFIX: Final = ".tmp"
_HEADER: Final = struct.Struct(">4sHHI")
HEADER_BYTES: Final = _HEADER.size + 4
META_BYTES_MAX: Final = 4096
_U32: Final = struct.Struct(">I")


class BackupError(Exception):
    """A file that is not a usable backup; the message names the file and the problem."""


@wire_type
@dataclass(frozen=True, slots=True)
class BackupMeta:
    cluster_id: Annotated[str, MaxLen(256)]
    version: int  # the Raft index the state was applied to
    digest: Annotated[bytes, MaxLen(64)]
    history: Annotated[str, MaxLen(64)]  # the state's lineage ("" before any restore)
    created_ms: int  # wall clock of the saving tool, for people
    size: int
    crc32: int


def backup_meta(cluster_id: str, state: MetadataState, data: bytes, created_ms: int) -> BackupMeta:
    return BackupMeta(
        cluster_id, state.version, state.digest, state.history, created_ms,
        len(data), zlib.crc32(data),
    )  # fmt: skip


def encode_backup(meta: BackupMeta, data: bytes) -> bytes:
    if meta.size != len(data) or meta.crc32 != zlib.crc32(data):
        raise ValueError("backup meta size/crc32 do not describe the data")
    meta_bytes = dumps(to_plain(meta))
    head = _HEADER.pack(BACKUP_MAGIC, BACKUP_FORMAT, 0, len(meta_bytes))
    header = head + _U32.pack(zlib.crc32(meta_bytes, zlib.crc32(head))) + meta_bytes
    return header + data + _U32.pack(meta.crc32)


def write_backup(path: str, meta: BackupMeta, data: bytes, files: Files | None = None) -> None:
    """Write atomically and durably: returns once the whole file survives a crash."""
    files = files if files is not None else OsFiles()
    directory = posixpath.dirname(path) or "."
    temp = path + TEMP_SUFFIX
    if files.exists(temp):
        files.remove(temp)  # a crash left it: never acknowledged
    files.create(temp)
    append_all(files, temp, encode_backup(meta, data))
    files.fsync(temp)
    files.rename(temp, path)
    files.fsync_dir(directory)


def is_backup(head: bytes) -> bool:
    return head[:4] == BACKUP_MAGIC


def read_backup(path: str, files: Files | None = None) -> tuple[BackupMeta, bytes]:
    """The meta and the state bytes, framing and checksums checked; `BackupError`."""
    files = files if files is not None else OsFiles()
    try:
        blob = files.read(path)
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(blob) < HEADER_BYTES:
        raise BackupError(f"{path}: {len(blob)} bytes: too short for a backup (cut short?)")
    magic, version, _zero, meta_len = _HEADER.unpack_from(blob)
    if magic != BACKUP_MAGIC:
        raise BackupError(f"{path}: not a Felix backup (magic {magic!r}, expected FXBK)")
    if version != BACKUP_FORMAT:
        raise BackupError(f"{path}: backup format {version}; this felix reads {BACKUP_FORMAT}")
    if meta_len > META_BYTES_MAX or len(blob) < HEADER_BYTES + meta_len:
        raise BackupError(f"{path}: header of {meta_len} bytes cut short")
    meta_bytes = blob[HEADER_BYTES : HEADER_BYTES + meta_len]
    if _U32.unpack_from(blob, _HEADER.size)[0] != zlib.crc32(meta_bytes, zlib.crc32(blob[:12])):
        raise BackupError(f"{path}: header checksum mismatch (the file is damaged)")
    try:
        meta = from_plain(BackupMeta, safe_loads(meta_bytes, max_depth=schema_depth(BackupMeta)))
    except ProtocolError as exc:
        raise BackupError(f"{path}: bad backup header: {exc}") from None
    start = HEADER_BYTES + meta_len
    if len(blob) != start + meta.size + 4:
        raise BackupError(
            f"{path}: {len(blob)} bytes, its header promises {start + meta.size + 4} (cut short?)"
        )
    data = blob[start : start + meta.size]
    if zlib.crc32(data) != meta.crc32 or _U32.unpack_from(blob, start + meta.size)[0] != meta.crc32:
        raise BackupError(f"{path}: data checksum mismatch at byte {start} (the file is damaged)")
    return meta, data


def load_backup(path: str, files: Files | None = None) -> tuple[BackupMeta, MetadataState]:
    """`read_backup`, then the state rebuilt and checked against the meta."""
    meta, data = read_backup(path, files)
    try:
        state = MetadataState.restore(data)
    except SnapshotError as exc:
        raise BackupError(f"{path}: the state inside does not load: {exc}") from None
    if (state.version, state.digest, state.history) != (
        meta.version, meta.digest, meta.history
    ):  # fmt: skip
        raise BackupError(f"{path}: the state inside is not the one its header names")
    return meta, state
