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

SNAPSHOTS_RESTORE_OR_REJOIN = (
    "do not edit or delete files by hand: restore this node's data directory from a backup, "
    "or wipe it and re-add the node as a new member "
    "(`felix snapshot inspect FILE` shows what a snapshot file holds, `felix wal dump` the log)"
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


class NoUsableSnapshotError(CorruptSnapshotError):
    """No kept snapshot can be joined with the log, and the log alone does not reach back
    to index 1 (docs/architecture.md §4, "Snapshot fallback").

    ``damaged`` are the snapshot files that failed their checks (left in place);
    ``problems`` says why each other candidate -- an intact snapshot that is older than the
    log, a snapshot the log records but that is missing -- cannot serve.  ``path`` and
    ``offset`` are those of the newest damaged file (the one boot would have used).
    """

    def __init__(
        self,
        snap_dir: str,
        damaged: tuple[CorruptSnapshotError, ...],
        problems: tuple[str, ...],
        what_to_do: str = SNAPSHOTS_RESTORE_OR_REJOIN,
    ) -> None:
        self.damaged = damaged
        self.problems = problems
        self.snap_dir = snap_dir
        self.path = damaged[0].path if damaged else snap_dir
        self.offset = damaged[0].offset if damaged else None
        self.what_to_do = what_to_do
        parts = [f"{_where(d.path, d.offset)}: {d.problem}" for d in damaged]
        parts += list(problems)
        self.problem = "no snapshot and log chain to boot from"
        StorageError.__init__(
            self,
            f"{snap_dir}: {self.problem}: {'; '.join(parts)}; the damaged files are left in "
            f"place; {what_to_do}",
        )


def _where(path: str, offset: int | None) -> str:
    return f"{path} at byte offset {offset}" if offset is not None else path


class WalFailedError(StorageError):
    """An earlier write or fsync failed; the WAL refuses further use.

    After a failed fsync the kernel may have dropped the dirty pages and cleared the error
    ("fsyncgate"), so retrying could report success for data that is gone.  The node must
    restart and replay from what is really on disk.
    """
