"""Tier-A observers: membership changes with observer spares under crashes and
partitions (felix/testing/sim_membership.py, ``observers``).  The checks of
felix/testing/conf_checks.py: an observer is never among any configuration's voters,
never campaigns, never grants a vote, and a PROMOTE of one (the operator tries now and
then) is never appended (docs/architecture.md, "Observers")."""

from __future__ import annotations

from collections import Counter

import pytest

from felix.testing.sim import SimResult, run_seed

SWEEP_SEEDS = 200
PHASE_MS = 800.0  # short runs: the sweep stays within seconds
OBSERVERS = 2


def _run(seed: int, **kwargs: object) -> SimResult:
    return run_seed(
        seed,
        membership="non-member",
        observers=OBSERVERS,
        fault_phase_ms=PHASE_MS,
        **kwargs,  # type: ignore[arg-type]
    )


def test_observer_sweep_is_clean() -> None:
    results = [_run(seed) for seed in range(SWEEP_SEEDS)]
    failures = [f"(phase {PHASE_MS} ms) {r.report()}" for r in results if not r.ok]
    assert not failures, f"{len(failures)} of {SWEEP_SEEDS} seeds:\n\n" + "\n\n".join(failures)
    fired: Counter[str] = Counter()
    for r in results:
        fired.update(kind for kind, count in r.fired.items() if count)
    print(f"\nobservers, {SWEEP_SEEDS} seeds: {dict(sorted(fired.items()))}")
    # The sweep exercised what it checks: observers were members under faults, and
    # promoting one was tried and refused.
    assert fired["observer_member"] >= SWEEP_SEEDS // 4, fired
    assert fired["observer_promote_refused"] >= SWEEP_SEEDS // 8, fired
    assert fired["observer_promote_accepted"] == 0
    assert fired["crash"] >= SWEEP_SEEDS // 2 and fired["partition"] >= SWEEP_SEEDS // 2
    assert fired["member_promote"] >= 1  # ordinary learners are still promoted


def test_an_observer_that_campaigns_is_caught() -> None:
    """Sabotage ``observer_campaigns`` (felix/testing/sabotage.py): the observer's first
    (pre-)vote request fails the run with the observer check."""
    for seed in range(40):
        result = _run(seed, sabotage=["observer_campaigns"])
        if not result.ok:
            assert result.violation is not None
            assert result.violation.invariant == "observer_campaigns", result.report()
            return
    pytest.fail("a campaigning observer went unseen in 40 seeds")
