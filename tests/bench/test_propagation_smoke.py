"""Smoke tests of `bench.propagation`, so the harness never rots: the real command, tiny.

Real `felix serve` processes and broker worker processes on loopback; every process the
bench starts must be gone when it returns.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str, timeout_s: float = 60.0) -> dict[str, Any]:
    out = tmp_path / "out.json"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the bench's own dirs land here too
    proc = subprocess.run(
        [sys.executable, "-m", "bench.propagation", "--json", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(tmp_path.glob("felix-propagation-*")), "the bench left its temp dir"
    assert not _children_of_ours(tmp_path), "a process the bench started is still running"
    payload: dict[str, Any] = json.loads(out.read_text())
    return payload


def _children_of_ours(tmp_path: Path) -> list[int]:
    """PIDs whose command line mentions our temp dir (servers' --data-dir)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(tmp_path).encode() in cmdline:
            alive.append(int(entry.name))
    return alive


def test_steady_rate_smoke(tmp_path: Path) -> None:
    payload = run_bench(
        tmp_path,
        "--brokers", "20", "--rate", "20", "--duration", "2", "--runs", "1",
        "--register", "5", "--plot", str(tmp_path / "out.png"),
    )  # fmt: skip
    result = payload["steady"]["20"]
    assert result["changes_written"] == 40
    assert result["missed"] == 0
    for name in ("commit_ms", "propagation_ms", "all_brokers_ms"):
        figures = result[name]
        assert 0 < figures["p50"] <= figures["p99"] <= figures["max"] < 5000, (name, figures)
    assert result["all_brokers_ms"]["p50"] >= result["propagation_ms"]["p50"]
    run = result["runs"][0]
    assert len(run["raw"]["propagation_ms"]) == 40
    assert all(len(row) == 20 for row in run["raw"]["propagation_ms"])
    assert run["client_stats"]["snapshots"] == 20  # one first view each, no resync
    if importlib.util.find_spec("matplotlib") is not None:  # the optional `bench` extra
        assert (tmp_path / "out.png").stat().st_size > 1000


def test_failover_and_catchup_smoke(tmp_path: Path) -> None:
    payload = run_bench(
        tmp_path,
        "--no-steady", "--brokers", "20", "--register", "5", "--runs", "1",
        "--failover-trials", "1", "--catchup-shards", "1000",
    )  # fmt: skip
    failover = payload["failover"]
    assert failover["trials"] == 1 and failover["missed"] == 0
    trial = failover["per_trial"][0]
    # (the brokers may apply the write before its acknowledgement reaches the writer)
    assert 0 < trial["write_ok_ms"] < 20_000 and 0 < trial["all_brokers_ms"] < 20_000
    assert failover["broker_snapshots"] == 0  # brokers resumed, no resync
    catchup = payload["catchup"]
    learner = catchup["learner"][0]
    assert learner["applied_index"] >= learner["target"]
    assert learner["snapshot_index"] > 0  # it caught up from a snapshot
    assert catchup["fresh_broker"][0]["complete"]


def test_tls_pairs_smoke(tmp_path: Path) -> None:
    """``--tls``: each run twice, plaintext then secure; the secure cluster refuses
    plaintext and tokenless clients, so brokers that applied every change spoke
    ``wss://`` with their broker tokens."""
    payload = run_bench(
        tmp_path,
        "--brokers", "10", "--rate", "20", "--duration", "1", "--runs", "1", "--register", "3",
        "--tls",
    )  # fmt: skip
    plain, tls = payload["steady"]["10"], payload["steady_tls"]["10"]
    assert not plain["runs"][0]["tls"] and tls["runs"][0]["tls"]
    for result in (plain, tls):
        assert result["changes_written"] == 20 and result["missed"] == 0
        assert result["server_cpu_us_per_broker_change"] > 0
    assert tls["runs"][0]["client_stats"]["snapshots"] == 10
    ratio = payload["tls_vs_plain"]["10"]["all_brokers_p99"]
    expected = tls["all_brokers_ms"]["p99"] / plain["all_brokers_ms"]["p99"]
    assert ratio["median"] == expected


def test_no_brokers_smoke(tmp_path: Path) -> None:
    """N = 0: the commit latency with no watching broker (no worker is started)."""
    payload = run_bench(
        tmp_path, "--brokers", "0", "--rate", "20", "--duration", "1", "--runs", "1"
    )  # fmt: skip
    alone = payload["steady"]["0"]
    assert alone["brokers"] == 0 and alone["workers"] == 0
    assert alone["changes_written"] == 20 and alone["missed"] == 0
    assert 0 < alone["commit_ms"]["p50"] <= alone["commit_ms"]["p99"] < 5000
    assert alone["runs"][0]["raw"]["propagation_ms"] == [[] for _ in range(20)]
    assert alone["voters_cpu_ms_per_write"] > 0


def test_storm_smoke(tmp_path: Path) -> None:
    """``--storm``: 20 cold brokers released at once on a 200-shard state; each gets
    the whole state, and each node encodes its snapshot once for all its brokers."""
    payload = run_bench(
        tmp_path,
        "--no-steady", "--storm", "--storm-brokers", "20", "--storm-shards", "200",
        "--runs", "1",
    )  # fmt: skip
    storm = payload["storm"]
    run = storm["runs"][0]
    assert run["complete_views"] == 20
    assert sum(run["brokers_by_node"].values()) == 20
    assert run["served"] == 20  # one snapshot per broker
    for node, brokers in run["brokers_by_node"].items():
        assert run["served_by_node"][node] == brokers
        assert (run["encodes_by_node"][node] > 0) == (brokers > 0)
        assert run["encodes_per_version_by_node"][node] <= 1.0  # never two of one version
    assert min(run["first_view_versions"]) >= run["state_version"]
    assert run["all_views_s"] > 0 and run["server_cpu_s"] >= 0


def test_observers_smoke(tmp_path: Path) -> None:
    """``--observers 2``: every broker watches an observer (the voters serve none), each
    applied every change, and the voters' and observers' CPU per write are reported.
    With two CPUs, ``--pin-brokers`` put the servers (observers too) on the first, the
    workers on the second."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    payload = run_bench(
        tmp_path,
        "--brokers", "10", "--observers", "2", "--rate", "20", "--duration", "1",
        "--runs", "1", "--register", "2", *(["--pin-brokers"] if len(cpus) == 2 else []),
    )  # fmt: skip
    result = payload["steady"]["10"]
    pinned = {"servers": cpus[:1], "workers": cpus[1:]} if len(cpus) == 2 else {}
    assert result["runs"][0]["pinned_cpus"] == pinned
    assert result["changes_written"] == 20 and result["missed"] == 0
    by_node = result["runs"][0]["propagation_ms_by_node"]
    assert set(by_node) <= {"node 101 (observer)", "node 102 (observer)"}, by_node
    assert sum(f["brokers"] for f in by_node.values()) == 10
    assert result["voters_cpu_ms_per_write"] > 0 and result["observers_cpu_ms_per_write"] > 0
