"""Log replication and commit: §5.3, §5.4.2 (figure 8), flow control, Ready ordering."""

from __future__ import annotations

import random

import pytest

from felix.proto.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
)
from felix.raft.core import RaftCore
from felix.raft.progress import ProgressState
from felix.raft.ready import ProposalAccepted, ProposalRefused
from felix.raft.types import (
    BootState,
    Campaign,
    HardState,
    HardStatePersisted,
    Persisted,
    Propose,
    ProposeConfChange,
    RaftConfig,
    Receive,
    Role,
    Tick,
)
from tests.raft.harness import Message, Network


def is_append_with(m: Message, lo: int) -> bool:
    return isinstance(m.msg, AppendEntries) and any(e.index >= lo for e in m.msg.entries)


def test_leader_replicates_and_commits_on_majority_5_3() -> None:
    """§5.3: the leader appends, replicates, commits once a majority holds the entry;
    followers apply after learning the commit index."""
    net = Network()
    net.elect(1)
    net.propose(1, "a", request_id=7)
    assert net.nodes[1].proposed == [ProposalAccepted(7, 2, 1)]
    net.deliver()
    for n in (1, 2, 3):
        assert net.applied_data(n) == ["a"], n
        assert net.core(n).commit_index == 2


def test_commit_needs_a_majority_5_3() -> None:
    """§5.3: with both followers unreachable nothing new commits; healing commits it."""
    net = Network(voters=(1, 2, 3, 4, 5))
    net.elect(1)
    net.partition({1, 2}, {3, 4, 5})
    net.propose(1, "a")
    net.deliver()
    assert net.core(1).commit_index == 1 and net.core(2).last_index == 2
    net.heal()
    net.tick_deliver(5)  # the lost appends are resent after a few silent heartbeats
    assert net.core(1).commit_index == 2 and net.applied_data(5) == ["a"]


def test_follower_proposal_refused_with_leader_hint() -> None:
    """A non-leader refuses proposals and says who leads (clients retry there)."""
    net = Network()
    net.elect(1)
    net.step(2, Propose(9, b"x"))
    assert net.nodes[2].refused == [ProposalRefused(9, 1, "not leader")]
    assert net.core(2).last_index == 1


def _figure8(sabotage: frozenset[str]) -> Network:
    net = Network(
        voters=(1, 2, 3, 4, 5),
        pre_vote=False,
        check_quorum=False,
        entries_per_msg_max=1,
        sabotage=sabotage,
    )
    net.elect(1)  # term 1, NOOP at 1 everywhere
    # (a) S1 leads term 1 and gets index 2 only onto S2.
    net.partition({1, 2}, {3, 4, 5})
    net.propose(1, "old")
    net.deliver()
    net.heal()
    # (b) S1 crashes; S5 wins term 2 with S3, S4 and appends index 2 (term 2) alone.
    net.crash(1)
    net.step(5, Campaign())
    net.deliver(keep=lambda m: not isinstance(m.msg, AppendEntries))
    assert net.core(5).role is Role.LEADER and net.core(5).term == 2
    net.crash(5)
    # (c) S1 restarts and wins term 3; it replicates index 2 (term 1) to S3 but its own
    # NOOP (index 3, term 3) nowhere: index 2 is on a majority, but not of this term.
    net.restart(1)
    no_appends = lambda m: not isinstance(m.msg, AppendEntries)  # noqa: E731
    for _ in range(2):
        net.step(1, Campaign())
        net.deliver(keep=no_appends)
    assert net.core(1).role is Role.LEADER and net.core(1).term == 3
    net.tick([1])
    net.deliver(keep=lambda m: not is_append_with(m, 3))
    net.tick([1])
    net.deliver(keep=lambda m: not is_append_with(m, 3))
    assert all(net.core(n).entries(2, 3)[0].term == 1 for n in (1, 2, 3))
    return net


