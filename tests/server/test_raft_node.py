"""Tier B: real RaftNode drivers (nurseries, channels, WAL) on MockClock."""

from __future__ import annotations

import pytest
import trio

from felix.proto.raft_messages import ConfChangeKind
from felix.server.raft_node import NodeSettings
from felix.server.requests import NodeError, NotLeader, ProposalTimeout, ShuttingDown
from felix.testing.cluster import TICK_S, TrioCluster
from felix.testing.kv import encode_put


async def write(cluster: TrioCluster, key: str, value: bytes) -> int:
    """Write through whoever leads now; retry on leader changes (like a real client)."""
    while True:
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        try:
            index, _ = await leader.node.propose(encode_put(key, value), timeout_s=2.0)
            return index
        except (NotLeader, ProposalTimeout):
            await trio.sleep(TICK_S)


async def test_three_nodes_elect_and_replicate(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=1)
        await cluster.start_all()
        leader = await cluster.wait_for_leader()
        assert leader.node is not None

        async def writer(i: int) -> None:
            await write(cluster, f"k{i}", b"v%d" % i)

        async with trio.open_nursery() as writers:
            for i in range(100):
                writers.start_soon(writer, i)
        await cluster.wait_converged()
        expected = {f"k{i}": b"v%d" % i for i in range(100)}
        for sim in cluster.running():
            assert sim.kv.items == expected
        # Group commit: 100 concurrent proposals took far fewer WAL writes than entries.
        registry = leader.node.metrics.registry
        batches = registry.get_sample_value("felix_wal_fsync_duration_seconds_count")
        assert batches is not None and 0 < batches < leader.node.applied_index / 2
        rtt = registry.get_sample_value(
            "felix_peer_round_trip_time_seconds_count",
            {"peer": str(next(s.node_id for s in cluster.running() if s is not leader))},
        )
        assert rtt is not None and rtt > 0
        nursery.cancel_scope.cancel()


async def test_follower_refuses_with_leader_hint(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=2)
        await cluster.start_all()
        leader = await cluster.wait_for_leader()
        await write(cluster, "a", b"1")  # the leader has committed in its term
        follower = next(s for s in cluster.running() if s is not leader)
        assert follower.node is not None
        with pytest.raises(NotLeader) as info:
            await follower.node.propose(encode_put("x", b"y"))
        assert info.value.leader_hint == leader.node_id
        assert f"the leader is node {leader.node_id}" in str(info.value)
        nursery.cancel_scope.cancel()


async def test_leader_failover_and_catch_up(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=3)
        await cluster.start_all()
        for i in range(20):
            await write(cluster, f"before{i}", b"x")
        old = await cluster.wait_for_leader()
        await cluster.stop(old.node_id, crash=True)
        new = await cluster.wait_for_leader()
        assert new.node_id != old.node_id
        for i in range(20):
            await write(cluster, f"after{i}", b"y")
        await cluster.start(old.node_id)
        await cluster.wait_converged()
        items = [sim.kv.items for sim in cluster.running()]
        assert len(items) == 3 and items[0] == items[1] == items[2]
        assert len(items[0]) == 40
        nursery.cancel_scope.cancel()


async def test_partitioned_leader_is_replaced(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=4)
        await cluster.start_all()
        await write(cluster, "a", b"1")
        old = await cluster.wait_for_leader()
        cluster.network.isolate(old.node_id, {1, 2, 3})
        assert old.node is not None
        with pytest.raises((ProposalTimeout, NotLeader)):
            await old.node.propose(encode_put("lost?", b"z"), timeout_s=3.0)
        with trio.fail_after(30):
            while True:  # the majority side elects a new leader
                others = [s for s in cluster.running() if s is not old]
                leaders = [s for s in others if s.node and s.node.status().role == "leader"]
                if leaders:
                    break
                await trio.sleep(TICK_S)
        # check-quorum: the isolated leader steps down on its own
        with trio.fail_after(30):
            while old.node.status().role == "leader":
                await trio.sleep(TICK_S)
        cluster.network.heal()
        await write(cluster, "b", b"2")
        await cluster.wait_converged()
        items = [sim.kv.items for sim in cluster.running()]
        assert items[0] == items[1] == items[2]
        assert items[0]["b"] == b"2"
        nursery.cancel_scope.cancel()


