"""A node's data directory as a whole: the lock that keeps one process in it, and the
record a quorum-loss recovery leaves there (docs/architecture.md §9, "Quorum-loss
recovery").

*The lock.*  ``felix serve`` holds an exclusive ``flock`` on ``<data_dir>/LOCK`` for as
long as the node runs, with its PID written in the file; ``felix recover`` takes the same
lock, so it never rewrites the files of a running node and a node never starts while a
recovery writes.  The kernel drops the lock when the process dies (``kill -9``
included), so a stale file never blocks anything.

*The recovery record* (``<data_dir>/recovered.json``, written atomically by
`felix.server.recover`) says that the membership on disk was rewritten to this node
alone and which nodes were members before.  At boot those nodes, unless they are members
again (added back with ``felix member add``), are left out of the peer transport: not
dialed, and their connections refused (``not a configured peer``), so an old member that
comes back with its old data can never reach the recovered cluster, whatever the static
``peers`` config still says.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from felix.proto.raft_messages import ConfState
from felix.raft.membership import ConfHistory
from felix.raft.types import BootState, EntryKind

LOCK_NAME: Final = "LOCK"
RECOVERY_RECORD_NAME: Final = "recovered.json"

V = TypeVar("V")


class DataDirLocked(Exception):
    """Another process (a running node, or a recovery) holds the data directory."""


class DataDirLock:
    """An exclusive, non-blocking ``flock`` on ``<directory>/LOCK`` (see the module
    docstring); `release` (or process exit) drops it."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path, *, create: bool = True) -> DataDirLock:
        """Take the lock, writing this process's PID into the file; raises
        `DataDirLocked` naming the holder's PID if another process has it.  With
        ``create`` False a missing LOCK file is `FileNotFoundError` (nothing written)."""
        path = directory / LOCK_NAME
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise DataDirLocked(
                f"{directory} is in use by {who} (a running felix node, or felix recover):"
                " stop it first"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, fd)

    def write_pid(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    return None


def lock_holder(directory: Path) -> str | None:
    """Why ``directory`` cannot be locked now (None: it can, or it has no LOCK file).
    Takes and drops the lock; writes nothing."""
    try:
        lock = DataDirLock.acquire(directory, create=False)
    except FileNotFoundError:
        return None
    except DataDirLocked as exc:
        return str(exc)
    lock.release()
    return None


# --- the recovery record -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveryRecord:
    """What `felix.server.recover.force_new_cluster` did (``recovered.json``)."""

    node_id: int
    index: int  # the snapshot the recovery wrote covers the log up to here
    term: int  # the new term
    # The members before the recovery, this node excluded; None if the data directory
    # did not say (no snapshot, no CONFIG entry, no config given to the recovery): then
    # every peer of the static config that is not a member now counts as one.
    previous_members: tuple[int, ...] | None

    def to_json(self) -> str:
        return json.dumps(
            {
                "node_id": self.node_id,
                "index": self.index,
                "term": self.term,
                "previous_members": (
                    None if self.previous_members is None else list(self.previous_members)
                ),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> RecoveryRecord:
        raw = json.loads(text)
        previous = raw["previous_members"]
        return cls(
            int(raw["node_id"]),
            int(raw["index"]),
            int(raw["term"]),
            None if previous is None else tuple(int(n) for n in previous),
        )


def read_recovery_record(directory: Path) -> RecoveryRecord | None:
    path = directory / RECOVERY_RECORD_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return RecoveryRecord.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable recovery record: {exc}") from None


def write_recovery_record(directory: Path, record: RecoveryRecord) -> None:
    """Atomically and durably: temp file, fsync, rename, fsync of the directory."""
    path = directory / RECOVERY_RECORD_NAME
    temp = path.with_name(path.name + ".tmp")
    with temp.open("w") as f:
        f.write(record.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def boot_membership(boot: BootState) -> ConfState:
    """The configuration the Raft core starts in for ``boot``: the snapshot's (or the
    bootstrap one), then every CONFIG entry in the log, committed or not (thesis §4.1)."""
    history = ConfHistory(boot.snapshot[0].conf if boot.snapshot else boot.conf)
    for entry in boot.entries:
        if entry.kind is EntryKind.CONFIG:
            history.append(entry.index, entry.data)
    return history.latest


def fenced_peers(
    record: RecoveryRecord | None, members: ConfState, configured: Iterable[int] = ()
) -> set[int]:
    """Nodes a recovered node must not talk to: the members before the recovery that
    are not members now (if the record does not know them: every ``configured`` peer,
    the static peers config, that is not a member now).  A node added back with
    ``felix member add`` is a member again, so it is not fenced."""
    if record is None:
        return set()
    now = {*members.voters, *members.learners}
    before = record.previous_members
    return set(configured if before is None else before) - now - {record.node_id}


def without(peers: Mapping[int, V], fenced: AbstractSet[int]) -> dict[int, V]:
    return {node: value for node, value in peers.items() if node not in fenced}
