"""Quorum-loss recovery: ``felix recover --force-new-cluster`` (docs/architecture.md §9,
"Quorum-loss recovery").

When a majority of the voters is gone for good, no entry can commit any more (Raft paper
§5.3/§5.4: a quorum of the configuration is needed), and single-server membership changes
need a quorum too (thesis ch. 4).  The way out, as etcd's ``--force-new-cluster``, is to
rewrite one survivor's durable state offline so that its configuration is itself alone.

What `force_new_cluster` writes, to a stopped node's data directory:

1. ``recovered.json`` (`felix.server.datadir.RecoveryRecord`): the members before, so
   that at boot they are fenced off the peer transport until they are added back.
2. A snapshot at the last index L the node holds, of the state after applying *every*
   entry in its log, committed or not, with ``conf`` = {this node} and the term
   T = max(hard-state term, last entry's term) + 1; then, in the WAL, one batch record
   with that snapshot's marker (the log restarts after it) and the hard state
   (T, no vote, commit L).  That is exactly what a follower writes when it installs a
   snapshot (docs/architecture.md §5), so the Raft core boots from it unchanged: the
   snapshot's configuration is the base and no CONFIG entry follows it.

Why every entry: the persisted commit index lags (a commit-only hard-state change is not
synced, docs/architecture.md §5), so this node cannot tell which of its entries the lost
majority had committed and acknowledged; dropping the uncommitted-looking tail could drop
acknowledged writes.  So entries never acknowledged to any client may appear (they were
appended here and are committed by the new one-node cluster), and writes that the lost
nodes committed but never replicated here are lost: no tool can bring back what no
surviving disk holds.

The recovered state gets a new lineage (`recovered_lineage`: the snapshot's ``history``),
so every broker takes one snapshot at its next connection rather than resuming: one that
had seen versions past L from the lost nodes would otherwise hold a mix of two histories.

Why the new term in the snapshot's identity: the recovered history may differ from what
the lost majority committed at the same indexes, and (L, T) names it apart from any old
log, so a node with old data can never match it by log matching (Raft paper §5.3); its
vote requests lose against the higher last term (§5.4.1), and the recovery record keeps
its connections out anyway.

Nothing is written unless every check passes: the directory must be a Felix data
directory, not locked by a running node (`felix.server.datadir.DataDirLock`), its WAL
and newest snapshot must recover cleanly (a torn tail is what a crash leaves and is
repaired as at boot; any other defect is refused), and the node must be a voter of the
membership on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from felix.metadata.errors import SnapshotError
from felix.proto.raft_messages import ConfState, EntryKind, SnapshotMeta
from felix.raft.types import BootState, HardState
from felix.server.datadir import (
    DataDirLock,
    DataDirLocked,
    RecoveryRecord,
    boot_membership,
    write_recovery_record,
)
from felix.server.metadata_sm import MetadataStateMachine
from felix.storage.errors import StorageError
from felix.storage.files import OsFiles
from felix.storage.segment_format import parse_segment_name
from felix.storage.segmented_wal import SNAP_DIR, WAL_DIR, SyncWal
from felix.storage.snapshots import SNAPSHOTS_KEEP_DEFAULT, snapshot_name


class RecoveryRefused(Exception):
    """The data directory cannot be recovered as it is; nothing was written.  The
    message is one line saying why and what to do."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a recovery did (or, as a dry run, would do)."""

    node_id: int
    data_dir: Path
    index: int  # the last index kept: everything up to it is in the new snapshot
    entry_term: int  # the term of that entry
    commit: int  # the commit index persisted before (what was known committed here)
    snapshot_index: int  # the newest snapshot before (0: none)
    old_term: int
    new_term: int
    previous: ConfState | None  # the membership on disk before (None: not on disk)
    done: bool  # False: a dry run, or nothing to do (already a one-node cluster)
    note: str = ""

    @property
    def snapshot_file(self) -> str:
        return posixpath.join(SNAP_DIR, snapshot_name(self.index, self.new_term))

    def lines(self) -> list[str]:
        prev = "not on disk (bootstrap from the peers config)"
        if self.previous is not None:
            prev = _describe(self.previous)
        if self.note:
            return [f"felix recover: {self.note}"]
        tail = self.index - self.commit
        head = "is now" if self.done else "would become (dry run: nothing written)"
        return [
            f"felix recover: node {self.node_id} ({self.data_dir}) {head} a one-node cluster",
            f"  kept:       the whole log, up to index {self.index} (term {self.entry_term});"
            f" known committed here: up to {self.commit}",
            *(
                [
                    f"  committed:  entries {self.commit + 1}..{self.index} ({tail}) are"
                    " committed now (they may include writes never acknowledged to a client)"
                ]
                if tail > 0
                else []
            ),
            f"  snapshot:   {self.snapshot_file} (state at version {self.index}; the"
            f" previous one was at {self.snapshot_index or 'none'})",
            f"  term:       {self.new_term} (was {self.old_term})",
            f"  membership: voters {self.node_id} (was {prev})",
            f"  fenced:     {_fenced_text(self)}",
            "next: start this node as before (felix serve, same config); then bring each"
            " other node back with a WIPED data dir, one at a time: felix member add N"
            " --address HOST:PORT, start it, felix member promote N once it caught up",
        ]


