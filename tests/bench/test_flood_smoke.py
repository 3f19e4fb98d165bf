"""Smoke test of `bench.flood`, tiny: the quiet and flooded runs both complete, the
attacker's connections reach the server's bounds (counted there), and no process the
bench started outlives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.bench.test_propagation_smoke import _children_of_ours

ROOT = Path(__file__).resolve().parents[2]


def test_flood_smoke(tmp_path: Path) -> None:
    out = tmp_path / "flood.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.flood", "--watchers", "3", "--flood", "30",
         "--connect-rate", "200", "--rate", "10", "--duration", "1", "--runs", "1",
         "--json", str(out)],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(tmp_path.glob("felix-flood-*")), "the bench left its temp dir"
    assert not _children_of_ours(tmp_path), "a process the bench started is still running"
    quiet, flooded = json.loads(out.read_text())["results"]
    assert not quiet["flood"] and flooded["flood"]
    assert quiet["complete"] == flooded["complete"] == 10
    assert quiet["felix_client_tls_handshakes_failed_total"] == 0
    assert flooded["felix_client_tls_handshakes_failed_total"] > 0  # the garbage shape
