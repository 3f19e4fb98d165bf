"""The async facade: the same WAL, driven from Trio (disk work in a worker thread)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
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


async def test_a_call_cancelled_while_its_disk_work_runs_still_completes_it(
    tmp_path: Path,
) -> None:
    wal, _ = await SegmentedWal.open(str(tmp_path), CONF)
    started = threading.Event()
    release = threading.Event()
    save = wal.core.save

    def slow_save(*args: object) -> None:
        started.set()
        release.wait(10)
        save(*args)  # type: ignore[arg-type]

    wal.core.save = slow_save  # type: ignore[assignment, method-assign]
    finished = False

    async def append() -> None:
        nonlocal finished
        await wal.append(HardState(1, 1, 0), entries(1, 3, 1))
        finished = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append)
        await trio.to_thread.run_sync(started.wait, 10)
        nursery.cancel_scope.cancel()  # the append is in its worker thread by now
        release.set()
    assert finished  # the cancel waited for the disk work and did not interrupt it
    wal.core.save = save  # type: ignore[method-assign]
    await wal.aclose()
    _, boot = await SegmentedWal.open(str(tmp_path), CONF)
    assert boot.entries == entries(1, 3, 1)


async def test_calls_run_one_at_a_time_in_call_order(tmp_path: Path) -> None:
    wal, _ = await SegmentedWal.open(str(tmp_path), CONF)
    order: list[int] = []
    save = wal.core.save

    def recording_save(hard_state: HardState | None, *args: object) -> None:
        assert hard_state is not None
        order.append(hard_state.commit)
        save(hard_state, *args)  # type: ignore[arg-type]

    wal.core.save = recording_save  # type: ignore[assignment, method-assign]
    async with trio.open_nursery() as nursery:
        for n in range(1, 21):
            nursery.start_soon(wal.append, HardState(1, 1, n), entries(n, n, 1))
            await trio.testing.wait_all_tasks_blocked()
    assert order == list(range(1, 21))
    await wal.aclose()
    _, boot = await SegmentedWal.open(str(tmp_path), CONF)
    assert boot.entries == entries(1, 20, 1)
    assert boot.hard_state == HardState(1, 1, 20)


async def test_an_error_in_the_worker_reaches_the_caller_and_releases_the_lock(
    tmp_path: Path,
) -> None:
    wal, _ = await SegmentedWal.open(str(tmp_path), CONF)
    with pytest.raises(ValueError, match="do not fit"):
        await wal.append(None, entries(5, 6, 1))  # a gap after an empty log
    await wal.append(HardState(1, 1, 0), entries(1, 2, 1))
    await wal.aclose()
    _, boot = await SegmentedWal.open(str(tmp_path), CONF)
    assert boot.entries == entries(1, 2, 1)


async def test_start_save_writes_in_the_background_and_wait_returns_when_durable(
    tmp_path: Path,
) -> None:
    wal, _ = await SegmentedWal.open(str(tmp_path), CONF)
    started = threading.Event()
    release = threading.Event()
    save_ready = wal.core.save_ready

    def slow_save_ready(ready: Ready) -> None:
        started.set()
        release.wait(10)
        save_ready(ready)

    wal.core.save_ready = slow_save_ready  # type: ignore[method-assign]
    pending = wal.start_save(Ready(hard_state=HardState(1, 1, 0), entries=entries(1, 3, 1)))
    assert pending is not None
    # The write runs while this task goes on; the WAL is busy until it is awaited.
    await trio.to_thread.run_sync(started.wait, 10)
    assert wal.start_save(Ready(hard_state=HardState(1, 1, 0))) is None
    threading.Timer(0.05, release.set).start()
    with trio.CancelScope() as scope:
        scope.cancel()  # uncancellable, like every started WAL operation
        await pending.wait()
    assert release.is_set()  # it returned only once the write was done
    wal.core.save_ready = save_ready  # type: ignore[method-assign]
    await wal.append(HardState(2, 1, 0), entries(4, 4, 1))  # the lock was released
    await wal.aclose()
    _, boot = await SegmentedWal.open(str(tmp_path), CONF)
    assert boot.entries == entries(1, 4, 1)


async def test_start_save_reports_a_disk_error_and_releases_the_lock(tmp_path: Path) -> None:
    wal, _ = await SegmentedWal.open(str(tmp_path), CONF)
    pending = wal.start_save(Ready(entries=entries(5, 6, 1)))  # a gap after an empty log
    assert pending is not None
    with pytest.raises(ValueError, match="do not fit"):
        await pending.wait()
    await wal.append(HardState(1, 1, 0), entries(1, 2, 1))
    await wal.aclose()


def test_start_save_is_refused_without_offload() -> None:
    memory = MemoryWal()
    memory.open(CONF)
    assert memory.as_async().start_save(Ready(hard_state=HardState(1, 1, 0))) is None
