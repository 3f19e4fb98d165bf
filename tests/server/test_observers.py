"""Observers on running nodes (tier B, MockClock; docs/architecture.md, "Observers"):
an observer joins through the autopilot, replicates the log, and is never promoted,
never votes and never counts toward a commit."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from felix.config import NodeConfig
from felix.proto.raft_messages import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    JoinRequest,
    MemberAddress,
)
from felix.raft.membership import apply_change, check_change, decode_change, encode_change
from felix.server.admin import build_ops_server
from felix.server.autopilot import Autopilot, AutopilotSettings, Promoter, promotion
from felix.server.raft_node import RaftNode
from felix.server.requests import NodeError, ProposalTimeout
from felix.storage.memory_wal import MemoryWal
from felix.testing.cluster import TICK_S, TrioCluster
from felix.testing.kv import encode_put
from tests.server.test_raft_node import write

OBSERVER = 101
NOBODY = ConfState((), ())
# ConfChange(ADD_LEARNER, 4, "", ConfState((1,), ())) as encoded before observers existed:
# a configuration without observers must keep these bytes (old WAL entries, snapshots).
OLD_ADD_LEARNER = bytes.fromhex(
    "a4646b696e6400646e6f64650467616464726573736066726573756c74a366766f746572738101686c6561"
    "726e657273806961646472657373657380"
)


async def _wait(predicate: Any, timeout_s: float = 30.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(TICK_S)


def _node(cluster: TrioCluster, node_id: int) -> RaftNode:
    node = cluster.nodes[node_id].node
    assert node is not None
    return node


def _settings(node_id: int, *, observer: bool = False) -> AutopilotSettings:
    return AutopilotSettings(
        join_interval_s=0.2,
        promote_stable_s=1.0,
        voters_max=5,
        advertise_peer=f"n{node_id}:7001",
        observer=observer,
    )


async def _pilot(nursery: trio.Nursery, node: RaftNode, *, observer: bool = False) -> Autopilot:
    pilot = Autopilot(node, _settings(node.node_id, observer=observer))
    nursery.start_soon(pilot.run)
    return pilot


async def _three_with_pilots(nursery: trio.Nursery, seed: int) -> TrioCluster:
    cluster = TrioCluster(nursery, [1, 2, 3], seed=seed, all_ids=[1, 2, 3, 4, 5, OBSERVER])
    await cluster.start_all()
    await write(cluster, "a", b"1")
    for n in (1, 2, 3):
        await _pilot(nursery, _node(cluster, n))
    return cluster


async def _add_observer(nursery: trio.Nursery, cluster: TrioCluster) -> RaftNode:
    await cluster.start(OBSERVER, conf=NOBODY)
    observer = _node(cluster, OBSERVER)
    await _pilot(nursery, observer, observer=True)
    await _wait(lambda: OBSERVER in observer.core.conf.observers)
    return observer


def test_old_configuration_bytes_decode_and_encode_unchanged() -> None:
    old = decode_change(OLD_ADD_LEARNER)
    assert old.result == ConfState((1,), ()) and old.result.observers == ()
    assert not old.observer
    assert encode_change(old) == OLD_ADD_LEARNER
    marked = ConfChange(ConfChangeKind.ADD_LEARNER, 4, "", ConfState((1,), (4,), (), (4,)), True)
    assert decode_change(encode_change(marked)) == marked


def test_membership_layer_keeps_observers_learners_and_refuses_promoting_one() -> None:
    conf = ConfState((1, 2, 3), ())
    add = ConfChange(ConfChangeKind.ADD_LEARNER, 4, "n4:7001", observer=True)
    with_observer = apply_change(conf, add)
    assert with_observer == ConfState((1, 2, 3), (4,), (MemberAddress(4, "n4:7001"),), (4,))
    promote = ConfChange(ConfChangeKind.PROMOTE, 4)
    assert check_change(with_observer, promote) == (
        "node 4 is an observer: observers are never promoted"
    )
    assert apply_change(with_observer, promote) == with_observer  # a follower ignores it too
    marked_promote = ConfChange(ConfChangeKind.PROMOTE, 4, observer=True)
    assert "only an ADD_LEARNER" in (check_change(with_observer, marked_promote) or "")
    removed = apply_change(with_observer, ConfChange(ConfChangeKind.REMOVE, 4))
    assert removed == conf


def test_promotion_never_picks_an_observer() -> None:
    conf = ConfState((1, 2, 3), (4, 5), (), (4,))
    assert promotion(conf, [4, 5], voters_max=5) is None  # 4 does not make a pair with 5
    assert promotion(ConfState((1, 2), (4,), (), (4,)), [4], voters_max=5) is None  # even
    assert promotion(ConfState((1, 2, 3), (4, 5, 6), (), (4,)), [4, 5, 6], 5) == 5
    promoter = Promoter(term=1)
    ready = promoter.ready(conf, {4: 10, 5: 10}, 10, 0.0, AutopilotSettings(promote_stable_s=0))
    assert ready == [5]


async def test_observer_joins_and_is_never_promoted(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await _three_with_pilots(nursery, seed=31)
        observer = await _add_observer(nursery, cluster)
        leader = _node(cluster, (await cluster.wait_for_leader()).node_id)
        assert leader.core.conf == ConfState(
            (1, 2, 3), (OBSERVER,), (MemberAddress(OBSERVER, f"n{OBSERVER}:7001"),), (OBSERVER,)
        )
        config_entries = [
            decode_change(e.data)
            for e in leader.core.entries(1, leader.core.last_index + 1)
            if e.kind.name == "CONFIG"
        ]
        assert [c.observer for c in config_entries] == [True]
        assert config_entries[0].result == leader.core.conf
        index = await write(cluster, "b", b"2")
        await _wait(lambda: observer.applied_index >= index)
        # Caught up for far longer than the stabilisation time with 3 < voters_max = 5:
        # still an observer.  A learner that joins next does not pair with it.
        await trio.sleep(10.0)
        assert leader.core.conf.voters == (1, 2, 3)
        await cluster.start(4, conf=NOBODY)
        await _pilot(nursery, _node(cluster, 4))
        await _wait(lambda: 4 in leader.core.conf.learners)
        await trio.sleep(10.0)
        assert leader.core.conf.voters == (1, 2, 3)
        await cluster.start(5, conf=NOBODY)
        await _pilot(nursery, _node(cluster, 5))
        await _wait(lambda: len(leader.core.conf.voters) == 5, 60.0)
        assert sorted(leader.core.conf.voters) == [1, 2, 3, 4, 5]
        assert leader.core.conf.observers == (OBSERVER,)
        assert leader.core.conf.learners == (OBSERVER,)
        assert observer.status().role == "observer"
        assert observer.status().observers == (OBSERVER,)
        assert not observer.core.is_promotable()
        nursery.cancel_scope.cancel()


async def test_promoting_an_observer_is_refused(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await _three_with_pilots(nursery, seed=32)
        await _add_observer(nursery, cluster)
        leader = _node(cluster, (await cluster.wait_for_leader()).node_id)
        with pytest.raises(NodeError, match="observers are never promoted"):
            await leader.change_membership(ConfChangeKind.PROMOTE, OBSERVER, timeout_s=2.0)
        wal = SimpleNamespace(core=SimpleNamespace(failed=None))
        server = build_ops_server(NodeConfig(node_id=leader.node_id), leader, wal)  # type: ignore[arg-type]
        response = await server.respond(
            f"POST /v1/members/promote?id={OBSERVER} HTTP/1.1\r\nHost: x".encode()
        )
        assert response.status == 409
        assert b"is an observer" in response.body and b'"refused": "observer"' in response.body
        assert leader.core.conf.observers == (OBSERVER,)
        # Leaving is an ordinary removal: never a quorum risk.
        response = await server.respond(
            f"POST /v1/members/remove?id={OBSERVER} HTTP/1.1\r\nHost: x".encode()
        )
        assert response.status == 200, response.body
        assert leader.core.conf.members() == frozenset({1, 2, 3})
        nursery.cancel_scope.cancel()


async def test_observer_never_counts_toward_commit(autojump_clock: trio.abc.Clock) -> None:
    """With two of three voters down, the leader and the observer hold a new entry, and
    the observer acknowledges it: it still does not commit (thesis §4.2.1).  Once a voter
    is back it does."""
    async with trio.open_nursery() as nursery:
        cluster = await _three_with_pilots(nursery, seed=33)
        observer = await _add_observer(nursery, cluster)
        leader_sim = await cluster.wait_for_leader()
        leader = _node(cluster, leader_sim.node_id)
        await _wait(lambda: observer.applied_index >= leader.core.commit_index)
        others = [n for n in (1, 2, 3) if n != leader.node_id]
        cluster.network.partition({leader.node_id, OBSERVER}, set(others))
        commit_before = leader.core.commit_index
        proposal = trio.Event()

        async def propose() -> None:
            with pytest.raises(ProposalTimeout):
                await leader.propose(encode_put("x", b"1"), timeout_s=0.3)
            proposal.set()

        nursery.start_soon(propose)
        await _wait(lambda: leader.core.last_index > commit_before)
        new_index = leader.core.last_index
        await _wait(lambda: leader.core.match_indexes().get(OBSERVER, 0) >= new_index)
        await proposal.wait()
        assert leader.core.commit_index == commit_before  # the observer's ack did not count
        assert observer.core.commit_index <= commit_before
        cluster.network.heal()
        await _wait(lambda: observer.core.commit_index >= new_index)
        nursery.cancel_scope.cancel()


async def test_observer_up_and_voter_majority_down_cannot_elect_or_commit(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two voters stopped: the third and the observer can neither elect a leader (the
    observer never grants a vote that counts) nor commit anything."""
    async with trio.open_nursery() as nursery:
        cluster = await _three_with_pilots(nursery, seed=34)
        observer = await _add_observer(nursery, cluster)
        leader = await cluster.wait_for_leader()
        down = [n for n in (1, 2, 3) if n != leader.node_id]
        for n in down:
            await cluster.stop(n)
        survivor = _node(cluster, leader.node_id)
        commit = survivor.core.commit_index
        await trio.sleep(5.0)  # many election timeouts: check-quorum steps the leader down
        assert survivor.status().role != "leader"
        assert observer.status().role == "observer"
        assert survivor.core.commit_index == commit
        await trio.sleep(5.0)
        assert all(
            s.node is not None and s.node.status().role != "leader" for s in cluster.running()
        )
        for n in down:
            await cluster.start(n)
        await _wait(lambda: cluster.leader() is not None)
        index = await write(cluster, "after", b"1")
        await _wait(lambda: observer.applied_index >= index)
        assert cluster.leader() is not None and cluster.leader().node_id != OBSERVER  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def _observer_with_entries(nursery: trio.Nursery, seed: int) -> tuple[TrioCluster, int]:
    cluster = await _three_with_pilots(nursery, seed=seed)
    observer = await _add_observer(nursery, cluster)
    for i in range(20):
        index = await write(cluster, f"k{i}", b"%d" % i)
    await _wait(lambda: observer.applied_index >= index)
    await cluster.stop(OBSERVER)
    cluster.nodes[OBSERVER].disk = MemoryWal()  # the volume is gone
    return cluster, index


