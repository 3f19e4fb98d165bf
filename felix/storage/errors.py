"""Typed errors for what can be wrong with the bytes on this node's disk.

Every error names the file, the byte offset (when one applies) and what an operator should
do about it, because the only reader of these messages is a human deciding whether a node
may be restarted, restored from a backup, or wiped and re-added as a new member.
"""

from __future__ import annotations

RESTORE_OR_REJOIN = (
    "do not edit or delete files by hand: restore this node's data directory from a backup, "
    "or wipe it and re-add the node as a new member "
    "(`felix wal dump` shows the records before the damage)"
)


class StorageError(Exception):
    """Base class: the node's durable state cannot be used as it is."""


class CorruptLogError(StorageError):
    """A WAL segment is damaged somewhere a crash cannot explain (not a torn tail).

    Such damage may sit under acknowledged entries, so it is never applied and never
    silently dropped: the node refuses to start.
    """

    def __init__(
        self, path: str, offset: int | None, problem: str, what_to_do: str = RESTORE_OR_REJOIN
    ) -> None:
        self.path = path
        self.offset = offset
        self.problem = problem
        self.what_to_do = what_to_do
        where = f"{path} at byte offset {offset}" if offset is not None else path
        super().__init__(f"{where}: {problem}; {what_to_do}")


class CorruptSnapshotError(StorageError):
    """A snapshot file is cut short, fails its checksum or has a malformed header."""

    def __init__(
        self, path: str, offset: int | None, problem: str, what_to_do: str = RESTORE_OR_REJOIN
    ) -> None:
        self.path = path
        self.offset = offset
        self.problem = problem
        self.what_to_do = what_to_do
        where = f"{path} at byte offset {offset}" if offset is not None else path
        super().__init__(f"{where}: {problem}; {what_to_do}")


class WalFailedError(StorageError):
    """An earlier write or fsync failed; the WAL refuses further use.

    After a failed fsync the kernel may have dropped the dirty pages and cleared the error
    ("fsyncgate"), so retrying could report success for data that is gone.  The node must
    restart and replay from what is really on disk.
    """
