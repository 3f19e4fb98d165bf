"""The async facade: the same WAL, driven from Trio (disk work in a worker thread)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from felix.raft.ready import Ready
from felix.raft.types import HardState
from felix.storage.memory_wal import MemoryWal
from felix.storage.segmented_wal import SegmentedWal
from tests.storage.model import CONF, entries, snap


async def test_open_save_reopen_on_real_files(tmp_path: Path) -> None:
    wal, boot = await SegmentedWal.open(str(tmp_path), CONF)
    assert boot.entries == ()
    await wal.save(Ready(hard_state=HardState(1, 1, 0), entries=entries(1, 10, 1)))
    await wal.save_snapshot(*snap(5, 1))
    await wal.save(Ready(hard_state=HardState(1, 1, 5), compact_to=5))
    chunk = await wal.read_snapshot_chunk(snap(5, 1)[0], 0, 3)
    assert chunk == snap(5, 1)[1][:3]
    await wal.aclose()
    again, boot = await SegmentedWal.open(str(tmp_path), CONF)
    assert boot.snapshot == snap(5, 1)
    assert boot.entries == entries(6, 10, 1)
    assert boot.hard_state == HardState(1, 1, 5)
    await again.aclose()


async def test_a_call_cancelled_before_it_starts_writes_nothing(tmp_path: Path) -> None:
    wal, _ = await SegmentedWal.open(str(tmp_path), CONF)
    with trio.CancelScope() as scope:
        scope.cancel()
        await wal.append(HardState(1, 1, 0), entries(1, 1, 1))
    await wal.append(HardState(2, None, 0))
    await wal.aclose()
    _, boot = await SegmentedWal.open(str(tmp_path), CONF)
    assert boot.entries == ()
    assert boot.hard_state == HardState(2, None, 0)


def test_memory_facade_runs_inline_under_mock_clock() -> None:
    memory = MemoryWal()
    memory.open(CONF)
    facade = memory.as_async()

    async def main() -> None:
        start = trio.current_time()
        await facade.append(HardState(1, 1, 0), entries(1, 3, 1))
        assert trio.current_time() == start  # no thread: the clock could not jump

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    memory.crash("lose")
    assert memory.open(CONF).entries == entries(1, 3, 1)