async def test_transfer_leadership(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=5)
        await cluster.start_all()
        await write(cluster, "a", b"1")
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        target = next(s.node_id for s in cluster.running() if s is not leader)
        await leader.node.transfer_leader(target)
        new = await cluster.wait_for_leader()
        assert new.node_id == target
        await write(cluster, "b", b"2")
        nursery.cancel_scope.cancel()


async def test_snapshot_and_learner_catch_up(autojump_clock: trio.abc.Clock) -> None:
    settings = NodeSettings(tick_s=TICK_S, snapshot_entries=50, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=6, settings=settings)
        await cluster.start_all()
        for i in range(200):
            await write(cluster, f"k{i % 30}", b"%d" % i)
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        with trio.fail_after(30):
            while leader.node.status().first_index <= 50:  # the log was compacted
                await trio.sleep(TICK_S)
        await leader.node.change_membership(ConfChangeKind.ADD_LEARNER, 4)
        await cluster.start(4, conf=cluster.bootstrap_conf())
        await cluster.wait_converged()
        learner = cluster.nodes[4]
        assert learner.node is not None
        assert learner.node.status().snapshot_index >= 50  # caught up by InstallSnapshot
        assert learner.kv.items == leader.kv.items
        with trio.fail_after(30):
            while True:
                try:
                    await leader.node.change_membership(ConfChangeKind.PROMOTE, 4)
                    break
                except Exception:
                    await trio.sleep(TICK_S)
        assert 4 in leader.node.status().voters
        nursery.cancel_scope.cancel()


async def test_snapshot_by_bytes(autojump_clock: trio.abc.Clock) -> None:
    """The byte bound triggers a snapshot long before the entry bound would."""
    settings = NodeSettings(
        tick_s=TICK_S, snapshot_entries=10**9, snapshot_bytes=4000, snapshot_in_thread=False
    )
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=8, settings=settings)
        await cluster.start_all()
        for i in range(20):
            await write(cluster, f"k{i}", b"x" * 300)
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        with trio.fail_after(30):
            while leader.node.status().snapshot_index == 0:
                await trio.sleep(TICK_S)
        assert 0 < leader.node.status().snapshot_index <= leader.node.applied_index
        nursery.cancel_scope.cancel()


async def test_stopping_with_an_appended_proposal_pending_says_outcome_unknown(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An entry in the stopping leader's log may still commit on another node: its
    proposer must hear "outcome unknown" (timeout), not a retryable "shutting down"."""
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=11)
        await cluster.start_all()
        await write(cluster, "a", b"1")
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        node = leader.node
        cluster.network.isolate(leader.node_id, {1, 2, 3})  # appended, never committed
        outcome: list[BaseException] = []

        async def propose() -> None:
            try:
                await node.propose(encode_put("maybe", b"z"), timeout_s=60.0)
            except NodeError as exc:
                outcome.append(exc)

        nursery.start_soon(propose)
        with trio.fail_after(5):
            while (
                not node.requests.proposals
                or not next(iter(node.requests.proposals.values())).index
            ):
                await node.wait_changed()
        await cluster.stop(leader.node_id)
        with trio.fail_after(5):
            while not outcome:
                await trio.sleep(TICK_S)
        assert isinstance(outcome[0], ProposalTimeout), outcome
        assert outcome[0].code == "timeout" and "may still commit" in str(outcome[0])
        # a request that never reached the log is plainly refused
        with pytest.raises(ShuttingDown):
            await node.propose(encode_put("late", b"z"), timeout_s=1.0)
        nursery.cancel_scope.cancel()
