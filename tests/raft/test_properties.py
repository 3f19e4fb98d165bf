"""Property tests: random schedules of delivery order, loss, duplication, crashes and
snapshots never break Raft's safety properties (§5.4, figure 3); the sabotage switches
really do break them."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix.proto.raft_messages import ConfChange, ConfChangeKind
from felix.raft.types import Campaign, Propose, ProposeConfChange, Role
from tests.raft.harness import Network

ACTIONS = (
    "tick",
    "deliver",
    "deliver",
    "deliver",
    "drop",
    "dup",
    "propose",
    "crash",
    "snap",
    "conf",
)
KINDS = tuple(ConfChangeKind)


def _run_schedule(net: Network, schedule: list[tuple[str, int]]) -> None:
    ids = list(net.nodes)
    proposal = 0
    for action, arg in schedule:
        nid = ids[arg % len(ids)]
        if action == "tick":
            net.tick()  # logical time passes everywhere
        elif action in ("deliver", "drop", "dup") and net.queue:
            m = net.queue.pop(arg % len(net.queue))
            if action == "dup":
                net.queue.append(m)
            if action != "drop":
                net.deliver_one(m)
        elif action == "propose":
            proposal += 1
            net.step(nid, Propose(proposal, f"p{proposal}".encode()))
        elif action == "crash" and arg < 200:  # rarer than the rest
            if net.nodes[nid].up:
                net.crash(nid)
            else:
                net.restart(nid)
        elif action == "conf" and arg < 300:
            leader = net.leader()
            if leader is not None:
                change = ConfChange(KINDS[arg % len(KINDS)], ids[arg // 3 % len(ids)])
                net.step(leader, ProposeConfChange(0, change))
        elif action == "snap" and net.nodes[nid].up:
            node = net.nodes[nid]
            meta = node.core.snapshot_meta
            if node.applied_index > (meta.index if meta else 0):
                node.take_snapshot()
                net.process(nid)


def _check_leader_completeness(net: Network) -> None:
    """§5.4: every committed entry is in the log of the current leader."""
    leader = net.leader()
    if leader is None:
        return
    core = net.core(leader)
    for index, entry in net.committed.items():
        if core.first_index <= index <= core.last_index:
            assert core.entries(index, index + 1)[0] == entry


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    n=st.sampled_from([3, 5]),
    seed=st.integers(0, 1000),
    pre_vote=st.booleans(),
    schedule=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 1000)), max_size=250),
)
def test_random_schedules_preserve_safety_and_recover(
    n: int, seed: int, pre_vote: bool, schedule: list[tuple[str, int]]
) -> None:
    """Election safety, state machine safety (both checked by the harness after every
    Ready), log matching and leader completeness under an adversarial schedule that also
    changes membership; then, healed, the cluster elects a leader and commits again
    (liveness; check-quorum stays on, the lease is what keeps removed nodes from
    disrupting, thesis §4.2.3)."""
    net = Network(
        voters=range(1, n + 1),
        extra=(n + 1,),
        seed=seed,
        election_ticks=3,
        pre_vote=pre_vote,
        snapshot_chunk_bytes=40,
        entries_per_msg_max=4,
        inflight_msgs_max=3,
    )
    _run_schedule(net, schedule)
    net.assert_logs_match([i for i in net.nodes if net.nodes[i].up])
    _check_leader_completeness(net)
    for nid, node in net.nodes.items():
        if not node.up:
            net.restart(nid)
    net.heal()
    net.tick_deliver(100)
    leader = net.leader()
    assert leader is not None
    net.step(leader, Propose(10_000, b"final"))
    net.tick_deliver(5)
    conf = net.core(leader).conf
    for nid in (*conf.voters, *conf.learners):
        assert net.applied_data(nid)[-1:] == ["final"], (nid, net.core(nid))
    net.assert_logs_match()
    _check_leader_completeness(net)


# -- sabotage: the switches must really break safety -------------------------------------


def test_double_vote_sabotage_yields_two_leaders_in_one_term() -> None:
    net = Network(pre_vote=False, sabotage=frozenset({"double_vote"}))
    net.step(1, Campaign())
    net.step(3, Campaign())
    with pytest.raises(AssertionError, match="two leaders"):
        net.deliver()


def test_without_double_vote_sabotage_one_leader_at_most() -> None:
    net = Network(pre_vote=False)
    net.step(1, Campaign())
    net.step(3, Campaign())
    net.deliver()
    assert sum(net.core(i).role is Role.LEADER for i in (1, 2, 3)) <= 1


def test_ack_before_persist_sabotage_sends_acks_early_and_commits_unpersisted() -> None:
    net = Network(sabotage=frozenset({"ack_before_persist"}))
    net.elect(1)
    net.nodes[1].hold_persisted = True
    net.propose(1, "a")
    c2 = net.core(2)
    [m] = [m for m in net.take() if m.to == 2]
    net.deliver_one(m)
    ready = net.nodes[2].readies[-1]
    assert ready.send_now and not ready.send_after_persist  # acks before the fsync
    solo = Network(voters=(1,), sabotage=frozenset({"ack_before_persist"}))
    solo.nodes[1].hold_persisted = True
    solo.elect(1)
    solo.propose(1, "x")
    assert solo.core(1).commit_index == 2  # counted its own unpersisted entries
    assert c2.last_index == 2