def _describe(conf: ConfState) -> str:
    voters = ",".join(map(str, conf.voters)) or "-"
    learners = ",".join(map(str, conf.learners))
    return f"voters {voters}" + (f", learners {learners}" if learners else "")


def _fenced_text(recovery: Recovery) -> str:
    others = _others(recovery.previous, recovery.node_id)
    who = (
        "nodes " + ", ".join(map(str, others))
        if others is not None
        else "every peer of the static config"
    )
    return f"{who}: not dialed, connections refused, until added back (felix member add)"


def _others(previous: ConfState | None, node_id: int) -> tuple[int, ...] | None:
    if previous is None:
        return None
    return tuple(sorted({*previous.voters, *previous.learners} - {node_id}))


class _ReadOnlyFiles(OsFiles):
    """The real disk, read only: every change is dropped, so opening a WAL through it
    replays exactly what the real open would (a torn tail is read up to the tear) and
    writes nothing."""

    def makedirs(self, directory: str) -> None:
        pass

    def listdir(self, directory: str) -> list[str]:
        return super().listdir(directory) if os.path.isdir(directory) else []

    def create(self, path: str) -> None:
        pass

    def append(self, path: str, data: bytes | memoryview) -> int:
        return len(data)

    def fsync(self, path: str) -> None:
        pass

    def fsync_dir(self, directory: str) -> None:
        pass

    def truncate(self, path: str, size: int) -> None:
        pass

    def rename(self, src: str, dst: str) -> None:
        pass

    def remove(self, path: str) -> None:
        pass


def check_data_dir(data_dir: Path) -> None:
    """A Felix data directory has WAL segments; refuse anything else (writes nothing)."""
    if not data_dir.is_dir():
        raise RecoveryRefused(f"{data_dir} is not a directory")
    wal_dir = data_dir / WAL_DIR
    segments = (
        [n for n in os.listdir(wal_dir) if parse_segment_name(n) is not None]
        if wal_dir.is_dir()
        else []
    )
    if not segments:
        raise RecoveryRefused(
            f"{data_dir} is not a Felix data dir (no WAL segments in {wal_dir}): give the"
            " data_dir of the surviving node"
        )


def _read_boot(data_dir: Path, bootstrap: ConfState, keep: int) -> BootState:
    wal = SyncWal(str(data_dir), files=_ReadOnlyFiles(), snapshots_keep=keep)
    try:
        return wal.open(bootstrap)
    except StorageError as exc:
        raise RecoveryRefused(f"the data dir does not recover cleanly: {exc}") from None
    except OSError as exc:
        raise RecoveryRefused(f"cannot read {data_dir}: {exc}") from None


def recovered_lineage(history: str, node_id: int, index: int, term: int) -> str:
    """The lineage (`felix.metadata.snapshot`, ``history``) of a recovered state: new, as the
    history after ``index`` may differ from what brokers saw from the lost majority, so
    every broker takes one snapshot instead of resuming (never a mix of both)."""
    seed = f"recover\0{history}\0{node_id}\0{index}\0{term}".encode()
    return hashlib.sha256(seed).hexdigest()[:32]


def _state_at_end(boot: BootState, node_id: int, term: int) -> tuple[int, bytes]:
    """(version, snapshot bytes) after applying every entry of ``boot``, committed or
    not, on top of its snapshot, in a new lineage."""
    sm = MetadataStateMachine()
    try:
        if boot.snapshot is not None:
            meta, data = boot.snapshot
            sm.restore(data, meta.index)
        for entry in boot.entries:
            sm.apply(entry)
    except SnapshotError as exc:
        raise RecoveryRefused(f"the newest snapshot does not load: {exc}") from None
    state = sm.state
    state.history = recovered_lineage(state.history, node_id, state.version, term)
    return sm.version, sm.snapshot_encoder()()


