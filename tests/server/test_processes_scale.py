"""Scale 3 → 5 → 3 on real processes that start like StatefulSet pods.

Every node runs with the same settings (``cluster.pod_identity``, ``initial_members``
1,2,3), its identity from ``POD_NAME`` and its own loopback address, like a pod IP
(``ProcessCluster(pods=True)``), with brokers watching and a writer writing
throughout.  Nodes 4 and 5 start with empty data dirs, ask to join, and are promoted
by the leader once caught up — 4 waits for 5, so the voter count stays odd.  Then the
scale-down runbook (deploy/README.md): ``felix member remove`` for the highest ordinal,
then stop that pod, twice.  A removal that would break quorum is refused.  The brokers
never notice: one snapshot each (at start), no resync, versions only forward.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from felix.broker import MetadataView
from felix.testing.processes import ProcessCluster, ServeProcess
from tests.broker.test_processes_client import Monotonic, Writer, client
from tests.server.test_processes_recover import wait_for

pytestmark = pytest.mark.slow

INITIAL = (1, 2, 3)
JOINERS = (4, 5)
BROKERS = (20, 21, 22, 23, 24, 25)


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path, size=len(INITIAL + JOINERS), pods=True, initial=3)
    for node in cluster.nodes.values():
        node.args += ["--set", "cluster.join_interval_ms=200"]
        node.args += ["--set", "cluster.promote_stable_ms=1000"]
    try:
        for n in INITIAL:
            cluster.nodes[n].start()
        yield cluster
    finally:
        cluster.stop_all()


def voters_are(cluster: ProcessCluster, expected: list[int]) -> Callable[[], bool]:
    def check() -> bool:
        status = cluster.status(cluster.wait_for_leader())
        return status is not None and sorted(status["voters"]) == expected  # order: promotion order

    return check


def felix_member(cluster: ProcessCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The runbook's command, as an operator types it."""
    running = [n for n in cluster.nodes.values() if n.proc is not None and n.proc.poll() is None]
    eps = ",".join(n.ops for n in running)
    env = {**os.environ, "FELIX_TOKEN": cluster.creds.token, "FELIX_CA": str(cluster.creds.ca)}
    return subprocess.run(
        [sys.executable, "-m", "felix.cli", "member", "--endpoints", eps, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def ready(node: ServeProcess) -> bool:
    try:
        return node.get_text("/readyz", timeout_s=1.0)[0] == 200
    except OSError:
        return False


async def test_scale_three_to_five_to_three_brokers_never_notice(
    pods: ProcessCluster,
) -> None:
    cluster = pods
    await trio.to_thread.run_sync(cluster.wait_for_leader)
    eps = [cluster.nodes[n].client_endpoint for n in INITIAL]
    async with AsyncExitStack() as stack:
        views = [await stack.enter_async_context(client(eps, b, cluster)) for b in BROKERS]
        writer_view = await stack.enter_async_context(client(eps, None, cluster))
        async with trio.open_nursery() as nursery:
            await _scale(cluster, views, writer_view, nursery)
    for n in INITIAL:
        status = cluster.status(n)
        assert status is not None and sorted(status["voters"]) == [1, 2, 3]


async def _scale(
    cluster: ProcessCluster,
    views: list[MetadataView],
    writer_view: MetadataView,
    nursery: trio.Nursery,
) -> None:
    if True:
        watchers = [Monotonic(v) for v in views]
        for watcher in watchers:
            nursery.start_soon(watcher.run)
        writer = Writer(writer_view)
        nursery.start_soon(writer.run)

        def grow() -> None:
            cluster.nodes[4].start()
            # Alone, 4 is added and catches up but stays a learner: four voters would
            # tolerate no more failures than three.
            wait_for("node 4 a learner", lambda: 4 in (leader_status() or {}).get("learners", []))
            cluster.nodes[5].start()
            wait_for("4 and 5 promoted", voters_are(cluster, [1, 2, 3, 4, 5]), 60.0)
            for n in JOINERS:
                wait_for(f"node {n} ready", lambda n=n: ready(cluster.nodes[n]))

        def leader_status() -> dict[str, object] | None:
            return cluster.status(cluster.wait_for_leader())

        await trio.to_thread.run_sync(grow)
        status = await trio.to_thread.run_sync(leader_status)
        assert status is not None
        assert 4 not in status["learners"] and 5 not in status["learners"]  # type: ignore[operator]

        def shrink() -> None:
            for n in reversed(JOINERS):  # the highest ordinal first, as scale-down removes
                done = felix_member(cluster, "remove", str(n))
                assert done.returncode == 0, done.stderr
                cluster.nodes[n].stop()
            wait_for("back to three voters", voters_are(cluster, [1, 2, 3]))

        await trio.to_thread.run_sync(shrink)

        def refused_without_quorum() -> None:
            leader = cluster.wait_for_leader()
            down = next(n for n in INITIAL if n != leader)
            cluster.nodes[down].stop()
            other = next(n for n in INITIAL if n not in (leader, down))

            def silent() -> bool:  # longer than an election timeout: the leader counts it down
                status = cluster.status(leader) or {}
                return status.get("heard_ms_ago", {}).get(str(down), 0) > 8 * cluster.tick_ms

            wait_for(f"the leader no longer hears node {down}", silent)
            refused = felix_member(cluster, "remove", str(other))
            assert refused.returncode == 1
            assert "no quorum" in refused.stderr and f"not {down}" in refused.stderr
            cluster.nodes[down].start()
            wait_for(f"node {down} ready again", lambda: ready(cluster.nodes[down]))

        await trio.to_thread.run_sync(refused_without_quorum)
        await writer.stop()
        with trio.fail_after(30):
            await writer.done.wait()
        assert writer.acked > 0
        last = max(writer.versions)
        with trio.fail_after(30):
            for view in views:
                await view.wait_until(lambda v=view: (v.version or 0) >= last)
        for view, watcher in zip(views, watchers, strict=True):
            stats = view.stats
            assert stats.snapshots == 1, stats  # the one at start
            assert stats.resyncs == 0, stats
            assert watcher.forward
        nursery.cancel_scope.cancel()


def test_a_wiped_initial_member_rejoins_instead_of_voting_with_an_empty_log(
    pods: ProcessCluster,
) -> None:
    """Pod felix-2 comes back with a new, empty PVC: it must not boot as a voter of the
    initial members with nothing in its log (an amnesiac voter).  It asks its peers
    first, finds the cluster, joins as a non-member; the leader removes the old voter 3,
    adds it back as a learner and promotes it once caught up."""
    cluster = pods
    cluster.wait_for_leader()
    acked = {f"k{i}": f"v{i}" for i in range(20)}
    for key, value in acked.items():
        last = cluster.put(key, value)
    node = cluster.nodes[3]
    node.stop()
    shutil.rmtree(node.data_dir)
    node.start()
    wait_for("voters 1, 2, 3 again", voters_are(cluster, [1, 2, 3]), 60.0)
    wait_for("node 3 ready", lambda: ready(node))
    cluster.wait_caught_up(3, last)
    assert cluster.local_items(3, list(acked)) == acked
    assert "the cluster exists" in node.log_path.read_text()
    leader_logs = "".join(cluster.nodes[n].log_path.read_text() for n in (1, 2))
    assert "voter 3 asks to join with an empty log" in leader_logs
