"""Each invariant checker fires on a hand-built violation and stays quiet on valid input."""

from __future__ import annotations

import pytest

from felix.proto.raft_messages import Entry, EntryKind
from felix.testing.checkers import (
    INVARIANTS,
    ClusterChecker,
    InvariantViolation,
    chain_digest,
)


def entry(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(index, term, EntryKind.NORMAL, data or f"{index}/{term}".encode())


def digests(entries: list[Entry]) -> list[int]:
    out, digest = [], 0
    for e in entries:
        digest = chain_digest(digest, e)
        out.append(digest)
    return out


def violation(invariant: str) -> pytest.RaisesExc[InvariantViolation]:
    return pytest.raises(InvariantViolation, match=f"^{invariant}:")


def test_election_safety_allows_one_leader_per_term() -> None:
    checker = ClusterChecker()
    checker.observe_leader(1, 5)
    checker.observe_leader(1, 5)
    checker.observe_leader(2, 6)
    with violation("election_safety"):
        checker.observe_leader(3, 5)


def test_vote_once_per_term_even_across_restarts() -> None:
    checker = ClusterChecker()
    checker.observe_vote_sent(1, 3, 2)
    checker.observe_vote_sent(1, 3, 2)  # a resend of the same vote is fine
    checker.observe_vote_sent(1, 4, 3)
    with violation("vote_once"):
        checker.observe_vote_sent(1, 3, 3)


def test_log_matching_same_index_and_term_means_same_entry() -> None:
    checker = ClusterChecker()
    checker.observe_entries(1, [entry(1, 1), entry(2, 1)], prev_term=0)
    checker.observe_entries(2, [entry(1, 1), entry(2, 1)], prev_term=0)
    with violation("log_matching"):
        checker.observe_entries(3, [entry(2, 1, b"other")], prev_term=1)


def test_log_matching_same_index_and_term_means_same_prefix() -> None:
    checker = ClusterChecker()
    checker.observe_entries(1, [entry(4, 2), entry(5, 3)], prev_term=2)
    with violation("log_matching"):
        checker.observe_entries(2, [entry(5, 3)], prev_term=1)


def test_log_matching_allows_different_terms_at_one_index() -> None:
    checker = ClusterChecker()
    checker.observe_entries(1, [entry(3, 2)], prev_term=1)
    checker.observe_entries(2, [entry(3, 3)], prev_term=1)


def test_state_machine_safety_rejects_a_different_entry_at_an_index() -> None:
    checker = ClusterChecker()
    log_a = [entry(1, 1), entry(2, 1)]
    log_b = [entry(1, 1), entry(2, 2)]
    for i, (e, d) in enumerate(zip(log_a, digests(log_a), strict=True)):
        checker.observe_apply(1, i, e, d)
    checker.observe_apply(2, 0, log_b[0], digests(log_b)[0])
    with violation("state_machine_safety"):
        checker.observe_apply(2, 1, log_b[1], digests(log_b)[1])


def test_state_machine_safety_rejects_gaps() -> None:
    checker = ClusterChecker()
    e1, e3 = entry(1, 1), entry(3, 1)
    checker.observe_apply(1, 0, e1, chain_digest(0, e1))
    with violation("state_machine_safety"):
        checker.observe_apply(1, 1, e3, chain_digest(0, e3))


def test_state_machine_safety_checks_snapshot_restores() -> None:
    checker = ClusterChecker()
    log = [entry(1, 1), entry(2, 1)]
    for i, (e, d) in enumerate(zip(log, digests(log), strict=True)):
        checker.observe_apply(1, i, e, d)
    checker.observe_restore(2, 2, 1, digests(log)[1])
    with violation("state_machine_safety"):
        checker.observe_restore(3, 2, 1, 12345)


def test_commit_never_regresses_within_an_incarnation() -> None:
    checker = ClusterChecker()
    checker.observe_commit(1, 1, 5)
    checker.observe_commit(1, 2, 3)  # restarted: may start from its durable commit
    with violation("commit_monotonic"):
        checker.observe_commit(1, 1, 4)


def test_leader_commits_only_entries_of_its_term() -> None:
    checker = ClusterChecker()
    checker.observe_leader_commit(1, 4, 10, 4)
    with violation("leader_commit_rule"):
        checker.observe_leader_commit(1, 4, 11, 3)


def test_leader_completeness() -> None:
    checker = ClusterChecker()
    log = [entry(1, 1), entry(2, 1), entry(3, 2)]
    for i, (e, d) in enumerate(zip(log, digests(log), strict=True)):
        checker.observe_apply(1, i, e, d)
    checker.observe_new_leader(2, 3, 0, [*log, entry(4, 3)])
    checker.observe_new_leader(3, 4, 2, [log[2]])  # entries 1-2 are in its snapshot
    with violation("leader_completeness"):
        checker.observe_new_leader(4, 5, 0, log[:2])
    with violation("leader_completeness"):
        checker.observe_new_leader(5, 6, 0, [log[0], log[1], entry(3, 3)])


def test_persist_before_send() -> None:
    checker = ClusterChecker()
    checker.observe_send_promise(1, "an ack", True, lambda: "unused")
    with violation("persist_before_send"):
        checker.observe_send_promise(1, "an ack of 7", False, lambda: "index 7 is durable")


def test_durability_of_acknowledged_writes() -> None:
    checker = ClusterChecker()
    e1 = entry(1, 1)
    checker.observe_apply(1, 0, e1, chain_digest(0, e1))
    checker.observe_client_ack(1, 1)
    checker.check_durability()
    checker.observe_client_ack(2, 1)
    with violation("durability"):
        checker.check_durability()


def test_disabled_checks_stay_quiet() -> None:
    checker = ClusterChecker(disabled=frozenset({"election_safety"}))
    checker.observe_leader(1, 1)
    checker.observe_leader(2, 1)
    with pytest.raises(ValueError, match="unknown invariants"):
        ClusterChecker(disabled=frozenset({"nonsense"}))
    assert "linearizability" in INVARIANTS


def test_committed_but_unapplied_entries_are_protected() -> None:
    """A commit point a leader reached counts even if nobody applied it yet."""
    checker = ClusterChecker()
    checker.observe_leader_commit(1, 2, 5, 2)
    checker.observe_new_leader(2, 3, 0, [entry(i, 2) for i in range(1, 6)])
    with violation("leader_completeness"):
        checker.observe_new_leader(3, 4, 0, [entry(i, 2) for i in range(1, 5)])
    e = entry(1, 1)
    checker.observe_leader_commit(1, 1, 1, 1)
    checker.observe_apply(1, 0, e, chain_digest(0, e))
    other = entry(1, 3)
    with violation("state_machine_safety"):
        checker.observe_apply(2, 0, other, chain_digest(0, other))
