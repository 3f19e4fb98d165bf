"""Quorum loss on real processes: two of three `felix serve` killed for good, `felix
recover --force-new-cluster` on the survivor, two wiped nodes join back.

Every process is started and stopped by its PID (the harness); loopback only; no
sleeps as synchronisation, only bounded polling of a condition.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from felix.testing.processes import ProcessCluster, ServeProcess
from tests.server.test_processes import write_many


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(0.02)


def recover_args(node: ServeProcess) -> list[str]:
    """`felix recover` with the node's own identity flags, as it was served."""
    args = node.args
    keep = {"--node-id", "--data-dir", "--peers"}
    flags = [x for i, a in enumerate(args[:-1]) if a in keep for x in (a, args[i + 1])]
    return [sys.executable, "-m", "felix.cli", "recover", "--force-new-cluster", *flags]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_quorum_loss_recover_the_survivor_and_two_wiped_nodes_join_back(
    cluster: ProcessCluster,
) -> None:
    cluster.start_all()
    acked, _ = write_many(cluster, "a", 30)
    survivor = cluster.wait_for_leader()  # it acknowledged every write: all in its log
    lost = [n for n in cluster.nodes if n != survivor]
    for node_id in lost:
        cluster.nodes[node_id].kill9()  # for good
    s = cluster.nodes[survivor]

    def stepped_down() -> bool:
        status = cluster.status(survivor)
        return status is not None and status["role"] != "leader"

    wait_for("the survivor notices it lost its quorum", stepped_down)

    # While it runs, the data dir is locked: recover refuses, in one line, writing nothing.
    refused = run(recover_args(s))
    assert refused.returncode == 2, refused
    assert refused.stdout == "" and refused.stderr.count("\n") == 1
    assert f"in use by process {s.proc.pid}" in refused.stderr  # type: ignore[union-attr]

    s.kill9()  # the survivor goes down too (power loss): recovery runs offline
    done = run(recover_args(s))
    assert done.returncode == 0, done.stderr
    assert f"membership: voters {survivor} (was voters 1,2,3)" in done.stdout, done.stdout
    assert "fenced:     nodes " + ", ".join(map(str, lost)) in done.stdout

    started = time.monotonic()
    s.start()  # same args: its --peers still name the dead nodes; the disk wins
    more, _ = write_many(cluster, "b", 1)
    first_write_s = time.monotonic() - started
    status = cluster.status(survivor)
    assert status is not None and status["voters"] == [survivor], status
    more2, _ = write_many(cluster, "c", 20)
    acked |= more | more2
    assert cluster.local_items(survivor, list(acked)) == acked

    # An old member coming back with its OLD data is fenced: not heard, never a member.
    old = cluster.nodes[lost[0]]
    old.start()
    wait_for(
        "the survivor refuses the old member",
        lambda: f"node {lost[0]} is not a member here" in s.log_path.read_text(),
    )
    old.stop()
    status = cluster.status(survivor)
    assert status is not None and status["voters"] == [survivor] and status["role"] == "leader"

    # The lost nodes join back one at a time, wiped, through the membership path.
    for node_id in lost:
        node = cluster.nodes[node_id]
        shutil.rmtree(node.data_dir)
        leader = cluster.nodes[cluster.wait_for_leader()]
        address = f"127.0.0.1:{node.peer_port}"
        code, body = leader.post(f"/v1/members/add?id={node_id}&address={address}")
        assert code == 200, body
        node.start()
        _, last = write_many(cluster, f"j{node_id}-", 1)
        cluster.wait_caught_up(node_id, last)

        def promoted(node_id: int = node_id) -> bool:
            leader = cluster.nodes[cluster.wait_for_leader()]
            code, body = leader.post(f"/v1/members/promote?id={node_id}")
            return code == 200 or "not a learner" in str(body)

        wait_for(f"node {node_id} promoted", promoted)

    final, last = write_many(cluster, "d", 10)
    acked |= final
    for node_id in cluster.nodes:
        cluster.wait_caught_up(node_id, last)
        items = cluster.local_items(node_id, list(acked))
        assert items == acked, f"node {node_id}"
        status = cluster.status(node_id)
        assert status is not None and sorted(status["voters"]) == [1, 2, 3], status
    print(f"recover -> first acknowledged write: {first_write_s * 1000:.0f} ms")


def test_a_second_serve_on_a_running_nodes_data_dir_is_refused(tmp_path: Path) -> None:
    procs = ProcessCluster(tmp_path)
    node = procs.nodes[1]
    node.start()
    try:
        wait_for("node 1 answers", lambda: procs.status(1) is not None)
        second = run(node.args)
        assert second.returncode == 2, second
        assert f"is in use by process {node.proc.pid}" in second.stderr  # type: ignore[union-attr]
    finally:
        node.stop()
