"""WAL: group-commit latency beside the raw fsync floor, and boot replay time.

    python -m bench.wal [--iterations 500] [--replay-entries 1000000]

For batch sizes 1, 16 and 256 (32-byte entries) this times ``SyncWal.save`` (one record,
one fsync) and the async facade (the same plus a worker-thread hop), next to a plain
``os.write`` + ``fdatasync`` of the same record size on the same disk in the same run:
the floor no WAL can beat.  The three are interleaved sample by sample, so load from
other jobs skews none of them alone (the 1-minute load average is printed beside the
table).  Target: group commit within 1.3x of the floor.  Then it
writes a log of ``--replay-entries`` small entries and times `SyncWal.open` (target:
1,000,000 entries in under 10 s), once for a log written in batches of 64 and once for
the worst case of one entry per batch.  Data lives in a temp dir, deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import trio

from bench._report import print_table, write_json
from felix.proto.raft_messages import ConfState, Entry, EntryKind
from felix.raft.types import HardState
from felix.storage.segment_format import BatchRecord, encode_batch
from felix.storage.segmented_wal import SegmentedWal, SyncWal

CONF = ConfState((1, 2, 3), ())
DATA = b"m" * 32
BATCH_SIZES = (1, 16, 256)


def _batch(start: int, count: int) -> list[Entry]:
    return [Entry(i, 1, EntryKind.NORMAL, DATA) for i in range(start, start + count)]


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1e6, p99 * 1e6


def commit_samples(directory: str, batch: int, iterations: int) -> dict[str, list[float]]:
    """Seconds per batch for the floor, `SyncWal.save` and the async facade, interleaved.

    The three run round-robin in one process (their order rotating every iteration) so
    that load from other jobs on the machine hits all three alike.  The floor is a plain
    ``os.write`` + ``fdatasync`` of a record of the very size the WAL writes, appended to
    its own file in the same directory: what the disk itself costs per batch.
    """
    record = encode_batch(BatchRecord(None, _batch(1, batch), HardState(1, 1, 0)))
    payload = os.urandom(len(record))

    async def main() -> dict[str, list[float]]:
        path = os.path.join(directory, f"floor-{batch}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sync = SyncWal(os.path.join(directory, f"sync-{batch}"))
        sync.open(CONF)
        facade, _ = await SegmentedWal.open(os.path.join(directory, f"async-{batch}"), CONF)
        samples: dict[str, list[float]] = {"floor": [], "sync": [], "async": []}

        def floor(n: int) -> float:
            start = time.perf_counter()
            os.write(fd, payload)
            os.fdatasync(fd)
            return time.perf_counter() - start

        def wal_sync(n: int) -> float:
            entries = _batch(n * batch + 1, batch)
            hs = HardState(1, 1, n * batch)
            start = time.perf_counter()
            sync.save(hs, entries)
            return time.perf_counter() - start

        async def wal_async(n: int) -> float:
            entries = _batch(n * batch + 1, batch)
            hs = HardState(1, 1, n * batch)
            start = time.perf_counter()
            await facade.append(hs, entries)
            return time.perf_counter() - start

        try:
            for n in range(iterations):
                for which in ("floor", "sync", "async")[n % 3 :] + ("floor", "sync")[: n % 3]:
                    if which == "floor":
                        samples[which].append(floor(n))
                    elif which == "sync":
                        samples[which].append(wal_sync(n))
                    else:
                        samples[which].append(await wal_async(n))
        finally:
            os.close(fd)
            sync.close()
            await facade.aclose()
        return samples

    return trio.run(main)


def commit_rows(directory: str, iterations: int) -> list[dict[str, float]]:
    rows = []
    for batch in BATCH_SIZES:
        record = encode_batch(BatchRecord(None, _batch(1, batch), HardState(1, 1, 0)))
        samples = commit_samples(directory, batch, iterations)
        floor = _percentiles(samples["floor"])
        sync = _percentiles(samples["sync"])
        facade = _percentiles(samples["async"])
        rows.append(
            {
                "batch": batch,
                "record_bytes": len(record),
                "floor_us_p50": floor[0],
                "floor_us_p99": floor[1],
                "wal_us_p50": sync[0],
                "wal_us_p99": sync[1],
                "wal_vs_floor_p50": sync[0] / floor[0],
                "async_us_p50": facade[0],
                "async_us_p99": facade[1],
                "async_vs_floor_p50": facade[0] / floor[0],
                "entries_per_s": batch / (sync[0] / 1e6),
            }
        )
    return rows


def replay_seconds(directory: str, entries: int, batch: int) -> tuple[float, float]:
    """(seconds to write the log without fsyncs, seconds for `SyncWal.open`)."""
    path = os.path.join(directory, f"replay-{batch}")
    wal = SyncWal(path)
    wal.open(CONF)
    start = time.perf_counter()
    for first in range(1, entries + 1, batch):
        wal.write(HardState(1, 1, first), _batch(first, min(batch, entries + 1 - first)))
    wal.sync()
    wal.close()
    written = time.perf_counter() - start
    start = time.perf_counter()
    boot = SyncWal(path).open(CONF)
    elapsed = time.perf_counter() - start
    assert len(boot.entries) == entries
    return written, elapsed


def _timed(label: str, fn: Callable[[], object]) -> None:
    start = time.perf_counter()
    fn()
    print(f"({label}: {time.perf_counter() - start:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--replay-entries", type=int, default=1_000_000)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="felix-bench-wal-") as directory:
        rows = commit_rows(directory, args.iterations)
        load_after = os.getloadavg()[0]
        replays = []
        for batch in (64, 1):
            written, replay = replay_seconds(directory, args.replay_entries, batch)
            replays.append(
                {
                    "entries": args.replay_entries,
                    "written_in_batches_of": batch,
                    "write_s": written,
                    "replay_s": replay,
                }
            )
    print("Group commit: one record + one fsync per batch (latency in microseconds)")
    print(f"(1-minute load average {load_before:.2f} before, {load_after:.2f} after)")
    headers = [
        "batch",
        "bytes",
        "floor p50",
        "floor p99",
        "wal p50",
        "wal p99",
        "wal/floor",
        "async p50",
        "async p99",
        "async/floor",
        "entries/s",
    ]
    print_table(headers, [list(row.values()) for row in rows])
    print()
    print("Boot replay (SyncWal.open)")
    print_table(["entries", "batch", "write s", "replay s"], [list(r.values()) for r in replays])
    path = write_json(
        "wal",
        {
            "group_commit": rows,
            "load_average_1m": [load_before, load_after],
            "replay": replays,
            "targets": {"wal_vs_floor_max": 1.3, "replay_1m_s_max": 10.0},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