def test_figure8_leader_never_commits_old_term_entry_by_counting_5_4_2() -> None:
    """§5.4.2 figure 8: an old-term entry on a majority is not committed by counting;
    S5 can still be elected and overwrite it, which is safe because it never committed."""
    net = _figure8(frozenset())
    assert net.core(1).commit_index == 1
    # (d) S1 crashes; S5 (last term 2) wins and overwrites index 2 everywhere.
    net.crash(1)
    net.restart(5)
    net.campaign(5)
    net.campaign(5)
    assert net.core(5).role is Role.LEADER
    net.tick_deliver(3)
    for n in (2, 3, 4, 5):
        assert net.core(n).entries(2, 3)[0].term == 2
    net.assert_logs_match([2, 3, 4, 5])


def test_figure8_with_commit_old_term_sabotage_is_caught() -> None:
    """The sabotage switch really breaks safety: the entry S1 commits by counting is later
    overwritten, which the harness's state machine safety check reports."""
    net = _figure8(frozenset({"commit_old_term"}))
    assert net.core(1).commit_index == 2  # committed by counting an old-term entry
    net.crash(1)
    net.restart(5)
    with pytest.raises(AssertionError):
        net.campaign(5)
        net.campaign(5)
        net.tick_deliver(3)


def test_fast_backoff_over_long_divergent_log_5_3() -> None:
    """§5.3 (closing paragraphs): with conflict_term/conflict_index the leader skips a whole
    divergent term per round trip instead of one entry per round trip."""
    net = Network(pre_vote=False)
    nodes = net.nodes

    def entries(start: int, n: int, term: int) -> list[Entry]:
        return [Entry(i, term, EntryKind.NORMAL, b"") for i in range(start, start + n)]

    common = entries(1, 5, 1)
    # Node 3 holds 300 entries of term 2 that nobody else has; 1 and 2 hold term 3 ones.
    nodes[3].durable_entries = common + entries(6, 300, 2)
    nodes[3].durable_hard_state = HardState(2, None, 5)
    for n in (1, 2):
        nodes[n].durable_entries = common + entries(6, 200, 3)
        nodes[n].durable_hard_state = HardState(3, None, 5)
    for n in (1, 2, 3):
        net.restart(n)
    net.elect(1)
    net.deliver()
    rejections = [t for t in net.trace if "AppendResponse" in t and "success=False" in t]
    assert len(rejections) <= 3, rejections
    net.assert_logs_match()
    assert net.core(3).last_index == 206 and net.core(3).commit_index == 206


def test_inflight_window_bound() -> None:
    """Per-follower flow control: at most inflight_msgs_max AppendEntries outstanding."""
    net = Network(inflight_msgs_max=2, entries_per_msg_max=1)
    net.elect(1)
    for i in range(10):
        net.propose(1, f"e{i}")
    to2 = [m for m in net.queue if m.to == 2 and isinstance(m.msg, AppendEntries)]
    assert len(to2) == 2 and [len(m.msg.entries) for m in to2] == [1, 1]  # type: ignore[union-attr]
    held = net.take()
    first_to2 = next(m for m in held if m.to == 2)
    net.deliver_one(first_to2)  # 2 acks one: the leader may send exactly one more
    acks = net.take()
    for m in acks:
        net.deliver_one(m)
    more = [m for m in net.queue if m.to == 2 and isinstance(m.msg, AppendEntries)]
    assert len(more) == 1
    net.queue.extend(held)
    net.tick_deliver(5)
    assert net.applied_data(2) == [f"e{i}" for i in range(10)]


def test_batches_capped_by_count_and_bytes() -> None:
    """entries_per_msg_max and bytes_per_msg_max cap each AppendEntries (an oversized entry
    still goes, alone)."""
    net = Network(entries_per_msg_max=3, bytes_per_msg_max=250, inflight_msgs_max=100)
    net.elect(1)
    proposals = [Propose(i, b"x" * 100) for i in range(7)]
    net.step_many(1, [*proposals, Propose(8, b"y" * 1000)])
    sizes = [len(m.msg.entries) for m in net.queue if m.to == 2]  # type: ignore[union-attr]
    assert sizes == [2, 2, 2, 1, 1]
    net.deliver()
    assert len(net.applied_data(3)) == 8