async def _comes_back_as_observer(nursery: trio.Nursery, cluster: TrioCluster) -> None:
    await cluster.start(OBSERVER, conf=NOBODY)
    fresh = _node(cluster, OBSERVER)
    assert fresh.core.last_index == 0
    await _pilot(nursery, fresh, observer=True)
    index = await write(cluster, "after", b"x")
    await _wait(lambda: fresh.applied_index >= index and OBSERVER in fresh.core.conf.observers)
    assert fresh.status().role == "observer"
    assert cluster.nodes[OBSERVER].kv.items == cluster.nodes[1].kv.items
    leader = _node(cluster, (await cluster.wait_for_leader()).node_id)
    assert leader.core.conf.observers == (OBSERVER,) and OBSERVER not in leader.core.conf.voters


async def test_observer_with_an_emptied_disk_catches_up_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A lost volume (or a PVC-less restart): the observer comes back with an empty log
    and no configuration; whichever comes first (the leader's entries, which back its
    progress off to the empty log, or its JoinRequest), it ends up an observer again
    with every entry."""
    async with trio.open_nursery() as nursery:
        cluster, _ = await _observer_with_entries(nursery, seed=35)
        await _comes_back_as_observer(nursery, cluster)
        nursery.cancel_scope.cancel()


async def test_observer_asking_with_an_empty_log_is_removed_and_readmitted(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its JoinRequest with an empty log reaches the leader first (it acknowledged
    entries before): the leader removes it (no quorum check: it never votes) and adds
    it back as an observer on its next request."""
    caplog.set_level(logging.WARNING, "felix.autopilot")
    async with trio.open_nursery() as nursery:
        cluster, _ = await _observer_with_entries(nursery, seed=38)
        leader = _node(cluster, (await cluster.wait_for_leader()).node_id)
        assert leader.core.match_indexes()[OBSERVER] > 0
        await leader.deliver(OBSERVER, JoinRequest(OBSERVER, "n101:7001", 0, observer=True))
        await _wait(lambda: OBSERVER not in leader.core.conf.members())
        assert "observer 101 asks to join with an empty log" in caplog.text
        await _comes_back_as_observer(nursery, cluster)
        nursery.cancel_scope.cancel()


