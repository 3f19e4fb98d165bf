"""Scheduled backups: leader soft state that writes a backup file every
``backup.interval_s`` and keeps the newest ``backup.keep`` (docs/architecture.md §14).

Only the leader writes (followers hold the same state; one writer per cluster).  A
file is `felix.storage.backup`'s: checksummed, written to a temp name, fsynced, renamed,
so a crash in the middle leaves the earlier backups and at worst a temp file, which the
next round deletes.  Files are named ``<cluster>-<version:016x>.fxbk`` and pruned
oldest first, by version, after each good write; a failed write is logged, counted and
retried at the next interval, and never prunes.
"""

from __future__ import annotations

import logging
import posixpath
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from felix.config import BackupConfig
from felix.raft.types import Role
from felix.server.metadata_sm import MetadataStore
from felix.server.raft_node import RaftNode
from felix.storage.backup import BACKUP_SUFFIX, TEMP_SUFFIX, BackupMeta, write_backup
from felix.storage.files import Files, OsFiles

log = logging.getLogger("felix.backups")

NAME_VERSION_HEX: Final = 16


@dataclass(slots=True)
class BackupStats:
    """What /metrics shows: ``last_ok_at`` on `time.monotonic` (None: never)."""

    written: int = 0
    failed: int = 0
    last_ok_at: float | None = None
    last_path: str = ""


def backup_name(cluster_id: str, version: int) -> str:
    return f"{cluster_id}-{version:0{NAME_VERSION_HEX}x}{BACKUP_SUFFIX}"


class BackupScheduler:
    def __init__(
        self,
        node: RaftNode,
        store: MetadataStore,
        config: BackupConfig,
        cluster_id: str,
        *,
        files: Files | None = None,
        encode_in_thread: bool = True,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.node = node
        self.store = store
        self.config = config
        self.cluster_id = cluster_id
        self.files: Files = files if files is not None else OsFiles()
        self.encode_in_thread = encode_in_thread  # False on MockClock: no real threads
        self.wall_ms = wall_ms
        self.stats = BackupStats()

    async def run(self) -> None:
        """Every ``interval_s``: a backup if this node leads.  Never raises (a failed
        round is counted and logged)."""
        if self.config.interval_s <= 0:
            return
        while True:
            await trio.sleep(self.config.interval_s)
            if self.node.core.role is Role.LEADER:
                await self.backup_now()

    async def backup_now(self) -> str | None:
        """One backup of the applied state; its path, or None if it failed."""
        state = self.store.state
        version, digest, history = state.version, state.digest, state.history
        encode = state.snapshot_encoder()
        try:
            data = await trio.to_thread.run_sync(encode) if self.encode_in_thread else encode()
            meta = BackupMeta(
                self.cluster_id, version, digest, history, self.wall_ms(), len(data),
                zlib.crc32(data),
            )  # fmt: skip
            path = posixpath.join(self.config.dir, backup_name(self.cluster_id, version))
            self.files.makedirs(self.config.dir)
            self._remove_temps()
            if self.encode_in_thread:
                await trio.to_thread.run_sync(write_backup, path, meta, data, self.files)
            else:
                write_backup(path, meta, data, self.files)
            self._prune()
        except OSError as exc:
            self.stats.failed += 1
            log.warning("backup at version %d failed: %s", version, exc)
            return None
        self.stats.written += 1
        self.stats.last_ok_at = time.monotonic()
        self.stats.last_path = path
        log.info("backup at version %d: %s (%d bytes)", version, path, len(data))
        return path

    def names(self) -> list[str]:
        """This cluster's backup files in ``dir``, oldest (lowest version) first."""
        prefix = f"{self.cluster_id}-"
        found = [
            n
            for n in self.files.listdir(self.config.dir)
            if n.startswith(prefix)
            and n.endswith(BACKUP_SUFFIX)
            and len(n) == len(prefix) + NAME_VERSION_HEX + len(BACKUP_SUFFIX)
        ]
        return sorted(found)

    def _prune(self) -> None:
        names = self.names()
        old = names[: max(0, len(names) - self.config.keep)]
        for name in old:
            self.files.remove(posixpath.join(self.config.dir, name))
        if old:
            self.files.fsync_dir(self.config.dir)

    def _remove_temps(self) -> None:
        """Temp files an interrupted round left (never a finished backup)."""
        prefix = f"{self.cluster_id}-"
        for name in self.files.listdir(self.config.dir):
            if name.startswith(prefix) and name.endswith(BACKUP_SUFFIX + TEMP_SUFFIX):
                self.files.remove(posixpath.join(self.config.dir, name))
