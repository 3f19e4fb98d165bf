"""Real processes: three `felix serve` on 127.0.0.1, killed, paused and restarted by PID.

Nothing acknowledged may be lost: every write that got a 200 is checked on every node
at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from felix.proto.client_messages import ClientHello, Deltas
from felix.testing.processes import Credentials, ProcessCluster, ServeProcess


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path)
    procs.start_all()
    try:
        yield procs
    finally:
        procs.stop_all()


def write_many(cluster: ProcessCluster, prefix: str, count: int) -> tuple[dict[str, str], int]:
    acked, last = {}, 0
    for i in range(count):
        key, value = f"{prefix}{i}", f"v{i}"
        last = cluster.put(key, value)
        acked[key] = value
    return acked, last


def assert_everywhere(cluster: ProcessCluster, acked: dict[str, str], index: int) -> None:
    for node_id in cluster.nodes:
        cluster.wait_caught_up(node_id, index)
        assert cluster.local_items(node_id, list(acked)) == acked, f"node {node_id}"


def test_kill9_leader_then_restart(cluster: ProcessCluster) -> None:
    acked, _ = write_many(cluster, "a", 20)
    old = cluster.wait_for_leader()
    cluster.nodes[old].kill9()
    new = cluster.wait_for_leader(exclude={old})
    assert new != old
    more, last = write_many(cluster, "b", 20)  # writes continue without the old leader
    acked |= more
    cluster.nodes[old].start()  # restarts from its WAL and catches up
    assert_everywhere(cluster, acked, last)


def test_sigstop_follower_then_leader(cluster: ProcessCluster) -> None:
    acked, _ = write_many(cluster, "a", 5)
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.nodes[follower].signal(signal.SIGSTOP)
    more, _ = write_many(cluster, "b", 10)  # a majority is still up
    acked |= more
    cluster.nodes[follower].signal(signal.SIGCONT)

    cluster.nodes[leader].signal(signal.SIGSTOP)
    new = cluster.wait_for_leader(exclude={leader})
    assert new != leader
    more, last = write_many(cluster, "c", 10)
    acked |= more
    cluster.nodes[leader].signal(signal.SIGCONT)  # wakes up, learns the new term, follows
    assert_everywhere(cluster, acked, last)
    status = cluster.status(leader)
    assert status is not None and status["role"] == "follower"


def test_sigterm_leader_hands_off_and_exits_zero(cluster: ProcessCluster) -> None:
    acked, last = write_many(cluster, "a", 5)
    leader = cluster.wait_for_leader()
    assert cluster.nodes[leader].stop() == 0
    new = cluster.wait_for_leader(timeout_s=5.0, exclude={leader})
    log = cluster.nodes[leader].log_path.read_text()
    assert f"transferring leadership to node {new}" in log
    assert f"node {leader} stopped" in log
    cluster.nodes[leader].start()
    more, last = write_many(cluster, "b", 5)
    assert_everywhere(cluster, acked | more, last)


def test_config_typo_is_refused_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "felix.cli", "serve", "--data-dir", str(tmp_path),
         "--set", "raft.electon_ticks=3"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown key 'raft.electon_ticks'" in result.stderr
    assert "did you mean 'raft.election_ticks'?" in result.stderr


async def _first_watch_message(port: int, from_version: int, creds: Credentials) -> object:
    """Connect (retrying while the restarted node's client port comes up), resume from
    ``from_version``, and return the first message of the stream."""
    with trio.fail_after(20):
        while True:
            try:
                conn = await creds.open(port)
                break
            except OSError:
                await trio.sleep(0.02)
        try:
            await conn.send(ClientHello(None, from_version, ""))
            return await conn.receive()
        finally:
            await conn.aclose()


def test_a_broker_resuming_right_after_a_restart_gets_deltas(
    cluster: ProcessCluster,
) -> None:
    """The node's graph is wired before it runs: the entries it re-applies from its WAL
    at boot reach the watch hub's history, so a resume from an old version is served
    with deltas, not a snapshot it did not need."""
    _, resume_from = write_many(cluster, "a", 10)
    _, last = write_many(cluster, "b", 10)
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.wait_caught_up(follower, last)
    assert cluster.nodes[follower].stop() == 0
    cluster.nodes[follower].start()
    first = trio.run(
        _first_watch_message, cluster.nodes[follower].client_port, resume_from, cluster.creds
    )
    assert isinstance(first, Deltas), f"expected deltas after {resume_from}, got {first!r}"
    assert first.deltas[0].prev_version == resume_from


def _peer_send_failures(node: ServeProcess) -> dict[str, float]:
    code, text = node.get_text("/metrics")  # HTTPS on a secure cluster's ops port
    assert code == 200, text
    return {
        sample.labels["peer"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "felix_peer_send_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_messages_to_unreachable_peers_are_dropped_at_the_bound_and_counted(
    tmp_path: Path,
) -> None:
    """One node of three, its peers never started, a peer queue of one message: its
    vote requests fill each queue, the rest are dropped and counted per peer, and the
    node keeps serving (a full queue never blocks the Raft loop)."""
    procs = ProcessCluster(tmp_path)
    node = procs.nodes[1]
    node.args += ["--set", "limits.peer_send_queue_max=1"]
    node.start()
    try:
        deadline = time.monotonic() + 30
        failures: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                failures = _peer_send_failures(node)
            except OSError:
                failures = {}  # the ops port is not up yet
            if failures.get("2", 0) >= 2 and failures.get("3", 0) >= 2:
                break
            time.sleep(0.05)
        assert failures.get("2", 0) >= 2 and failures.get("3", 0) >= 2, failures
        status = procs.status(1)
        assert status is not None and status["role"] != "leader", status
    finally:
        node.stop()
