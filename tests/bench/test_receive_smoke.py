"""Smoke test of `bench.receive` (the broker receive-path bench), tiny, so it never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_receive_bench_measures_every_implementation(tmp_path: Path) -> None:
    out = tmp_path / "receive.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.receive", "--brokers", "4", "--messages", "20",
         "--interval-ms", "1", "--repeats", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert set(payload["median"]) == {"view", "lean", "trio-stream"}
    assert all(0 < us < 100_000 for us in payload["median"].values())
    assert "CPU µs per delta message" in proc.stdout
