"""Replaying one seed, and determinism: one seed, one trace, bit for bit."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from felix.testing.faults import generate_plan
from felix.testing.sim import run_seed
from tests.sim.conftest import REPLAY_SEED_ENV, replay_seed
from tests.sim.test_sweep import FAULT_PHASE_MS

DETERMINISM_SEEDS = (0, 2, 7, 8, 42, 123, 499)  # 2: ack_crash script, 8: figure8


def test_replay_seed() -> None:
    """With ``FELIX_SIM_SEED`` set: rerun that seed with a full trace written to /tmp."""
    seed = replay_seed()
    if seed is None:
        pytest.skip(f"set {REPLAY_SEED_ENV}=<seed> to replay one seed")
    trace: list[str] = []
    result = run_seed(seed, trace=trace, fault_phase_ms=FAULT_PHASE_MS)
    path = Path(tempfile.gettempdir()) / f"felix_sim_trace_{seed}.txt"
    path.write_text("\n".join(trace) + "\n")
    print(f"\nFAULT PLAN {result.plan.describe()}")
    print("\n".join(trace[-60:]))
    print(f"full trace ({len(trace)} events, hash {result.trace_hash}): {path}")
    assert result.ok, result.report()


@pytest.mark.parametrize("seed", DETERMINISM_SEEDS)
def test_same_seed_same_trace(seed: int) -> None:
    first = run_seed(seed, hash_trace=True)
    second = run_seed(seed, hash_trace=True)
    assert first.trace_hash and first.trace_hash == second.trace_hash
    assert (first.events, first.sim_ms, first.history_ops, first.fired) == (
        second.events,
        second.sim_ms,
        second.history_ops,
        second.fired,
    )


def test_different_seeds_differ() -> None:
    hashes = {run_seed(seed, hash_trace=True).trace_hash for seed in DETERMINISM_SEEDS}
    assert len(hashes) == len(DETERMINISM_SEEDS)


def test_fault_plan_is_a_pure_function_of_the_seed() -> None:
    assert generate_plan(5) == generate_plan(5)
    assert generate_plan(5).describe() != generate_plan(6).describe()
    assert "seed=5 " in generate_plan(5).describe()