def force_new_cluster(
    data_dir: Path,
    node_id: int,
    *,
    peers: Iterable[int] | None = None,
    snapshots_keep: int = SNAPSHOTS_KEEP_DEFAULT,
    dry_run: bool = False,
) -> Recovery:
    """Make ``data_dir`` (node ``node_id``'s, stopped) a one-node cluster of ``node_id``
    (see the module docstring); raises `RecoveryRefused` with nothing written.

    ``peers`` are the other voters of the static config, if known: with them the
    membership before the recovery is known even when the data dir holds neither a
    snapshot nor a CONFIG entry (the bootstrap membership is not on disk)."""
    check_data_dir(data_dir)
    lock: DataDirLock | None = None
    try:
        lock = DataDirLock.acquire(data_dir, create=False)
    except FileNotFoundError:
        pass  # no node ever ran with a lock here: taken below, before anything is written
    except DataDirLocked as exc:
        raise RecoveryRefused(str(exc)) from None
    try:
        known_peers = None if peers is None else tuple(peers)
        bootstrap = ConfState(tuple(sorted({node_id, *(known_peers or ())})), ())
        boot = _read_boot(data_dir, bootstrap, snapshots_keep)
        recovery, data = _plan(data_dir, node_id, boot, known_peers is not None, dry_run)
        if data is not None:
            if lock is None:
                lock = DataDirLock.acquire(data_dir)
            _write(recovery, known_peers, data, snapshots_keep, bootstrap, boot, lock)
        return recovery
    finally:
        if lock is not None:
            lock.release()


def _plan(
    data_dir: Path, node_id: int, boot: BootState, peers_known: bool, dry_run: bool
) -> tuple[Recovery, bytes | None]:
    """What to do, and the new snapshot's bytes (None: nothing to write)."""
    on_disk = boot.snapshot is not None or any(e.kind is EntryKind.CONFIG for e in boot.entries)
    previous = boot_membership(boot) if on_disk or peers_known else None
    if previous is not None and node_id not in previous.voters:
        raise RecoveryRefused(
            f"node {node_id} is not a voter of the membership in {data_dir}"
            f" ({_describe(previous)}): wrong --node-id, or the data dir of another node?"
        )
    hs = boot.hard_state
    snap = boot.snapshot[0] if boot.snapshot is not None else None
    snap_index, snap_term = (snap.index, snap.term) if snap is not None else (0, 0)
    last_index = boot.entries[-1].index if boot.entries else snap_index
    last_term = boot.entries[-1].term if boot.entries else snap_term
    if last_index == 0:
        raise RecoveryRefused(
            f"{data_dir} holds no log entries: nothing to recover (start a new cluster instead)"
        )
    new_term = max(hs.term, last_term) + 1
    recovery = Recovery(
        node_id, data_dir, last_index, last_term, hs.commit, snap_index, hs.term, new_term,
        previous, not dry_run,
    )  # fmt: skip
    if previous == ConfState((node_id,), ()):
        note = (
            f"node {node_id} in {data_dir} is already a one-node cluster (voters {node_id}):"
            " nothing to do"
        )
        return dataclasses.replace(recovery, new_term=hs.term, done=False, note=note), None
    version, data = _state_at_end(boot, node_id, new_term)
    assert version == last_index, f"state at {version}, log at {last_index}"
    return recovery, None if dry_run else data


def _write(
    recovery: Recovery,
    known_peers: tuple[int, ...] | None,
    data: bytes,
    keep: int,
    bootstrap: ConfState,
    boot: BootState,
    lock: DataDirLock,
) -> None:
    lock.write_pid()
    data_dir = recovery.data_dir
    node_id, index, term = recovery.node_id, recovery.index, recovery.new_term
    previous = _others(recovery.previous, node_id)
    if previous is None and known_peers is not None:
        previous = tuple(sorted(set(known_peers) - {node_id}))
    write_recovery_record(data_dir, RecoveryRecord(node_id, index, term, previous))
    wal = SyncWal(str(data_dir), snapshots_keep=keep)
    try:
        reopened = wal.open(bootstrap)  # repairs a torn tail exactly as the dry run read it
        if (reopened.hard_state, reopened.entries[-1:]) != (boot.hard_state, boot.entries[-1:]):
            raise RecoveryRefused(f"{data_dir} changed while it was being read: try again")
        meta = SnapshotMeta(index, term, ConfState((node_id,), ()), len(data), zlib.crc32(data))
        wal.save(HardState(term, None, index), (), (meta, data))
    finally:
        wal.close()
    check = _read_boot(data_dir, bootstrap, keep)
    assert check.snapshot is not None and check.snapshot[0] == meta, "recovery not on disk"
    assert boot_membership(check) == ConfState((node_id,), ()) and not check.entries