async def test_a_new_observer_asking_twice_is_not_removed(autojump_clock: trio.abc.Clock) -> None:
    """A new observer's second JoinRequest (sent before its first entry arrived, so
    still with an empty log) must not be taken for a lost volume: it acknowledged
    nothing yet."""
    async with trio.open_nursery() as nursery:
        cluster = await _three_with_pilots(nursery, seed=39)
        leader = _node(cluster, (await cluster.wait_for_leader()).node_id)
        cluster.network.isolate(OBSERVER, {1, 2, 3})  # it hears nothing from the leader
        request = JoinRequest(OBSERVER, "n101:7001", 0, observer=True)
        await leader.deliver(OBSERVER, request)
        await _wait(lambda: OBSERVER in leader.core.conf.observers)
        await leader.deliver(OBSERVER, request)
        await trio.sleep(2.0)
        assert leader.core.conf.observers == (OBSERVER,)
        nursery.cancel_scope.cancel()


async def test_readyz_and_status_on_an_observer(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await _three_with_pilots(nursery, seed=36)
        await cluster.start(OBSERVER, conf=NOBODY)
        observer = _node(cluster, OBSERVER)
        wal = SimpleNamespace(core=SimpleNamespace(failed=None))
        server = build_ops_server(NodeConfig(node_id=OBSERVER), observer, wal)  # type: ignore[arg-type]
        head = b"GET /readyz?verbose HTTP/1.1\r\nHost: x"
        waiting = await server.respond(head)
        assert waiting.status == 503 and b"not a member" in waiting.body
        await _pilot(nursery, observer, observer=True)
        await _wait(lambda: OBSERVER in observer.core.conf.observers)
        index = await write(cluster, "b", b"2")
        await _wait(lambda: observer.applied_index >= index)
        ready = await server.respond(head)
        assert ready.status == 200, ready.body
        assert b"[+]voter ok: observer" in ready.body
        status = await server.respond(b"GET /v1/status HTTP/1.1\r\nHost: x")
        assert b'"role": "observer"' in status.body and b'"observers": [101]' in status.body
        # A learner waiting for promotion stays unready, as before.
        await cluster.start(4, conf=NOBODY)
        learner = _node(cluster, 4)
        await _pilot(nursery, learner)
        await _wait(lambda: 4 in learner.core.conf.learners)
        learner_server = build_ops_server(NodeConfig(node_id=4), learner, wal)  # type: ignore[arg-type]
        unready = await learner_server.respond(head)
        assert unready.status == 503 and b"learner: not a voter until promoted" in unready.body
        nursery.cancel_scope.cancel()


async def test_a_join_request_marked_observer_from_a_member_changes_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A learner (not an observer) asking again with the observer flag stays a learner;
    a voter's flag is ignored too: a role changes only by removal and a new join."""
    async with trio.open_nursery() as nursery:
        cluster = await _three_with_pilots(nursery, seed=37)
        leader_sim = await cluster.wait_for_leader()
        leader = _node(cluster, leader_sim.node_id)
        other = next(n for n in (1, 2, 3) if n != leader.node_id)
        await leader.deliver(other, JoinRequest(other, f"n{other}:7001", 5, observer=True))
        await trio.sleep(2.0)
        assert leader.core.conf.observers == () and leader.core.conf.voters == (1, 2, 3)
        nursery.cancel_scope.cancel()
