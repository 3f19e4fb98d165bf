"""What a Kubernetes Service in front of the control plane sees when a node is stopped
(SIGTERM, as the kubelet sends it): ``/readyz`` fails with ``shutting down`` as soon as
the stop begins — before the leadership hand-off and before the client port closes — so
brokers stop being sent to it.  On real `felix serve` processes.

To hold the stop open long enough to look at it, the leader is stopped while both
followers are paused (SIGSTOP): its hand-off then waits for its bounded timeout, and
meanwhile its ``/readyz`` must say ``shutting down`` and its client port still accept
connections.  The node's log shows the order: readiness off, then the hand-off.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from felix.testing.processes import ProcessCluster, ServeProcess

DEADLINE_S = 30.0  # a bound on the wait, not the claim


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    # Slow ticks: a leader whose followers are paused keeps leading (check-quorum) for
    # the 8-16 ticks of an election timeout, so its hand-off is attempted, not skipped.
    procs = ProcessCluster(tmp_path, tick_ms=200)
    try:
        procs.start_all()
        yield procs
    finally:
        procs.stop_all()  # by PID; SIGCONT first, so paused nodes stop too


def readyz(node: ServeProcess) -> tuple[int, str] | None:
    try:
        return node.get_text("/readyz?verbose", timeout_s=2.0)
    except (OSError, urllib.error.URLError):
        return None  # the ops port closed


def client_port_open(node: ServeProcess) -> bool:
    try:
        socket.create_connection(("127.0.0.1", node.client_port), timeout=2.0).close()
    except OSError:
        return False
    return True


def test_readyz_fails_as_soon_as_sigterm_handling_starts(cluster: ProcessCluster) -> None:
    leader_id = cluster.wait_for_leader()
    leader = cluster.nodes[leader_id]
    deadline = time.monotonic() + DEADLINE_S
    while (answer := readyz(leader)) is None or answer[0] != 200:  # settled: all checks pass
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)
    assert "[+]shutdown ok: serving" in answer[1]
    followers = [n for i, n in cluster.nodes.items() if i != leader_id]
    for follower in followers:
        follower.signal(signal.SIGSTOP)
    try:
        leader.signal(signal.SIGTERM)
        seen: tuple[int, str] | None = None
        assert leader.proc is not None
        while leader.proc.poll() is None:
            answer = readyz(leader)
            if answer is not None and "[-]shutdown failed: shutting down" in answer[1]:
                seen = answer
                break
            assert time.monotonic() < deadline, answer
        assert seen is not None, "the node exited before /readyz said it was shutting down"
        assert seen[0] == 503 and seen[1].endswith("readyz check failed\n")
        assert client_port_open(leader)  # brokers connected now still get answers
    finally:
        for follower in followers:
            follower.signal(signal.SIGCONT)
    assert leader.proc.wait(30) == 0
    log = leader.log_path.read_text()
    off = log.index(f"node {leader_id}: stopping: /readyz fails from now on")
    assert off < log.index("transferring leadership", off) < log.index(f"node {leader_id} stopped")
