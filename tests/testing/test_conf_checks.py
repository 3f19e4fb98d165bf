"""The membership checker on hand-made observations: each check fires on the break it
names, and stays quiet on the correct sequence (felix/testing/conf_checks.py)."""

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
from felix.testing.checkers import INVARIANTS, ClusterChecker, InvariantViolation
from felix.testing.conf_checks import Members, MembershipChecker

THREE = ConfState(voters=(1, 2, 3), learners=())
WITH_4 = ConfState(voters=(1, 2, 3), learners=(4,))
EMPTY = ConfState(voters=(), learners=())


def conf_entry(index: int, term: int = 1) -> Entry:
    return Entry(index, term, EntryKind.CONFIG, b"")  # the checker reads (index, term) only


def add_4(members: MembershipChecker, index: int = 2) -> Entry:
    """Leader 1 appends ADD_LEARNER 4 at ``index`` (and writes it)."""
    entry = conf_entry(index)
    members.on_proposed(1, entry, ConfChange(ConfChangeKind.ADD_LEARNER, 4), WITH_4)
    members.on_batch(1, None, [entry])
    return entry


def checker_with_cluster() -> MembershipChecker:
    members = MembershipChecker(ClusterChecker(), THREE)
    for node in (1, 2, 3):
        members.on_boot(node, THREE, None, ())
    return members


def violation(invariant: str) -> pytest.RaisesExc[InvariantViolation]:
    assert invariant in INVARIANTS
    return pytest.raises(InvariantViolation, match=f"^{invariant}: ")


def test_members_after_applies_single_server_changes() -> None:
    base = Members.of(THREE)
    added = base.after(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    assert added == Members.of(WITH_4)
    promoted = added.after(ConfChange(ConfChangeKind.PROMOTE, 4)) if added else None
    assert promoted == Members(frozenset({1, 2, 3, 4}), frozenset())
    assert base.after(ConfChange(ConfChangeKind.PROMOTE, 4)) is None
    assert base.after(ConfChange(ConfChangeKind.ADD_LEARNER, 2)) is None
    removed = base.after(ConfChange(ConfChangeKind.REMOVE, 2))
    assert removed == Members(frozenset({1, 3}), frozenset())


def test_a_joiner_that_learns_its_role_from_the_log_passes() -> None:
    members = checker_with_cluster()
    entry = add_4(members)
    members.check_conf(1, WITH_4, 1, 2)
    members.on_boot(4, EMPTY, None, ())
    members.check_conf(4, EMPTY, 1, None)  # nothing in its log yet: its boot state
    members.on_batch(4, None, [Entry(1, 1, EntryKind.NOOP, b""), entry])
    members.check_conf(4, WITH_4, 1, None)


def test_a_joiner_that_believes_it_votes_is_caught() -> None:
    """The issue-14 bug: booted with self + peers as voters, ADD_LEARNER ignored."""
    members = checker_with_cluster()
    entry = add_4(members)
    members.on_boot(4, ConfState(voters=(1, 2, 3, 4), learners=()), None, ())
    members.on_batch(4, None, [entry])
    with violation("learner_stays_learner"):
        members.check_conf(4, ConfState(voters=(1, 2, 3, 4), learners=()), 1, None)


def test_a_joiner_holding_a_partial_configuration_is_caught() -> None:
    members = checker_with_cluster()
    entry = add_4(members)
    members.on_boot(4, EMPTY, None, ())
    members.on_batch(4, None, [entry])
    with violation("membership"):
        members.check_conf(4, ConfState(voters=(), learners=(4,)), 1, None)


def test_a_snapshot_gives_the_configuration_and_is_checked() -> None:
    members = checker_with_cluster()
    entry = add_4(members)
    meta = SnapshotMeta(2, 1, WITH_4, 0, 0)
    members.on_snapshot_taken(1, meta)
    members.on_boot(5, EMPTY, None, ())
    members.on_batch(5, meta, ())
    members.check_conf(5, WITH_4, 1, None)
    members.on_batch(2, None, [entry])
    with violation("membership"):
        members.on_snapshot_taken(2, SnapshotMeta(2, 1, THREE, 0, 0))  # without node 4
    wrong = SnapshotMeta(2, 1, THREE, 0, 0)
    with violation("membership"):
        members.on_batch(5, wrong, ())


def test_a_never_voter_asking_for_votes_is_caught() -> None:
    members = checker_with_cluster()
    members.on_vote_request(2, 3)
    members.on_boot(4, EMPTY, None, ())
    with violation("learner_campaigns"):
        members.on_vote_request(4, 3)


def test_a_leader_without_a_majority_of_votes_is_caught() -> None:
    cluster = ClusterChecker()
    members = MembershipChecker(cluster, THREE)
    members.on_boot(1, THREE, None, ())
    cluster.observe_vote_sent(2, 5, 1)
    members.on_new_leader(1, 5, 0, 0)
    members.check_conf(1, THREE, 5, 0)  # 1 and 2: a majority
    members.on_new_leader(1, 6, 0, 0)
    cluster.observe_vote_sent(4, 6, 1)  # a learner's (or stranger's) vote does not count
    with violation("election_quorum"):
        members.check_conf(1, THREE, 6, 0)


def test_a_commit_without_a_majority_of_voters_is_caught() -> None:
    members = checker_with_cluster()
    add_4(members)
    members.on_leader_commit(1, 1, 2, 2, {1, 2})
    members.check_conf(1, WITH_4, 1, 2)
    members.on_leader_commit(1, 1, 3, 3, {1, 4})  # the learner counted
    with violation("commit_quorum"):
        members.check_conf(1, WITH_4, 1, 3)


def test_a_removed_leader_that_stays_is_caught() -> None:
    members = checker_with_cluster()
    entry = conf_entry(2)
    without_1 = ConfState(voters=(2, 3), learners=())
    members.on_proposed(1, entry, ConfChange(ConfChangeKind.REMOVE, 1), without_1)
    members.on_batch(1, None, [entry])
    members.check_conf(1, without_1, 1, 1)  # not committed yet: it still leads (§4.2.2)
    with violation("removed_never_leads"):
        members.check_conf(1, without_1, 1, 2)


def test_a_change_of_two_voters_or_to_no_voters_is_caught() -> None:
    members = checker_with_cluster()
    change = ConfChange(ConfChangeKind.REMOVE, 3)
    with violation("single_change"):
        members.on_proposed(1, conf_entry(2), change, ConfState(voters=(1,), learners=()))
    single = MembershipChecker(ClusterChecker(), ConfState(voters=(1,), learners=()))
    single.on_boot(1, ConfState(voters=(1,), learners=()), None, ())
    with violation("voters_nonempty"):
        single.on_proposed(1, conf_entry(2), ConfChange(ConfChangeKind.REMOVE, 1), EMPTY)


def test_a_leader_applying_a_change_wrongly_is_caught() -> None:
    members = checker_with_cluster()
    change = ConfChange(ConfChangeKind.ADD_LEARNER, 4)
    with violation("membership"):
        members.on_proposed(1, conf_entry(2), change, ConfState(voters=(1, 2, 3, 4), learners=()))


def test_a_committed_removal_is_remembered() -> None:
    members = checker_with_cluster()
    entry = conf_entry(2)
    without_3 = ConfState(voters=(1, 2), learners=())
    members.on_proposed(1, entry, ConfChange(ConfChangeKind.REMOVE, 3), without_3)
    assert members.on_applied(2, entry) == Members.of(without_3)
    assert members.removed_at == {3: 2}
    assert members.committed == Members.of(without_3)
