"""Unit tests of the core's small parts: log.py, quorum.py, progress.py, membership.py."""

from __future__ import annotations

import pytest

from felix.proto.raft_messages import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    SnapshotMeta,
)
from felix.raft.log import RaftLog
from felix.raft.membership import ConfHistory, apply_change, check_change, encode_change
from felix.raft.progress import Inflights, Progress, ProgressState
from felix.raft.quorum import VoteResult, committed_index, has_quorum, majority, vote_result


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(start + i, t, EntryKind.NORMAL, b"") for i, t in enumerate(terms)]


def meta(index: int, term: int) -> SnapshotMeta:
    return SnapshotMeta(index, term, ConfState((1,), ()), 0, 0)


# -- log.py ----------------------------------------------------------------------------


def test_log_index_arithmetic_after_compaction() -> None:
    log = RaftLog(entries=tuple(ents(1, 1, 2, 2, 3)))
    assert (log.first_index, log.last_index, log.last_term) == (1, 5, 3)
    log.compact(3, meta(3, 2), b"s")
    assert (log.first_index, log.last_index, log.last_term) == (4, 5, 3)
    assert log.term_at(3) == 2  # the snapshot's own index stays answerable (§7)
    assert log.term_at(2) is None and log.term_at(6) is None
    assert [e.index for e in log.slice(4, 6)] == [4, 5]
    with pytest.raises(AssertionError):
        log.slice(3, 5)


def test_log_truncate_moves_unsaved_and_persisted_watermarks() -> None:
    log = RaftLog(entries=tuple(ents(1, 1, 1)))
    assert log.take_unsaved() == [] and log.persisted_index == 3
    log.truncate_and_append(ents(2, 2, start=2))
    assert log.persisted_index == 1
    assert [(e.index, e.term) for e in log.take_unsaved()] == [(2, 2), (3, 2)]
    assert not log.mark_persisted(3, 1)  # stale news: index 3 is term 2 now
    assert log.mark_persisted(3, 2) and log.persisted_index == 3


def test_log_mark_persisted_refuses_entries_not_handed_out() -> None:
    log = RaftLog()
    log.append(Entry(1, 1, EntryKind.NOOP, b""))
    assert not log.mark_persisted(1, 1)
    log.take_unsaved()
    assert log.mark_persisted(1, 1)


def test_log_find_conflict_and_hints() -> None:
    log = RaftLog(entries=tuple(ents(1, 1, 2, 2, 2, 4)))
    assert log.find_conflict(ents(1, 2, start=2)) == 2  # all held already
    assert log.find_conflict(ents(1, 2, 2, 9, start=2)) == 3
    assert log.find_conflict(ents(2, 4, start=5)) == 2
    assert log.conflict_hint(5) == (3, 2)  # first index of term 2
    assert log.conflict_hint(9) == (7, None)  # our log is shorter
    assert log.last_index_of_term(2) == 5
    assert log.last_index_of_term(3) is None
    assert log.is_up_to_date(6, 4) and log.is_up_to_date(1, 5)
    assert not log.is_up_to_date(9, 3) and not log.is_up_to_date(5, 4)


def test_log_slice_capped_by_count_and_bytes() -> None:
    log = RaftLog()
    for i in range(1, 11):
        log.append(Entry(i, 1, EntryKind.NORMAL, b"x" * (1000 if i == 5 else 10)))
    assert len(log.slice_capped(1, 3, 10_000)) == 3
    assert [e.index for e in log.slice_capped(1, 100, 35)] == [1, 2, 3]
    assert [e.index for e in log.slice_capped(5, 100, 35)] == [5]  # oversized moves alone


def test_log_restore_replaces_everything() -> None:
    log = RaftLog(entries=tuple(ents(1, 1, 1)))
    log.restore(meta(10, 3), b"data")
    assert (log.first_index, log.last_index, log.last_term) == (11, 10, 3)
    assert log.take_unsaved() == [] and log.persisted_index == 10


