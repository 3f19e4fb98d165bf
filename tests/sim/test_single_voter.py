"""Tier-A sweep of a cluster grown from one node: one voter, the other nodes learners.

A single voter's own vote is its whole quorum, so it wins an election alone, at once;
the crash window between winning and its term being durable is what
tests/raft/test_election.py's single-voter-with-learner scenario replays by hand.  Here
the random faults (crashes that lose the unsynced write among them) run against that
configuration, and ``persist_before_send`` checks every AppendEntries, InstallSnapshot,
TimeoutNow and RequestVote against the sender's durable term.
"""

from __future__ import annotations

from felix.testing.faults import generate_plan
from felix.testing.sim import run_seed

SEEDS = 60
PHASE_MS = 2000.0


def _seeds_with_crashes(count: int) -> list[int]:
    seeds: list[int] = []
    seed = 0
    while len(seeds) < count:
        plan = generate_plan(seed, PHASE_MS)
        if plan.crashes or plan.power_losses:
            seeds.append(seed)
        seed += 1
    return seeds


def test_one_voter_with_learners_survives_crashes() -> None:
    failures = []
    crashed = 0
    for seed in _seeds_with_crashes(SEEDS):
        result = run_seed(seed, voters=1, fault_phase_ms=PHASE_MS)
        crashed += bool(result.fired.get("crash"))
        if not result.ok:
            failures.append(result.report())
    assert not failures, "\n\n".join(failures)
    assert crashed >= SEEDS // 2, f"only {crashed} of {SEEDS} seeds crashed a node"
