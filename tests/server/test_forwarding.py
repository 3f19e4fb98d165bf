"""Tier B: `Forwarder.submit` across leadership changes, on real `RaftNode`s (MockClock).

A write that reaches a node in the middle of a hand-off, or a leader that stepped down
with the write pending, is not answered ``not_leader`` / ``not_committed`` at once: it
waits for the new leader and is forwarded there, within its timeout.  A ``not_leader``
that does come back (the deadline passed) never names the answering node as the leader
(docs/architecture.md §6).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from felix.proto.codes import ErrorCode
from felix.proto.raft_messages import ForwardKind
from felix.raft.types import TransferLeader
from felix.server.forwarding import Forwarder
from felix.server.outcome import Outcome
from felix.server.raft_node import RaftNode
from felix.testing.cluster import TICK_S, SimNode, TrioCluster
from felix.testing.kv import encode_put


@asynccontextmanager
async def cluster_of_three(seed: int) -> AsyncIterator[tuple[TrioCluster, dict[int, Forwarder]]]:
    """Three KV nodes, each with a forwarder for writes, a leader elected and an entry of
    its term committed."""
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=seed)
        await cluster.start_all()
        forwarders: dict[int, Forwarder] = {}
        for sim in cluster.running():
            node = node_of(sim)
            forwarders[sim.node_id] = Forwarder(node, {ForwardKind.WRITE: node.propose_outcome})
            await nursery.start(forwarders[sim.node_id].run)
        leader = await cluster.wait_for_leader()
        first = await forwarders[leader.node_id].submit(ForwardKind.WRITE, encode_put("a", b"1"))
        assert first.ok, first
        yield cluster, forwarders
        nursery.cancel_scope.cancel()


def node_of(sim: SimNode) -> RaftNode:
    assert sim.node is not None
    return sim.node


def failed(node: RaftNode, reason: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "felix_raft_proposals_failed_total", {"reason": reason}
    )
    return value or 0.0


async def converged_on(cluster: TrioCluster, key: str, value: bytes) -> None:
    await cluster.wait_converged()
    for sim in cluster.running():
        assert sim.kv.items.get(key) == value, f"node {sim.node_id}"


def assert_never_names_itself(outcome: Outcome, node_id: int) -> None:
    assert f"the leader is node {node_id}" not in outcome.detail, outcome


async def test_a_write_refused_by_a_leader_starting_a_hand_off_is_forwarded_to_the_new_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The hand-off is stepped just before the write's proposal (same batch): the core
    refuses it ("leadership transfer in progress", hinting itself).  That refusal is not
    the answer: the write waits for the new leader and commits there."""
    for seed in range(4):
        async with cluster_of_three(seed) as (cluster, forwarders):
            leader = await cluster.wait_for_leader()
            old = node_of(leader)
            target = next(n for n in forwarders if n != leader.node_id)
            # white box: queued ahead of the proposal, so the core refuses the proposal
            old._inputs_send.send_nowait(TransferLeader(target))
            outcome = await forwarders[leader.node_id].submit(
                ForwardKind.WRITE, encode_put("k", b"v")
            )
            assert outcome.ok, outcome
            assert failed(old, "refused") >= 1  # the refusal did happen, and was retried
            new = await cluster.wait_for_leader()
            assert new.node_id == target and old.core.leader_id == target
            await converged_on(cluster, "k", b"v")