# -- quorum.py -------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "need"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_majority(n: int, need: int) -> None:
    assert majority(n) == need


def test_committed_index_is_the_majority_th_highest_match() -> None:
    assert committed_index([5, 3, 9]) == 5
    assert committed_index([5, 3, 9, 1]) == 3
    assert committed_index([7, 7, 2, 1, 0]) == 2
    assert committed_index([]) == 0


def test_vote_result_counts_only_voters() -> None:
    voters = (1, 2, 3)
    assert vote_result(voters, {1: True}) is VoteResult.PENDING
    assert vote_result(voters, {1: True, 2: True}) is VoteResult.WON
    assert vote_result(voters, {1: True, 2: False, 3: False}) is VoteResult.LOST
    assert vote_result(voters, {1: True, 4: True, 5: True}) is VoteResult.PENDING
    assert has_quorum(voters, {1, 3}) and not has_quorum(voters, {1, 4, 5})


# -- progress.py -----------------------------------------------------------------------


def test_inflights_bound_and_free() -> None:
    infl = Inflights(3)
    for last in (5, 8, 12):
        infl.add(last)
    assert infl.full()
    with pytest.raises(AssertionError):
        infl.add(13)
    infl.free_to(8)
    assert len(infl) == 1 and not infl.full()


def test_progress_probe_replicate_snapshot_transitions() -> None:
    pr = Progress(next_index=11, inflight_msgs_max=2, is_learner=False)
    assert pr.state is ProgressState.PROBE and not pr.paused()
    pr.sent_entries(12, 1)
    assert pr.paused() and pr.next == 11  # probing does not move next optimistically
    assert pr.maybe_update(12)
    pr.become_replicate()
    assert pr.next == 13
    pr.sent_entries(15, 1)
    pr.sent_entries(18, 1)
    assert pr.paused() and pr.next == 19
    assert pr.maybe_update(15) and not pr.paused()
    assert not pr.maybe_update(14)  # stale ack
    pr.become_snapshot(100)
    assert pr.paused()
    pr.maybe_update(100)
    pr.become_probe()
    assert (pr.state, pr.next) == (ProgressState.PROBE, 101)


# -- membership.py ---------------------------------------------------------------------


def test_conf_changes_single_server() -> None:
    conf = ConfState((1, 2, 3), ())
    add = ConfChange(ConfChangeKind.ADD_LEARNER, 4)
    conf2 = apply_change(conf, add)
    assert conf2 == ConfState((1, 2, 3), (4,))
    assert check_change(conf2, add) is not None
    conf3 = apply_change(conf2, ConfChange(ConfChangeKind.PROMOTE, 4))
    assert conf3 == ConfState((1, 2, 3, 4), ())
    assert check_change(conf3, ConfChange(ConfChangeKind.PROMOTE, 2)) == "node 2 is not a learner"
    assert apply_change(conf3, ConfChange(ConfChangeKind.REMOVE, 1)) == ConfState((2, 3, 4), ())
    last = ConfState((1,), ())
    assert check_change(last, ConfChange(ConfChangeKind.REMOVE, 1)) == "node 1 is the last voter"


def test_conf_history_rollback_and_compaction() -> None:
    hist = ConfHistory(ConfState((1, 2, 3), ()))
    hist.append(5, encode_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4)))
    hist.append(9, encode_change(ConfChange(ConfChangeKind.PROMOTE, 4)))
    assert hist.latest == ConfState((1, 2, 3, 4), ()) and hist.latest_index == 9
    assert hist.at(7) == ConfState((1, 2, 3), (4,))
    hist.truncate_from(9)  # thesis §4.1: an uncommitted config is rolled back with its entry
    assert hist.latest == ConfState((1, 2, 3), (4,))
    hist.compact(6)
    assert hist.base == ConfState((1, 2, 3), (4,)) and hist.latest_index == 0
    assert hist.append(12, b"\xff") == hist.latest  # garbage changes nothing
