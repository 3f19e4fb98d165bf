"""The WAL and snapshot store on a simulated disk, for the deterministic simulation.

`MemoryWal` is the real `SyncWal` over `MemoryFiles`, so the simulation exercises the
same record format and the same recovery code as production: a crash keeps only what was
fsynced (optionally plus a torn prefix of the rest), and the next `open` repairs or
refuses it exactly as on a real disk.  ``write`` without ``sync`` models a batch whose
fsync has not finished yet.
"""

from __future__ import annotations

import random
from typing import Final

from felix.storage.files import MemoryFiles, UnsyncedMode
from felix.storage.segmented_wal import SegmentedWal, SyncWal
from felix.storage.snapshots import SNAPSHOTS_KEEP_DEFAULT, SnapshotStore

MEMORY_SEGMENT_BYTES_MAX: Final = 1024 * 1024  # small, so simulations rotate and compact


class MemoryWal(SyncWal):
    """A `SyncWal` on its own simulated disk (``disk``), with `crash` for power loss."""

    def __init__(
        self,
        *,
        disk: MemoryFiles | None = None,
        directory: str = "/node",
        segment_bytes_max: int = MEMORY_SEGMENT_BYTES_MAX,
        snapshots_keep: int = SNAPSHOTS_KEEP_DEFAULT,
    ) -> None:
        self.disk = disk if disk is not None else MemoryFiles()
        super().__init__(
            directory,
            files=self.disk,
            segment_bytes_max=segment_bytes_max,
            snapshots_keep=snapshots_keep,
        )

    def crash(
        self,
        unsynced: UnsyncedMode = "lose",
        *,
        torn_bytes: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Power loss and reboot: drop what was not synced (see `MemoryFiles.crash`).

        The instance is reset to its unopened state; call `open` to recover.
        """
        self.disk.crash(unsynced, torn_bytes=torn_bytes, rng=rng)
        SyncWal.__init__(
            self,
            self.directory,
            files=self.disk,
            segment_bytes_max=self.segment_bytes_max,
            snapshots_keep=self.snapshots.keep,
        )

    def as_async(self) -> SegmentedWal:
        """The async facade, running inline (no threads: safe under MockClock)."""
        return SegmentedWal(self, offload=False)


class MemorySnapshotStore(SnapshotStore):
    """A `SnapshotStore` on its own simulated disk (``disk``)."""

    def __init__(
        self,
        *,
        disk: MemoryFiles | None = None,
        directory: str = "/snap",
        keep: int = SNAPSHOTS_KEEP_DEFAULT,
    ) -> None:
        self.disk = disk if disk is not None else MemoryFiles()
        super().__init__(directory, self.disk, keep)

    def crash(self, unsynced: UnsyncedMode = "lose") -> None:
        """Power loss and reboot; call `open` afterwards to clear temp files."""
        self.disk.crash(unsynced)
