"""Membership on running nodes (tier B, MockClock): a joining node learns its role from
the log, CONFIG entries carry the whole configuration with addresses, and the autopilot
adds and promotes joiners keeping the voter count odd (docs/architecture.md,
"Membership")."""

from __future__ import annotations

import trio

from felix.config import load_config
from felix.proto.raft_messages import (
    ConfChangeKind,
    ConfState,
    JoinReply,
    JoinRequest,
    MemberAddress,
)
from felix.raft.membership import decode_change
from felix.server.app import boot_conf
from felix.server.autopilot import Autopilot, AutopilotSettings, promotion, removal_refusal
from felix.server.bootstrap import decide, must_probe
from felix.server.raft_node import NodeSettings, RaftNode
from felix.testing.cluster import TICK_S, TrioCluster
from tests.server.test_raft_node import write

LEGACY_BOOT = ConfState((1, 2, 3, 4), ())  # what node 4 booted with before: itself + peers


async def _wait(predicate: object, what: str, timeout_s: float = 30.0) -> None:
    assert callable(predicate)
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(TICK_S)


def _node(cluster: TrioCluster, node_id: int) -> RaftNode:
    node = cluster.nodes[node_id].node
    assert node is not None
    return node


async def test_learner_caught_up_from_the_log_stays_a_learner(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The bug of issue 14: node 4, booted (as `felix serve` did) with {itself + its
    peers} as voters and added as a learner, caught up from the log and ignored the
    ADD_LEARNER entry as "already a member": it believed it was a voter."""
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=11)
        await cluster.start_all()
        await write(cluster, "a", b"1")
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        await leader.node.change_membership(ConfChangeKind.ADD_LEARNER, 4, address="n4:7001")
        await cluster.start(4, conf=LEGACY_BOOT)
        index = await write(cluster, "b", b"2")
        joiner = _node(cluster, 4)
        await _wait(lambda: joiner.applied_index >= index, "node 4 caught up")
        assert joiner.status().snapshot_index == 0  # from the log, not a snapshot
        assert joiner.core.conf.voters == (1, 2, 3)
        assert joiner.core.conf.learners == (4,)
        assert not joiner.core.is_promotable()  # it can never campaign
        assert joiner.core.conf.address_of(4) == "n4:7001"
        nursery.cancel_scope.cancel()


async def test_a_non_member_learns_its_role_from_the_first_config_entry(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=12)
        await cluster.start_all()
        await write(cluster, "a", b"1")
        joiner_sim = await cluster.start(4, conf=ConfState((), ()))
        assert joiner_sim.node is not None
        assert joiner_sim.node.core.conf.members() == frozenset()
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        await leader.node.change_membership(ConfChangeKind.ADD_LEARNER, 4, address="n4:7001")
        index = await write(cluster, "b", b"2")
        joiner = _node(cluster, 4)
        await _wait(lambda: joiner.applied_index >= index, "node 4 caught up")
        assert joiner.core.conf == ConfState((1, 2, 3), (4,), (MemberAddress(4, "n4:7001"),))
        # The entry it learned that from carries the whole configuration.
        config_entries = [
            e for e in joiner.core.entries(1, joiner.core.last_index + 1) if e.kind.name == "CONFIG"
        ]
        assert [decode_change(e.data).result for e in config_entries] == [joiner.core.conf]
        await leader.node.change_membership(ConfChangeKind.PROMOTE, 4)
        await _wait(lambda: 4 in joiner.core.conf.voters, "node 4 promoted")
        nursery.cancel_scope.cancel()


def _settings(**overrides: object) -> AutopilotSettings:
    fields: dict[str, object] = {
        "join_interval_s": 0.2,
        "promote_stable_s": 2.0,
        "voters_max": 5,
        "advertise_peer": "",
    }
    fields.update(overrides)
    return AutopilotSettings(**fields)  # type: ignore[arg-type]


async def _run_autopilots(
    nursery: trio.Nursery, cluster: TrioCluster, ids: list[int], **overrides: object
) -> dict[int, Autopilot]:
    pilots = {}
    for node_id in ids:
        pilot = Autopilot(
            _node(cluster, node_id), _settings(advertise_peer=f"n{node_id}:7001", **overrides)
        )
        nursery.start_soon(pilot.run)
        pilots[node_id] = pilot
    return pilots


async def test_autopilot_grows_three_to_five_keeping_voters_odd(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=13)
        await cluster.start_all()
        await write(cluster, "a", b"1")
        await _run_autopilots(nursery, cluster, [1, 2, 3])
        await cluster.start(4, conf=ConfState((), ()))
        pilots = await _run_autopilots(nursery, cluster, [4])
        leader = _node(cluster, (await cluster.wait_for_leader()).node_id)
        await _wait(lambda: 4 in leader.core.conf.learners, "node 4 added as a learner")
        assert pilots[4].joins_sent >= 1
        assert leader.core.conf.address_of(4) == "n4:7001"
        # Caught up and stable long past the stabilisation time, a lone learner stays one:
        # four voters would tolerate no more failures than three.
        await trio.sleep(10.0)
        assert leader.core.conf.voters == (1, 2, 3)
        assert _node(cluster, 4).core.conf.learners == (4,)
        await cluster.start(5, conf=ConfState((), ()))
        await _run_autopilots(nursery, cluster, [5])
        await _wait(lambda: leader.core.conf.voters == (1, 2, 3, 4, 5), "both promoted", 60.0)
        await write(cluster, "b", b"2")
        for node_id in (4, 5):
            await _wait(lambda n=node_id: _node(cluster, n).core.conf.voters == (1, 2, 3, 4, 5), "")
        nursery.cancel_scope.cancel()


async def test_autopilot_refuses_a_joiner_with_an_old_log(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=14)
        await cluster.start_all()
        await write(cluster, "a", b"1")
        pilots = await _run_autopilots(nursery, cluster, [1, 2, 3])
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        # A removed member restarted with its data asks to join: the leader refuses.
        await pilots[leader.node_id]._answer(JoinRequest(9, "n9:7001", 42))
        await pilots[leader.node_id]._answer(JoinRequest(8, "", 0))  # and one with no address
        assert leader.node.core.conf.members() == frozenset({1, 2, 3})
        assert pilots[leader.node_id]._refusals_logged == {8, 9}
        nursery.cancel_scope.cancel()


def test_promotion_keeps_the_voter_count_odd_and_bounded() -> None:
    three = ConfState((1, 2, 3), (4, 5, 6))
    assert promotion(three, [4], 5) is None  # one ready: would make four voters
    assert promotion(three, [5, 4], 5) == 5  # two ready: the first of the pair
    four = ConfState((1, 2, 3, 4), (5, 6))
    assert promotion(four, [6, 5], 5) == 6  # an even count is fixed at once
    five = ConfState((1, 2, 3, 4, 5), (6, 7))
    assert promotion(five, [6, 7], 5) is None  # at voters_max: extra nodes stay learners
    assert promotion(five, [6, 7], 7) == 6
    assert promotion(three, [9, 8], 5) is None  # only learners are promoted


def test_removal_that_would_break_quorum_is_refused() -> None:
    conf = ConfState((1, 2, 3), (4,))
    assert removal_refusal(conf, 4, 1, {2, 3}) is None  # a learner: quorum unaffected
    assert removal_refusal(conf, 3, 1, {2, 3}) is None  # {1, 2}: both reachable
    refusal = removal_refusal(conf, 2, 1, set())  # 3 is down: {1, 3} has no majority up
    assert refusal is not None and "not 3" in refusal and "no quorum" in refusal
    five = ConfState((1, 2, 3, 4, 5), ())
    assert removal_refusal(five, 5, 1, {2, 3}) is None  # {1,2,3,4}: 3 of 4 reachable
    assert removal_refusal(five, 5, 1, {2}) is not None  # 2 of 4 is not a majority
    assert removal_refusal(ConfState((1,), ()), 1, 1, set()) == "node 1 is the last voter"


def test_boot_configuration_from_the_cluster_settings() -> None:
    env = {
        "FELIX_CLUSTER__INITIAL_MEMBERS": "1,2,3",
        "FELIX_CLUSTER__PEER_TEMPLATE": "felix-{ordinal}.p:7001",
        "FELIX_CLUSTER__POD_IDENTITY": "true",
    }
    first = load_config(env={**env, "POD_NAME": "felix-0"})
    assert boot_conf(first) == ConfState(
        (1, 2, 3),
        (),
        tuple(MemberAddress(n, f"felix-{n - 1}.p:7001") for n in (1, 2, 3)),
    )
    assert boot_conf(load_config(env={**env, "POD_NAME": "felix-3"})) == ConfState((), ())
    legacy = load_config(env={"FELIX_NODE_ID": "2", "FELIX_PEERS": "1=a:1,3=b:1"})
    assert boot_conf(legacy).voters == (1, 2, 3)


async def test_a_non_member_learns_its_role_from_a_snapshot(
    autojump_clock: trio.abc.Clock,
) -> None:
    settings = NodeSettings(tick_s=TICK_S, snapshot_entries=20, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=15, settings=settings)
        await cluster.start_all()
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        await leader.node.change_membership(ConfChangeKind.ADD_LEARNER, 4, address="n4:7001")
        for i in range(80):
            await write(cluster, f"k{i % 10}", b"%d" % i)
        await _wait(lambda: _node(cluster, leader.node_id).status().first_index > 30, "compacted")
        await cluster.start(4, conf=ConfState((), ()))
        index = await write(cluster, "last", b"x")
        joiner = _node(cluster, 4)
        await _wait(lambda: joiner.applied_index >= index, "node 4 caught up")
        assert joiner.status().snapshot_index > 0  # by InstallSnapshot, not the log
        assert joiner.core.conf == ConfState((1, 2, 3), (4,), (MemberAddress(4, "n4:7001"),))
        nursery.cancel_scope.cancel()


def test_bootstrap_probe_decides_only_on_evidence() -> None:
    initial = (1, 2, 3)
    nothing, something = JoinReply(0, 0), JoinReply(1, 23)
    assert decide(initial, {}) is None  # alone: a majority has not answered
    assert decide(initial, {2: nothing}) is False  # 2 of 3 (with itself) know of nothing
    assert decide(initial, {2: nothing, 3: something}) is True  # any log: it exists
    assert decide(initial, {3: JoinReply(2, 0)}) is True  # a term alone is enough
    assert decide((1, 2, 3, 4, 5), {2: nothing}) is None  # 2 of 5 is no majority
    pod = load_config(
        env={
            "FELIX_CLUSTER__INITIAL_MEMBERS": "1,2,3",
            "FELIX_PEERS": "2=a:1,3=b:1",
        }
    )
    assert must_probe(pod, fresh=True)
    assert not must_probe(pod, fresh=False)  # its log is its own: nothing to ask
    legacy = load_config(env={"FELIX_PEERS": "2=a:1,3=b:1"})
    assert not must_probe(legacy, fresh=True)  # no initial_members: the static setup


async def test_a_voter_that_asks_to_join_with_an_empty_log_is_removed_then_readded(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=16)
        await cluster.start_all()
        await write(cluster, "a", b"1")
        pilots = await _run_autopilots(nursery, cluster, [1, 2, 3], heard_within_s=1.0)
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        lost = next(n for n in (1, 2, 3) if n != leader.node_id)
        await pilots[leader.node_id]._answer(JoinRequest(lost, f"n{lost}:7001", 0))
        assert lost not in leader.node.core.conf.members()
        await pilots[leader.node_id]._answer(JoinRequest(lost, f"n{lost}:7001", 0))
        assert leader.node.core.conf.learners == (lost,)
        # A learner with an empty log is just being added: it is left alone.
        await pilots[leader.node_id]._answer(JoinRequest(lost, f"n{lost}:7001", 0))
        assert leader.node.core.conf.learners == (lost,)
        nursery.cancel_scope.cancel()
