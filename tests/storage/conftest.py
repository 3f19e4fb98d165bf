"""Fixtures: every contract test runs against the real segmented WAL and the memory WAL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from felix.raft.types import BootState
from felix.storage.memory_wal import MemorySnapshotStore, MemoryWal
from felix.storage.segmented_wal import SyncWal
from felix.storage.snapshots import SnapshotStore
from tests.storage.model import CONF


class Harness:
    """One WAL under test plus a way to restart it (a clean stop, or a power loss for the
    memory WAL: after ``save`` returned, both must keep everything)."""

    def __init__(self, make: Callable[[], SyncWal], crash: Callable[[SyncWal], None]) -> None:
        self._make = make
        self._crash = crash
        self.wal = make()

    def open(self) -> BootState:
        return self.wal.open(CONF)

    def restart(self) -> BootState:
        self._crash(self.wal)
        return self.open()

    def reopen_fresh_instance(self) -> SyncWal:
        self.wal = self._make()
        return self.wal


def _memory_crash(wal: SyncWal) -> None:
    assert isinstance(wal, MemoryWal)
    wal.crash("lose")


def _file_restart(directory: Path, segment_bytes_max: int) -> Callable[[SyncWal], None]:
    def restart(wal: SyncWal) -> None:
        wal.close()
        wal.__init__(str(directory), segment_bytes_max=segment_bytes_max)  # type: ignore[misc]

    return restart


SEGMENT_BYTES_SMALL = 400


@pytest.fixture(params=["segmented", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "segmented":
        make: Callable[[], SyncWal] = lambda: SyncWal(  # noqa: E731
            str(tmp_path), segment_bytes_max=SEGMENT_BYTES_SMALL
        )
        harness = Harness(make, _file_restart(tmp_path, SEGMENT_BYTES_SMALL))
    else:
        harness = Harness(lambda: MemoryWal(segment_bytes_max=SEGMENT_BYTES_SMALL), _memory_crash)
    yield harness
    harness.wal.close()


@pytest.fixture(params=["files", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SnapshotStore:
    if request.param == "files":
        store = SnapshotStore(str(tmp_path / "snap"), keep=2)
    else:
        store = MemorySnapshotStore(keep=2)
    store.open()
    return store
