"""Smoke test of `bench.fanout --tls`: the real command, tiny, so the harness never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fanout_plain_and_tls(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--subscribers", "5", "--publishes", "3",
         "--runs", "2", "--tls", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    rows = payload["results"]
    assert [(r["run"], r["tls"]) for r in rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert all(r["us_per_subscriber"] > 0 and r["slow_disconnects"] == 0 for r in rows)
    (ratio,) = payload["tls_vs_plain"]
    assert ratio["subscribers"] == "5" and len(ratio["ratio"].split("/")) == 3
