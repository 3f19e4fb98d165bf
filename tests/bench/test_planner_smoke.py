"""Smoke test of `bench.planner` (one leader pass over a large cluster), tiny, so it never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_planner_bench_runs_passes_that_move_replicas(tmp_path: Path) -> None:
    out = tmp_path / "planner.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.planner", "--shards", "600", "--brokers", "8",
         "--join", "2", "--die", "1", "--passes", "2", "--runs", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["pass"] for r in rows] == [1, 2]
    first = rows[0]
    assert first["moves"] > 0  # a dead broker's replicas and two empty brokers: work to do
    assert 0 < first["entry_bytes_max"] <= 1 << 20
    assert first["command_bytes"] >= first["entry_bytes_max"]
    assert "slowest pass" in proc.stdout
