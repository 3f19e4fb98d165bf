"""Simulation throughput: how fast the pure core commits, and how fast the sim runs.

1. Committed entries per CPU-second for three pure cores with no faults: proposals go to
   the leader in batches, messages are delivered in-process at once, persistence is
   instant.  Measures the core (and this minimal driver), not the simulator.
2. Simulated seconds per wall second (and per CPU-second) of the full tier-A
   simulation with faults on (`felix.testing.sim.run_seed`), over a few seeds.  Each
   simulated node persists through the real WAL (`MemoryWal`), so this includes the
   segment encoding, the simulated fsyncs and every crash recovery.

Run with ``python -m bench.sim_throughput``; prints a table and writes
``bench/results/sim_throughput.json``.  Core timing uses ``time.process_time`` (CPU time).
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from pathlib import Path

from felix.proto.raft_messages import ConfState, Entry, SnapshotMeta
from felix.raft.core import RaftCore
from felix.raft.driver import ReadyDriver
from felix.raft.ready import Outbound, Ready
from felix.raft.types import BootState, HardState, Propose, RaftConfig, Receive, Role
from felix.raft.types import Campaign as CampaignInput
from felix.testing.sim import run_seed

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "sim_throughput.json"
BATCH_PROPOSALS = 64
BATCHES = 300
PAYLOAD = b"x" * 64
SIM_SEEDS = range(10)


class _InstantHands:
    """Disk, network and applier of one node for `ReadyDriver`: the write is durable
    at once, messages go to a shared inbox, applied entries are counted."""

    def __init__(self, node_id: int, inbox: deque[tuple[int, Receive]]) -> None:
        self.node_id = node_id
        self.inbox = inbox
        self.applied = 0

    def start_write(self, ready: Ready) -> None:
        return None

    def send(self, out: Outbound) -> None:
        self.inbox.append((out.to, Receive(self.node_id, out.message)))

    def resolve(self, ready: Ready) -> None:
        pass

    def restore(self, meta: SnapshotMeta, data: bytes) -> None:
        pass

    def apply(self, entry: Entry) -> None:
        self.applied += 1

    def batch_applied(self, ready: Ready) -> None:
        pass


def _pump(cores: dict[int, RaftCore]) -> int:
    """Deliver every Ready until quiet (instant fsync, instant network) through the
    production `ReadyDriver`; returns the number of entries applied on the leader."""
    inbox: deque[tuple[int, Receive]] = deque()
    hands = {n: _InstantHands(n, inbox) for n in cores}
    drivers = {n: ReadyDriver(core, hands[n], hands[n], hands[n]) for n, core in cores.items()}
    busy = True
    while busy or inbox:
        busy = False
        while inbox:
            to, message = inbox.popleft()
            cores[to].step(message)
        for node_id, core in cores.items():
            while core.has_ready():
                busy = True
                ready = core.take_ready()
                drivers[node_id].begin(ready)
                drivers[node_id].finish(ready)
    leader = next((n for n, c in cores.items() if c.role is Role.LEADER), None)
    return hands[leader].applied if leader is not None else 0


def bench_core_commits() -> dict[str, float]:
    conf = ConfState(voters=(1, 2, 3), learners=())
    rng = random.Random(1)
    cores = {
        n: RaftCore(RaftConfig(node_id=n), random.Random(rng.getrandbits(32)),
                    BootState(HardState(), conf))
        for n in conf.voters
    }  # fmt: skip
    cores[1].step(CampaignInput())
    _pump(cores)
    assert cores[1].role is Role.LEADER
    request_id = 0
    committed = 0
    started = time.process_time()
    for _ in range(BATCHES):
        for _ in range(BATCH_PROPOSALS):
            request_id += 1
            cores[1].step(Propose(request_id, PAYLOAD))
        committed += _pump(cores)
    elapsed = time.process_time() - started
    return {
        "entries_committed": committed,
        "cpu_s": elapsed,
        "entries_per_cpu_s": committed / elapsed,
        "batch_proposals": BATCH_PROPOSALS,
    }


def bench_simulation() -> dict[str, float]:
    sim_ms = 0.0
    events = 0
    started = time.process_time()
    wall_started = time.perf_counter()
    for seed in SIM_SEEDS:
        result = run_seed(seed, fault_phase_ms=10_000.0)
        assert result.ok, result.report()
        sim_ms += result.sim_ms
        events += result.events
    elapsed = time.process_time() - started
    wall = time.perf_counter() - wall_started
    return {
        "seeds": len(SIM_SEEDS),
        "wall_s": wall,
        "simulated_s_per_wall_s": sim_ms / 1000 / wall,
        "simulated_s": sim_ms / 1000,
        "cpu_s": elapsed,
        "simulated_s_per_cpu_s": sim_ms / 1000 / elapsed,
        "events_per_cpu_s": events / elapsed,
        "cpu_s_per_seed": elapsed / len(SIM_SEEDS),
    }


def main() -> None:
    core = bench_core_commits()
    sim = bench_simulation()
    print(f"{'measure':<44}{'value':>14}")
    print(f"{'core: committed entries / CPU-s (3 nodes)':<44}{core['entries_per_cpu_s']:>14,.0f}")
    print(f"{'sim: simulated s / wall s (faults on)':<44}{sim['simulated_s_per_wall_s']:>14,.1f}")
    print(f"{'sim: simulated s / CPU-s (faults on)':<44}{sim['simulated_s_per_cpu_s']:>14,.1f}")
    print(f"{'sim: events / CPU-s':<44}{sim['events_per_cpu_s']:>14,.0f}")
    print(f"{'sim: CPU-s per seed (10 s fault phase)':<44}{sim['cpu_s_per_seed']:>14,.3f}")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({"core": core, "simulation": sim}, indent=2) + "\n")
    print(f"written {RESULTS_PATH}")


if __name__ == "__main__":
    main()
