"""Chaos: cancel a node's nursery at a random scheduler step mid-replication, restart it
from its WAL (sometimes after losing unsynced writes, like a power cut), repeat.

The cancellation point is a count of Trio task steps, picked by a seeded RNG and fired by
a `trio.abc.Instrument`; with the seeded scheduler and MockClock a seed replays exactly:
``FELIX_CHAOS_SEED=<n> pytest tests/server/test_chaos.py``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from felix.server.raft_node import NodeSettings
from felix.server.requests import NodeError
from felix.testing.cluster import TICK_S, TrioCluster
from felix.testing.determinism import seeded_trio_scheduler
from felix.testing.kv import encode_put

SEEDS = 24
CANCELLATIONS_PER_SEED = 10


class StepTrigger(trio.abc.Instrument):
    """Calls ``action`` just before the ``countdown``-th task step from now."""

    def __init__(self) -> None:
        self.countdown = -1
        self.action: object = None
        self.steps = 0

    def arm(self, steps: int, scope: trio.CancelScope) -> None:
        self.countdown, self.action = steps, scope

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.countdown > 0:
            self.countdown -= 1
            if self.countdown == 0 and isinstance(self.action, trio.CancelScope):
                self.action.cancel()


@dataclass
class Outcome:
    acked: dict[str, bytes] = field(default_factory=dict)
    cancellations: int = 0
    crashes: int = 0


async def chaos_run(seed: int, trigger: StepTrigger) -> Outcome:
    rng = random.Random(seed)
    outcome = Outcome()
    async with trio.open_nursery() as nursery:
        settings = NodeSettings(tick_s=TICK_S, snapshot_entries=400, snapshot_in_thread=False)
        cluster = TrioCluster(nursery, [1, 2, 3], seed=seed, settings=settings)
        await cluster.start_all()
        await cluster.wait_for_leader()

        async def writer(name: str) -> None:
            n = 0
            while True:
                leader = cluster.leader()
                if leader is None or leader.node is None:
                    await trio.sleep(TICK_S)
                    continue
                key, value = f"{name}-{n}", b"%d" % n
                try:
                    await leader.node.propose(encode_put(key, value), timeout_s=1.0)
                except NodeError:
                    await trio.sleep(TICK_S)
                    continue
                outcome.acked[key] = value
                n += 1

        async with trio.open_nursery() as writers:
            for name in ("w1", "w2", "w3"):
                writers.start_soon(writer, name)
            for _ in range(CANCELLATIONS_PER_SEED):
                victim = cluster.nodes[rng.choice(cluster.voters)]
                assert victim.scope is not None
                trigger.arm(rng.randint(1, 400), victim.scope)
                await victim.stopped.wait()
                outcome.cancellations += 1
                crash = rng.random() < 0.5
                outcome.crashes += crash
                await cluster.stop(victim.node_id, crash=crash)
                assert victim.node is not None
                await trio.sleep(rng.uniform(0, 0.3))
                await cluster.start(victim.node_id)
            writers.cancel_scope.cancel()
        await cluster.wait_converged()
        for sim in cluster.running():
            for key, value in outcome.acked.items():
                assert sim.kv.items.get(key) == value, (
                    f"seed {seed}: node {sim.node_id} lost acknowledged write {key}"
                )
        nursery.cancel_scope.cancel()
    # Every task of every node lived in a nursery that has exited: nothing leaks.
    return outcome


def run_seed(seed: int) -> Outcome:
    trigger = StepTrigger()
    with seeded_trio_scheduler(seed):
        return trio.run(
            chaos_run,
            seed,
            trigger,
            clock=trio.testing.MockClock(autojump_threshold=0),
            instruments=[trigger],
        )


def seeds() -> list[int]:
    if "FELIX_CHAOS_SEED" in os.environ:
        return [int(os.environ["FELIX_CHAOS_SEED"])]
    return list(range(SEEDS))


@pytest.mark.parametrize("seed", seeds())
def test_cancel_nurseries_mid_replication(seed: int) -> None:
    try:
        outcome = run_seed(seed)
    except BaseException:
        print(f"replay: FELIX_CHAOS_SEED={seed} pytest tests/server/test_chaos.py")
        raise
    assert outcome.cancellations == CANCELLATIONS_PER_SEED
    assert len(outcome.acked) > 20  # the run did real work between faults


def test_total_cancellations_per_ci_run() -> None:
    assert SEEDS * CANCELLATIONS_PER_SEED >= 200


def test_a_seed_replays_exactly() -> None:
    first, second = run_seed(7), run_seed(7)
    assert first.acked == second.acked
    assert (first.cancellations, first.crashes) == (second.cancellations, second.crashes)
