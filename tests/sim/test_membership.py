"""Tier-A membership changes: add, promote and remove under crashes and partitions.

Spare nodes outside the initial configuration join through a scheduler-driven operator
(felix/testing/sim_membership.py), one single-server change at a time (thesis §4.1),
while the seed's random faults run; felix/testing/conf_checks.py checks every node's
configuration against the model of what its log gives.

How a joining node boots:

* ``legacy`` (self + peers as voters, as `felix serve` does without
  ``cluster.initial_members``): since CONFIG entries carry the whole configuration
  (docs/architecture.md §15) the node becomes a learner as soon as it holds its own
  ADD_LEARNER, but until then it believes it votes and may ask for votes (pre-votes,
  which its empty log never wins).  The checkers must see that -- else a sweep of that
  mode proves nothing -- and it is why Kubernetes runs with ``initial_members``.
* ``non-member`` (an empty configuration): it learns its role from the log or a
  snapshot; both sweeps are clean.
"""

from __future__ import annotations

from collections import Counter

import pytest

from felix.testing.sim import SimResult, run_seed

PHASE_MS = 3000.0
LEGACY_SEEDS = 20
SNAPSHOT_JOIN_SEEDS = 60
LOG_JOIN_SEEDS = 40
BUG_CHECKS = {"learner_stays_learner", "learner_campaigns", "membership"}


def _run(count: int, mode: str, *, via_snapshot: bool) -> list[SimResult]:
    return [
        run_seed(seed, membership=mode, join_via_snapshot=via_snapshot, fault_phase_ms=PHASE_MS)
        for seed in range(count)
    ]


def test_legacy_join_is_caught_as_a_learner_that_believes_it_votes() -> None:
    """A node booted the legacy way takes itself for a voter until its ADD_LEARNER
    arrives: every violation is one of the membership checks, and they do fire."""
    results = _run(LEGACY_SEEDS, "legacy", via_snapshot=False)
    caught = Counter(r.violation.invariant for r in results if r.violation is not None)
    print(f"\nlegacy join, {LEGACY_SEEDS} seeds: {dict(caught)}")
    assert set(caught) <= BUG_CHECKS, [r.report() for r in results if not r.ok]
    assert sum(caught.values()) >= LEGACY_SEEDS // 10, caught


def test_a_learner_that_campaigns_is_caught() -> None:
    """Sabotage ``learner_campaigns`` (felix/testing/sabotage.py): a learner's first
    (pre-)vote request fails the run."""
    for seed in range(20):
        result = run_seed(
            seed,
            membership="non-member",
            join_via_snapshot=True,
            sabotage=["learner_campaigns"],
            fault_phase_ms=PHASE_MS,
        )
        if not result.ok:
            assert result.violation is not None
            assert result.violation.invariant == "learner_campaigns", result.report()
            return
    pytest.fail("a campaigning learner went unseen in 20 seeds")


def test_non_member_join_via_snapshot_sweep_is_clean() -> None:
    """Spares boot as non-members and join once the leader's log is compacted (they
    catch up from a snapshot, whose ConfState is whole): zero violations, and every
    kind of change happened."""
    results = _run(SNAPSHOT_JOIN_SEEDS, "non-member", via_snapshot=True)
    failures = [r.report() for r in results if not r.ok]
    assert not failures, "\n\n".join(failures)
    fired: Counter[str] = Counter()
    for r in results:
        fired.update(kind for kind, count in r.fired.items() if count)
    for kind in ("member_add_learner", "member_promote", "member_remove", "member_retired"):
        assert fired[kind] >= SNAPSHOT_JOIN_SEEDS // 3, (kind, fired[kind])
    assert fired["join_from_snapshot"] >= SNAPSHOT_JOIN_SEEDS // 3
    assert fired["crash"] >= SNAPSHOT_JOIN_SEEDS // 3


def test_non_member_join_from_the_log_sweep_is_clean() -> None:
    results = _run(LOG_JOIN_SEEDS, "non-member", via_snapshot=False)
    failures = [r.report() for r in results if not r.ok]
    assert not failures, f"{len(failures)} of {LOG_JOIN_SEEDS} seeds:\n\n" + "\n\n".join(failures)
    assert sum(r.fired.get("join_from_log", 0) for r in results) >= LOG_JOIN_SEEDS // 4


STORM_SEEDS = (5071, 5678)  # a learner catching up from an empty log, dup=0.30
STORM_EVENTS_MAX = 300_000  # each needs ~30k events; the storm ran past EVENTS_MAX (3M)


@pytest.mark.parametrize("seed", STORM_SEEDS)
def test_duplicated_answers_do_not_multiply_probes(seed: int) -> None:
    """Regression: a learner joining with an empty log under a duplicating, reordering
    network.  Every stale or duplicated AppendResponse used to release another probe,
    so the AppendEntries in flight to the learner grew by the duplication rate with
    every round trip until the run drowned (liveness: more than 3000000 events).  A
    probe is now released only by its own answer or a later heartbeat round's
    (felix/raft/progress.py)."""
    result = run_seed(seed, membership="non-member", fault_phase_ms=PHASE_MS)
    assert result.ok, result.report()
    assert result.events < STORM_EVENTS_MAX, result.events
    assert result.fired.get("duplicate", 0) and result.fired.get("member_add_learner", 0)


def test_a_membership_seed_replays_bit_for_bit() -> None:
    first = run_seed(3, membership="non-member", join_via_snapshot=True, hash_trace=True)
    second = run_seed(3, membership="non-member", join_via_snapshot=True, hash_trace=True)
    assert first.trace_hash and first.trace_hash == second.trace_hash
    assert first.member_changes == second.member_changes and first.member_changes
