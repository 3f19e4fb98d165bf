"""Smoke test of `bench.idle` (server CPU of idle connections), tiny, so it never rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_idle_bench_samples_the_server_with_its_connections_open(tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.idle", "--connections", "20", "--keepalive-s", "0.2",
         "--sample-s", "1", "--runs", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    (rate,) = payload["server_ms_per_s"]
    # a CPU rate (the /proc clock ticks 10 ms, so a short sample may read 0), never more
    # than the machine's cores
    assert 0 <= rate <= 1000 * (os.cpu_count() or 1)
    assert payload["us_per_s_per_connection"] == [rate * 1000 / 20]
    assert "server CPU with 20 quiet brokers" in proc.stdout