def test_leader_counts_itself_only_after_persisted_10_2_1() -> None:
    """Thesis §10.2.1: the leader sends before its own fsync, but counts itself toward the
    commit quorum only once the driver reports Persisted."""
    conf = ConfState((1,), ())
    c = RaftCore(RaftConfig(node_id=1), random.Random(1), BootState(HardState(), conf))
    c.step(Campaign())
    c.take_ready()  # the new term and our vote
    c.step(HardStatePersisted(1, 1))  # durable: now it leads
    r = c.take_ready()
    assert [e.kind for e in r.entries] == [EntryKind.NOOP] and c.commit_index == 0
    c.step(Propose(1, b"a"))
    assert c.commit_index == 0
    c.step(Persisted(1, 1))
    assert c.commit_index == 1  # only what was persisted; "a" was not handed out yet
    r = c.take_ready()
    assert [e.index for e in r.entries] == [2] and [e.index for e in r.committed] == [1]
    c.step(Persisted(2, 1))
    assert c.commit_index == 2


def test_leader_with_one_follower_waits_for_own_persist_10_2_1() -> None:
    """Thesis §10.2.1 with 3 voters, one down: the leader's AppendEntries go out before its
    fsync, the follower's ack alone is not a majority, the leader's Persisted completes it."""
    net = Network()
    net.elect(1)
    net.isolate(3)
    net.nodes[1].hold_persisted = True
    net.propose(1, "a")
    net.deliver()
    assert net.core(2).last_index == 2 and net.core(1).commit_index == 1
    net.release_persisted(1)
    assert net.core(1).commit_index == 2


def test_follower_acks_are_sent_after_persist() -> None:
    """§5.1 fig. 2: an AppendResponse promises the entries are durable: send_after_persist,
    in the same Ready as the entries it acknowledges."""
    net = Network()
    net.elect(1)
    net.propose(1, "a")
    [m] = [m for m in net.take() if m.to == 2]
    c2 = net.core(2)
    c2.step(Receive(1, m.msg))
    r = c2.take_ready()
    assert [e.index for e in r.entries] == [2]
    assert not r.send_now
    [ack] = r.send_after_persist
    assert isinstance(ack.message, AppendResponse) and ack.message.match_index == 2


def test_heartbeat_commit_is_capped_at_follower_match() -> None:
    """A heartbeat never tells a follower to commit beyond what it is known to hold."""
    net = Network()
    net.elect(1)
    net.cut.add((1, 3))
    net.propose(1, "a")
    net.deliver()
    net.take()
    net.tick([1])
    hb = [m.msg for m in net.queue if m.to == 3]
    assert hb and all(isinstance(h, AppendEntries) and h.leader_commit <= 1 for h in hb)


def test_restart_from_bootstate_with_snapshot_and_entries() -> None:
    """A restart rebuilds term, vote, commit, membership (snapshot conf + later CONFIG
    entries, thesis §4.1) and re-emits committed entries after the snapshot for apply."""
    net = Network()
    net.elect(1)
    for i in range(5):
        net.propose(1, f"a{i}")
    net.deliver()
    net.nodes[2].take_snapshot()
    for i in range(3):
        net.propose(1, f"b{i}")
    net.tick_deliver(2)
    before = net.core(2)
    state = (before.term, before.vote, before.commit_index, before.conf, before.last_index)
    applied = list(net.nodes[2].applied)
    net.crash(2)
    net.restart(2)
    after = net.core(2)
    assert (after.term, after.vote, after.commit_index, after.conf, after.last_index) == state
    assert after.first_index == 7 and after.snapshot_meta is not None
    assert net.nodes[2].applied == applied  # re-applied from the snapshot on
    net.propose(1, "c")
    net.deliver()
    assert net.applied_data(2)[-1] == "c"


