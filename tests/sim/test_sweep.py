"""The CI sweep: many seeds of the whole-cluster simulation, zero violations.

Every node persists through the real WAL (`felix.storage.memory_wal.MemoryWal`), so
each crash and power loss in the sweep is also a recovery of the production WAL code
(torn tails included), checked against a model of what was durable (``recovery``).

Seeds run in chunks so pytest shows progress; the last test checks that every fault
kind fired in enough seeds and writes the per-kind counts to ``/tmp`` (and stdout).
A failing seed is reported with its fault plan and the one line that replays it.

The membership sweep runs the same seeds' faults with spare nodes an operator adds,
promotes and removes (felix/testing/sim_membership.py); ``FELIX_SIM_MEMBERSHIP_SEEDS``
sets how many (default `MEMBERSHIP_SEEDS`), or soak with
``python -m felix.testing.sim --membership non-member --join-via-snapshot --seeds N``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from felix.testing.faults import FAULT_KINDS
from felix.testing.sim import SimResult, run_seed

SWEEP_SEEDS = 500
CHUNK_SEEDS = 25
FAULT_PHASE_MS = 10_000.0
SEEDS_PER_KIND_MIN = 20
OPS_PER_SEED_MIN = 100  # heavy-fault seeds; the median is several hundred
OPS_PER_SEED_MEDIAN_MIN = 500
COVERAGE_PATH = Path(tempfile.gettempdir()) / "felix_sim_coverage.json"

MEMBERSHIP_SEEDS_ENV = "FELIX_SIM_MEMBERSHIP_SEEDS"
MEMBERSHIP_SEEDS = int(os.environ.get(MEMBERSHIP_SEEDS_ENV) or 400)
MEMBERSHIP_CHUNK_SEEDS = 50
MEMBERSHIP_PHASE_MS = 3000.0
MEMBER_KINDS = ("member_add_learner", "member_promote", "member_remove", "member_retired")
_results: dict[int, SimResult] = {}
_member_results: dict[int, SimResult] = {}


@pytest.mark.slow
@pytest.mark.parametrize("first_seed", range(0, SWEEP_SEEDS, CHUNK_SEEDS))
def test_sweep_chunk(first_seed: int) -> None:
    failures = []
    for seed in range(first_seed, first_seed + CHUNK_SEEDS):
        result = run_seed(seed, fault_phase_ms=FAULT_PHASE_MS)
        _results[seed] = result
        if not result.ok:
            failures.append(result.report())
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_sweep_exercised_every_fault_kind_and_real_workloads() -> None:
    if len(_results) < SWEEP_SEEDS:
        pytest.skip("needs the whole sweep in this session")
    seeds_per_kind = {
        kind: sum(1 for r in _results.values() if r.fired.get(kind)) for kind in FAULT_KINDS
    }
    sizes = {n: sum(1 for r in _results.values() if r.plan.nodes == n) for n in (3, 5)}
    ops = sorted(r.history_ops for r in _results.values())
    report = {
        "seeds": len(_results),
        "cluster_sizes": sizes,
        "history_ops_min": ops[0],
        "history_ops_median": ops[len(ops) // 2],
        "client_acks_total": sum(r.client_acks for r in _results.values()),
        "events_total": sum(r.events for r in _results.values()),
        "seeds_per_fault_kind": seeds_per_kind,
    }
    COVERAGE_PATH.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nsimulation coverage ({COVERAGE_PATH}):")
    for kind, count in seeds_per_kind.items():
        print(f"  {kind:<18} {count:>4} seeds")
    thin = {kind: n for kind, n in seeds_per_kind.items() if n < SEEDS_PER_KIND_MIN}
    assert not thin, f"fault kinds fired in too few seeds: {thin}"
    assert min(sizes.values()) >= SWEEP_SEEDS // 4, sizes
    assert ops[0] >= OPS_PER_SEED_MIN, f"a seed recorded only {ops[0]} client operations"
    assert ops[len(ops) // 2] >= OPS_PER_SEED_MEDIAN_MIN, f"median {ops[len(ops) // 2]} ops"


@pytest.mark.slow
@pytest.mark.parametrize("join", ["snapshot", "log"], ids=["via_snapshot", "via_log"])
@pytest.mark.parametrize("first_seed", range(0, MEMBERSHIP_SEEDS, MEMBERSHIP_CHUNK_SEEDS))
def test_membership_sweep_chunk(first_seed: int, join: str) -> None:
    """Non-member spares join (from a snapshot, or from the log), get promoted and
    removed under the seed's faults: zero violations."""
    last = min(first_seed + MEMBERSHIP_CHUNK_SEEDS, MEMBERSHIP_SEEDS)
    for seed in range(first_seed, last):
        result = run_seed(
            seed,
            membership="non-member",
            join_via_snapshot=join == "snapshot",
            fault_phase_ms=MEMBERSHIP_PHASE_MS,
        )
        if join == "snapshot":
            _member_results[seed] = result
        assert result.ok, result.report()


@pytest.mark.slow
def test_membership_sweep_made_every_kind_of_change() -> None:
    if len(_member_results) < MEMBERSHIP_SEEDS:
        pytest.skip("needs the whole membership sweep in this session")
    seeds_per_kind = {
        kind: sum(1 for r in _member_results.values() if r.fired.get(kind))
        for kind in (*MEMBER_KINDS, "join_from_snapshot", "crash", "partition", "drop")
    }
    print(f"\nmembership sweep, {MEMBERSHIP_SEEDS} seeds: {seeds_per_kind}")
    thin = {kind: n for kind, n in seeds_per_kind.items() if n < MEMBERSHIP_SEEDS // 5}
    assert not thin, f"membership sweep: too few seeds with {thin}"
