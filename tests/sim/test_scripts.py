"""The scripted schedules: figure 8 and crash-right-after-ack.

With a correct core a script's dangerous step never happens (its wait times out) and the
run is clean.  With the matching sabotage the step happens and the *effect* checks --
with the direct checks (``leader_commit_rule``, ``persist_before_send``, ``vote_once``)
off -- catch it on every seed: leader completeness at the next election, and, with that
off too, state-machine safety when the next leader commits over the lost entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from felix.testing.checkers import DIRECT_CHECKS
from felix.testing.faults import figure8_script
from felix.testing.sim import SimResult, run_seed

SCRIPT_SEEDS = range(5)
PHASE_MS = 1000.0
# The step that waits for the leader to commit the mark (figure 8 (c); ack_crash).
COMMIT_STEP = {"figure8": 7, "ack_crash": 2}
SABOTAGE_OF = {"figure8": "commit_old_term", "ack_crash": "ack_before_persist"}


def run(
    seed: int,
    script: str,
    *,
    sabotage: Sequence[str] = (),
    disabled: frozenset[str] = frozenset(),
    hash_trace: bool = False,
) -> SimResult:
    return run_seed(
        seed,
        script=script,
        sabotage=sabotage,
        disabled=disabled,
        hash_trace=hash_trace,
        fault_phase_ms=PHASE_MS,
    )


def test_commit_step_index_matches_the_script() -> None:
    step = figure8_script().steps[COMMIT_STEP["figure8"]]
    assert type(step.until).__name__ == "Committed"


@pytest.mark.parametrize("script", sorted(SABOTAGE_OF))
@pytest.mark.parametrize("seed", SCRIPT_SEEDS)
def test_correct_core_passes_and_never_commits_the_mark(script: str, seed: int) -> None:
    result = run(seed, script)
    assert result.ok, result.report()
    assert result.fired.get(script) == 1, "the script did not run to its end"
    assert result.script_steps[COMMIT_STEP[script]] == "timeout", result.script_steps


@pytest.mark.parametrize("script", sorted(SABOTAGE_OF))
@pytest.mark.parametrize("seed", SCRIPT_SEEDS)
def test_sabotage_is_caught_by_leader_completeness(script: str, seed: int) -> None:
    result = run(seed, script, sabotage=[SABOTAGE_OF[script]], disabled=DIRECT_CHECKS)
    assert result.violation is not None, f"{script} seed {seed}: nothing caught"
    assert result.violation.invariant == "leader_completeness", result.report()
    assert result.script_steps[COMMIT_STEP[script]] == "ok", result.script_steps


@pytest.mark.parametrize("script", sorted(SABOTAGE_OF))
@pytest.mark.parametrize("seed", SCRIPT_SEEDS)
def test_sabotage_is_caught_by_state_machine_safety(script: str, seed: int) -> None:
    disabled = DIRECT_CHECKS | {"leader_completeness"}
    result = run(seed, script, sabotage=[SABOTAGE_OF[script]], disabled=disabled)
    assert result.violation is not None, f"{script} seed {seed}: nothing caught"
    assert result.violation.invariant in {"state_machine_safety", "durability"}, result.report()


def test_ack_crash_acknowledged_the_lost_write() -> None:
    """The broken follower's ack made it to a client: a lost acknowledged write."""
    result = run(0, "ack_crash", sabotage=["ack_before_persist"], disabled=DIRECT_CHECKS)
    assert result.client_acks >= 1
    assert result.script_steps[COMMIT_STEP["ack_crash"] + 1] == "ok"  # the leader applied it


@pytest.mark.parametrize("script", sorted(SABOTAGE_OF))
def test_scripted_seed_replays_bit_for_bit(script: str) -> None:
    first = run(3, script, hash_trace=True)
    second = run(3, script, hash_trace=True)
    assert first.trace_hash == second.trace_hash
    assert first.script_steps == second.script_steps