def test_node_restarted_with_empty_log_catches_up() -> None:
    """A node that comes back with an empty log (a fresh disk) is found by the leader's
    probe and back-off (conflict index 1) and receives the whole log."""
    net = Network()
    net.elect(1)
    for i in range(30):
        net.propose(1, f"e{i}")
    net.deliver()
    net.crash(3)
    node = net.nodes[3]
    node.durable_entries = []
    node.durable_hard_state = HardState(net.core(1).term, None, 0)
    net.restart(3)
    net.tick_deliver(3)
    assert net.core(3).last_index == 31 and len(net.applied_data(3)) == 30
    net.assert_logs_match()


def test_lost_append_at_end_of_burst_is_retransmitted() -> None:
    """Followers in replicate state whose last AppendEntries was lost are retransmitted
    to after a few heartbeats without progress (stall fallback to probe).  Both lose it,
    so nothing commits and no commit notice reveals the loss earlier."""
    net = Network()
    net.elect(1)
    net.propose(1, "a")
    net.take(lambda m: m.to in (2, 3))  # lost
    net.deliver()
    assert net.core(2).last_index == net.core(3).last_index == 1
    net.tick_deliver(5)
    assert net.applied_data(2) == net.applied_data(3) == ["a"]


def test_commit_notice_reaches_a_follower_that_has_not_acked_yet() -> None:
    """The commit notice covers entries sent to a replicating follower but not yet
    acknowledged (they travel ahead of it): the slow follower commits without waiting
    for its own ack's round trip."""
    net = Network()
    net.elect(1)
    net.propose(1, "a")
    held = net.deliver_except(lambda m: m.frm == 3 and isinstance(m.msg, AppendResponse))
    assert held and net.core(1).commit_index == 2  # committed with node 2's ack alone
    assert net.core(3).commit_index == 2 and net.applied_data(3) == ["a"]
    assert net.core(1).match_indexes()[3] < 2  # node 3's ack is still on its way


def test_commit_notice_reveals_a_lost_append_at_once() -> None:
    """If the entries ahead of the notice were lost, the follower rejects the notice and
    the leader resends them at once, without waiting for heartbeats."""
    net = Network()
    net.elect(1)
    net.propose(1, "a")
    net.take(lambda m: m.to == 3)  # lost
    net.deliver()
    assert net.applied_data(3) == ["a"] and net.core(3).last_index == 2


def test_delayed_rejection_never_lowers_match_index_5_3() -> None:
    """§5.3: matchIndex only grows for a follower that keeps its log.  A commit notice
    at prev=2 overtakes the AppendEntries carrying entry 2, so node 2 rejects it; its ack
    of entry 2 then reaches the leader first and the rejection after it.  The late
    rejection is stale: match stays 2 and entry 2 is not sent again."""
    net = Network()
    net.elect(1)
    net.propose(1, "a")
    [append] = net.take(lambda m: m.to == 2)  # entry 2, held back
    notices = net.deliver_except(lambda m: m.to == 2)  # node 3 acks: commit, notice
    assert net.core(1).commit_index == 2
    assert [m.msg.prev_log_index for m in notices] == [2]  # type: ignore[union-attr]
    net.deliver_one(notices[0])  # overtakes the append: rejected, node 2 lacks entry 2
    [rejection] = net.take(lambda m: m.frm == 2)
    assert isinstance(rejection.msg, AppendResponse) and not rejection.msg.success
    net.deliver_one(append)
    for ack in net.take(lambda m: m.frm == 2):
        net.deliver_one(ack)
    assert net.core(1).match_indexes()[2] == 2
    net.take()  # whatever the ack caused
    net.deliver_one(rejection)  # late
    assert net.core(1).match_indexes()[2] == 2
    net.step(1, Tick())  # (nothing to flush otherwise)
    resent = [m for m in net.queue if m.to == 2 and is_append_with(m, 2)]
    assert not resent, resent


