"""Backup and restore of a large state: `felix snapshot save` against a live node, and
`felix snapshot restore` into a fresh data directory.

    python -m bench.backup [--shards 100000] [--brokers 100] [--runs 3] [--json PATH]

Builds a `MetadataState` of ``--shards`` shards (RF 3) on ``--brokers`` brokers (as
bench.planner does), writes it as a backup file, restores it into a one-member data dir
and starts a real `felix serve` (``--insecure``) there.  Then, ``--runs`` times: `felix
snapshot save` (wall time of the whole command: connect, ReadIndex, encode on the
server, transfer, the client's digest check, the atomic write) and `felix snapshot
restore` into a new dir (wall time: read, check, rebuild, write the WAL and snapshot).
Reported: medians, the file size, and that the saved state equals the built one
(docs/architecture.md §14).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench._report import print_table, write_json
from bench.planner import build
from felix.storage.backup import backup_meta, load_backup, write_backup
from felix.testing.processes import free_ports, http_bytes

FELIX = [sys.executable, "-m", "felix.cli"]


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([*FELIX, *args], capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--brokers", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    state = build(args.shards, args.brokers, 0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed = root / "seed.fxbk"
        data = state.snapshot()
        write_backup(str(seed), backup_meta("bench", state, data, 0), data)
        peer, client, ops = free_ports(3)
        members = f"1=127.0.0.1:{peer}"
        timed(["snapshot", "restore", str(seed), "--data-dir", str(root / "node"), "--node-id",
               "1", "--initial-members", members, "--cluster-id", "bench"])  # fmt: skip
        log = (root / "node.log").open("wb")
        proc = subprocess.Popen(
            [*FELIX, "serve", "--insecure", "--node-id", "1", "--cluster-id", "bench",
             "--data-dir", str(root / "node"), "--listen-peer", f"127.0.0.1:{peer}",
             "--listen-client", f"127.0.0.1:{client}", "--listen-ops", f"127.0.0.1:{ops}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if http_bytes("GET", f"127.0.0.1:{ops}", "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "node never ready"
                time.sleep(0.1)
            saves, restores = [], []
            for run in range(args.runs):
                out = root / f"save-{run}.fxbk"
                saves.append(timed(["snapshot", "save", str(out), "--endpoints",
                                    f"127.0.0.1:{client}", "--timeout", "120"]))  # fmt: skip
                restores.append(timed(["snapshot", "restore", str(out), "--data-dir",
                                       str(root / f"restored-{run}"), "--node-id", "1",
                                       "--initial-members", members]))  # fmt: skip
            meta, saved = load_backup(str(root / "save-0.fxbk"))
            assert saved.digest == state.digest and len(saved.shards) == args.shards
            size = (root / "save-0.fxbk").stat().st_size
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    rows = [
        ["save (felix snapshot save)", statistics.median(saves), min(saves), max(saves)],
        ["restore (felix snapshot restore)", statistics.median(restores), min(restores),
         max(restores)],
    ]  # fmt: skip
    print(f"backup: {args.shards:,} shards on {args.brokers} brokers, file {size:,} bytes;"
          f" seconds over {args.runs} runs")  # fmt: skip
    print_table(["step", "median_s", "min_s", "max_s"], rows)
    write_json(
        "backup",
        {"args": vars(args) | {"json": None}, "save_s": saves, "restore_s": restores,
         "file_bytes": size, "version": meta.version},
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