async def test_a_write_reaching_a_leader_that_is_handing_over_waits_for_the_outcome(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The hand-off's target is down, so the transfer never completes: a write with a
    short timeout comes back ``not_leader`` naming no node (nothing was proposed); one
    with the default timeout waits until the transfer is abandoned after an election
    timeout (thesis §3.10) and commits on the same leader."""
    async with cluster_of_three(seed=11) as (cluster, forwarders):
        leader = await cluster.wait_for_leader()
        node = node_of(leader)
        target = next(n for n in forwarders if n != leader.node_id)
        await cluster.stop(target)
        node._inputs_send.send_nowait(TransferLeader(target))  # white box, as above
        while not node.handing_over:
            await node.wait_changed()
        applied = node.applied_index
        short = await forwarders[leader.node_id].submit(
            ForwardKind.WRITE, encode_put("short", b"x"), timeout_s=3 * TICK_S
        )
        assert short.error is ErrorCode.NOT_LEADER, short
        assert "handing leadership over" in short.detail
        assert_never_names_itself(short, leader.node_id)
        assert failed(node, "refused") == 0  # waited: never proposed
        assert node.handing_over and node.applied_index == applied
        outcome = await forwarders[leader.node_id].submit(ForwardKind.WRITE, encode_put("k", b"v"))
        assert outcome.ok, outcome
        assert not node.handing_over and node.core.leader_id == leader.node_id
        await converged_on(cluster, "k", b"v")
        assert "short" not in leader.kv.items


async def test_a_write_pending_on_a_leader_that_steps_down_is_forwarded_to_the_new_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    """As a leader paused (SIGSTOP) with writes queued: cut off, it appends the write in
    its old term; the others elect a new leader; healed, it learns the new term and its
    entry is overwritten (``not_committed``: nothing applied).  The write is then
    forwarded to the new leader and commits, once."""
    for seed in range(4):
        async with cluster_of_three(20 + seed) as (cluster, forwarders):
            leader = await cluster.wait_for_leader()
            old = node_of(leader)
            others = set(forwarders) - {leader.node_id}
            cluster.network.isolate(leader.node_id, set(forwarders))
            outcomes: list[Outcome] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write, forwarders[leader.node_id], outcomes)
                with trio.fail_after(5):
                    while not any(
                        node_of(s).core.role.value == "leader"
                        for s in cluster.running()
                        if s.node_id in others
                    ):
                        await trio.sleep(TICK_S)
                assert not outcomes  # still pending on the old leader
                cluster.network.heal()
            (outcome,) = outcomes
            assert outcome.ok, outcome
            assert failed(old, "lost") + failed(old, "refused") >= 1
            new = await cluster.wait_for_leader()
            assert new.node_id in others
            await converged_on(cluster, "k", b"v")


async def write(forwarder: Forwarder, outcomes: list[Outcome]) -> None:
    outcomes.append(await forwarder.submit(ForwardKind.WRITE, encode_put("k", b"v")))


async def test_without_a_leader_the_deadline_answer_is_not_leader_naming_no_node(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The last node of three, alone: once it stepped down (check-quorum), a write waits
    for a leader until its timeout, then is ``not_leader`` with no leader named."""
    async with cluster_of_three(seed=31) as (cluster, forwarders):
        leader = await cluster.wait_for_leader()
        node = node_of(leader)
        for other in set(forwarders) - {leader.node_id}:
            await cluster.stop(other)
        while node.core.leader_id is not None:
            await node.wait_changed()
        outcome = await forwarders[leader.node_id].submit(
            ForwardKind.WRITE, encode_put("k", b"v"), timeout_s=0.5
        )
        assert outcome.error is ErrorCode.NOT_LEADER, outcome
        assert "no leader known" in outcome.detail
        assert_never_names_itself(outcome, leader.node_id)


async def test_a_stopping_node_answers_what_it_holds_and_turns_new_requests_to_the_leader(
    autojump_clock: trio.abc.Clock,
) -> None:
    """SIGTERM on a leader, in tier B: it starts its hand-off with a write waiting, then
    drains.  The waiting write is forwarded to the new leader and answered before the
    drain returns; a request after that is ``not_leader`` naming the new leader."""
    async with cluster_of_three(seed=41) as (cluster, forwarders):
        leader = await cluster.wait_for_leader()
        node, forwarder = node_of(leader), forwarders[leader.node_id]
        target = next(n for n in forwarders if n != leader.node_id)
        node._inputs_send.send_nowait(TransferLeader(target))  # white box, as above
        while not node.handing_over:
            await node.wait_changed()
        outcomes: list[Outcome] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, forwarder, outcomes)
            await trio.testing.wait_all_tasks_blocked()  # the write waits out the hand-off
            assert not outcomes
            await forwarder.drain()
            assert len(outcomes) == 1  # answered before the drain returned
        (outcome,) = outcomes
        assert outcome.ok, outcome
        assert node.core.leader_id == target
        late = await forwarder.submit(ForwardKind.WRITE, encode_put("late", b"x"))
        assert late.error is ErrorCode.NOT_LEADER, late
        assert f"the leader is node {target}" in late.detail and "stopping" in late.detail
        await converged_on(cluster, "k", b"v")
        assert "late" not in leader.kv.items