def test_wiped_follower_rejecting_a_later_round_is_caught_up() -> None:
    """A follower that lost what it acknowledged (its disk was replaced: outside Raft's
    fault model) rejects a heartbeat sent after the leader learned its match; that
    rejection is fresh, so the leader forgets the match and sends the log again."""
    net = Network()
    net.elect(1)
    for i in range(5):
        net.propose(1, f"e{i}")
    net.deliver()
    assert net.core(1).match_indexes()[3] == 6
    net.crash(3)
    node = net.nodes[3]
    node.durable_entries = node.durable_entries[:2]
    node.durable_hard_state = HardState(node.durable_hard_state.term, 1, 2)
    net.restart(3)
    net.tick_deliver(4)
    assert net.core(1).match_indexes()[3] == 6 and net.core(3).last_index == 6
    assert len(net.applied_data(3)) == 5
    net.assert_logs_match()


def _appends_to(net: Network, nid: int) -> list[Message]:
    return [m for m in net.queue if m.to == nid and isinstance(m.msg, AppendEntries)]


def test_duplicated_stale_answers_release_no_extra_probes_5_3() -> None:
    """A network may duplicate messages (§5.1).  A learner joining with an empty log
    rejects the leader's first probe, and the rejection arrives five times: the first
    moves ``next`` back and releases one probe; the copies answer a probe no longer
    outstanding and release none.  (Each used to release one, so the probes in flight
    multiplied with every duplicated round trip: the message storm of the membership
    simulation's seeds 5071 and 5678.)"""
    net = Network(extra=(4,))
    net.elect(1)
    for i in range(10):
        net.propose(1, f"e{i}")
    net.deliver()
    net.step(1, ProposeConfChange(7, ConfChange(ConfChangeKind.ADD_LEARNER, 4)))
    held = net.deliver_except(lambda m: m.to == 4)
    probe = held[0]
    assert isinstance(probe.msg, AppendEntries) and probe.msg.prev_log_index > 0
    net.deliver_one(probe)
    [rejection] = net.take(lambda m: m.frm == 4)
    assert isinstance(rejection.msg, AppendResponse) and not rejection.msg.success
    for _ in range(5):
        net.deliver_one(rejection)
    probes = _appends_to(net, 4)
    assert len(probes) == 1, probes
    assert probes[0].msg.prev_log_index == 0  # type: ignore[union-attr]
    net.deliver()
    assert net.core(4).last_index == net.core(1).last_index
    net.assert_logs_match()


def test_lost_probe_is_resent_once_per_heartbeat_round() -> None:
    """A probe whose answer is lost is resent when an answer of a later heartbeat round
    arrives, once however often that answer was duplicated."""
    net = Network()
    net.elect(1)
    net.propose(1, "a")
    net.deliver()
    net.core(1).progress[3].become_probe()
    net.propose(1, "b")
    [probe] = _appends_to(net, 3)
    net.queue = [m for m in net.queue if m is not probe]  # lost
    net.deliver()
    assert net.core(3).last_index == 2
    net.step(1, Tick())
    [heartbeat] = _appends_to(net, 3)
    net.queue = [m for m in net.queue if m is not heartbeat]
    net.deliver()
    net.deliver_one(heartbeat)
    [answer] = net.take(lambda m: m.frm == 3)
    for _ in range(3):
        net.deliver_one(answer)
    resent = [m for m in _appends_to(net, 3) if m.msg.entries]  # type: ignore[union-attr]
    assert len(resent) == 1, resent
    net.deliver()
    assert net.applied_data(3) == ["a", "b"]


def test_probe_answered_by_caught_up_follower_replicates() -> None:
    """A follower in PROBE that holds the whole log answers the empty probe without news
    of a match; that answer is the probe's own, so the leader streams again and the next
    entry goes out at once, not a heartbeat round later."""
    net = Network()
    net.elect(1)
    net.propose(1, "a")
    net.deliver()
    pr = net.core(1).progress[3]
    pr.become_probe()
    net.step(1, Tick())
    net.deliver()
    assert pr.state is ProgressState.REPLICATE
    net.propose(1, "b")
    assert [m.msg.entries[-1].index for m in _appends_to(net, 3)] == [3]  # type: ignore[union-attr]
