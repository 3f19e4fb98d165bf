"""Checker self-test: a core broken on purpose must be caught within 50 seeds.

The cores of `felix.testing.sabotage` break one rule each.  With every checker on,
the direct checks (``persist_before_send``, ``vote_once``, ``leader_commit_rule``) point
at the cause.  With those disabled, the effect checks (election safety, leader
completeness, state-machine safety, durability ...) must still see the damage.  Random
faults rarely reach the damage of ``commit_old_term`` and ``ack_before_persist``; the
scripted seeds (`felix.testing.faults.Script`: figure 8, crash right after an ack) steer
the cluster there, and some of the first 50 seeds run them.

``lying_fsync`` breaks the disk instead (fsync acknowledged, nothing made durable): the
``recovery`` check, which compares each recovered WAL with the model of what was
durable, must catch it.  ``lax_sync`` breaks the shared Ready driver's sync rule
(`felix.raft.driver`: a new term or vote is not written before the votes that promise
it): the promise check must catch it, and without it the effect checks.
"""

from __future__ import annotations

import pytest

from felix.testing.checkers import DIRECT_CHECKS
from felix.testing.sim import SimResult, run_seed

SEEDS_MAX = 50
SELFTEST_PHASE_MS = 3000.0

EXPECTED_DIRECT = {
    "ack_before_persist": {"persist_before_send"},
    "double_vote": {"vote_once", "persist_before_send", "election_safety"},
    "commit_old_term": {"leader_commit_rule"},
    "lying_fsync": {"recovery"},
    "lax_sync": {"persist_before_send"},
}
# With the direct checks off.  A lost acknowledged write shows first as a leader elected
# without it (leader completeness); tests/sim/test_scripts.py also turns that off and
# sees state-machine safety catch it.
EXPECTED_EFFECT = {
    "double_vote": {"election_safety", "state_machine_safety", "leader_completeness"},
    "commit_old_term": {"state_machine_safety", "leader_completeness"},
    "ack_before_persist": {"durability", "state_machine_safety", "leader_completeness"},
    # A follower that acked before syncing loses acknowledged entries in a crash: the
    # leader sees its match go back (the disk "wiped", felix/raft/progress.py lost_match).
    "lax_sync": {
        "election_safety",
        "state_machine_safety",
        "leader_completeness",
        "vote_once",
        "match_monotonic",
    },
}


def first_caught(sabotage: str, disabled: frozenset[str] = frozenset()) -> SimResult | None:
    for seed in range(SEEDS_MAX):
        result = run_seed(
            seed, sabotage=[sabotage], disabled=disabled, fault_phase_ms=SELFTEST_PHASE_MS
        )
        if not result.ok:
            return result
    return None


@pytest.mark.parametrize("sabotage", sorted(EXPECTED_DIRECT))
def test_sabotage_is_caught(sabotage: str) -> None:
    result = first_caught(sabotage)
    assert result is not None, f"{sabotage}: no violation in {SEEDS_MAX} seeds"
    assert result.violation is not None
    print(f"\n{sabotage}: seed {result.seed} -> {result.violation}")
    assert result.violation.invariant in EXPECTED_DIRECT[sabotage]


@pytest.mark.slow
@pytest.mark.parametrize("sabotage", sorted(EXPECTED_EFFECT))
def test_sabotage_is_caught_by_effect_checks_alone(sabotage: str) -> None:
    result = first_caught(sabotage, disabled=DIRECT_CHECKS)
    assert result is not None, f"{sabotage}: effect checks saw nothing in {SEEDS_MAX} seeds"
    assert result.violation is not None
    print(f"\n{sabotage} (effect checks only): seed {result.seed} -> {result.violation}")
    assert result.violation.invariant in EXPECTED_EFFECT[sabotage], result.report()


def test_correct_core_passes_the_selftest_seeds() -> None:
    """The self-test's seeds are clean without sabotage (else a catch proves nothing)."""
    for seed in range(10):
        result = run_seed(seed, fault_phase_ms=SELFTEST_PHASE_MS)
        assert result.ok, result.report()


def test_the_simulation_runs_the_production_sync_rule() -> None:
    """Commit-only hard states are not written (Ready.must_sync False), as in the server:
    the same driver decides it, and a clean seed still passes every check."""
    result = run_seed(0, fault_phase_ms=SELFTEST_PHASE_MS)
    assert result.ok, result.report()
    assert result.fired.get("commit_unsynced", 0) > 0
