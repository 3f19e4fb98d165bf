"""Faults as data: one `FaultPlan` per simulation seed.

Theory of operation
-------------------
Each seed draws its own plan ("swarm testing", as FoundationDB and TigerBeetle's VOPR do):
every fault kind is switched on for a random subset of seeds, with random intensity, so
that across a sweep every kind runs alone and in combination, at low and high rates.  A
plan is a frozen value that prints as one line (`FaultPlan.describe`) at the start of a
failing run; the same seed always yields the same plan.

Times are simulated milliseconds.  Episodes that name no node (``node=None``) pick their
victim when they start: the leader at that moment, which is what makes "isolate the
leader" and "crash the leader" meaningful.

Some seeds also open with a *script* (`felix.testing.sim_scripts`: Raft's figure 8,
followers crashing right after an acknowledgement) that steers the cluster into a known
dangerous corner before the random faults start.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field, replace

from felix.testing.sim_scripts import SCRIPTS, Script, ack_crash_script, figure8_script

__all__ = [
    "FAULT_KINDS",
    "HEALTHY_NETWORK",
    "SCRIPTS",
    "ChurnEvent",
    "ChurnKind",
    "CoreTuning",
    "CrashEpisode",
    "FaultPlan",
    "NetworkFaults",
    "PartitionEpisode",
    "PartitionKind",
    "Script",
    "ack_crash_script",
    "figure8_script",
    "generate_plan",
    "script_plan",
]

FAULT_KINDS: tuple[str, ...] = (
    "drop",
    "duplicate",
    "delay",
    "reorder",
    "partition",
    "one_way_partition",
    "isolate_leader",
    "crash",
    "power_loss",
    "unsynced_loss",
    "unsynced_kept",
    "torn_write",
    "wal_rotate",
    "wal_compact",
    "clock_skew",
    "leader_transfer",
    "campaign",
    "snapshot",
    "install_snapshot",
    "figure8",
    "ack_crash",
)
"""What the simulation counts as *fired* per seed (a kind can be planned yet not fire,
e.g. a crash that found no pending write loses nothing: no ``unsynced_loss``).

Storage kinds are what the node's real WAL (`felix.storage.memory_wal.MemoryWal`) went
through: ``unsynced_loss`` a crash dropped an unsynced batch record, ``unsynced_kept`` a
crash kept all of it (its fsync had not returned, the bytes made it anyway),
``torn_write`` a crash left part of one (recovery must truncate it), ``wal_rotate`` a
segment filled up, ``wal_compact`` segments were deleted behind a snapshot."""


class PartitionKind(enum.Enum):
    SPLIT = "split"  # two sides, no traffic between them
    BRIDGE = "bridge"  # two sides that only one bridge node connects (non-transitive)
    ISOLATE_LEADER = "isolate_leader"  # the current leader alone, both ways
    ONE_WAY_OUT = "one_way_out"  # a node hears everyone, nobody hears it
    ONE_WAY_IN = "one_way_in"  # a node is heard, hears nobody


@dataclass(frozen=True, slots=True)
class PartitionEpisode:
    start_ms: float
    duration_ms: float
    kind: PartitionKind
    side: tuple[int, ...] = ()  # SPLIT/BRIDGE: one side; ONE_WAY_*: the node


@dataclass(frozen=True, slots=True)
class CrashEpisode:
    """Crash ``node`` (None: the leader then) at ``start_ms``; restart after downtime."""

    start_ms: float
    downtime_ms: float
    node: int | None
    at_storage_op: bool = False  # wait for the victim's next write, crash before its fsync


class ChurnKind(enum.Enum):
    TRANSFER_LEADER = "transfer"
    CAMPAIGN = "campaign"


@dataclass(frozen=True, slots=True)
class ChurnEvent:
    at_ms: float
    kind: ChurnKind


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    """Per-message faults on node-to-node links; delay is uniform in [min, max] and an
    outlier (probability ``reorder_rate``) adds up to ``reorder_ms_max`` more."""

    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    delay_ms_min: float = 0.2
    delay_ms_max: float = 2.0
    reorder_rate: float = 0.0
    reorder_ms_max: float = 0.0


HEALTHY_NETWORK = NetworkFaults()


@dataclass(frozen=True, slots=True)
class CoreTuning:
    """Per-seed core settings: small batches and windows, and elections without pre-vote
    or check-quorum, reach code paths (and interleavings) the defaults rarely do."""

    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    entries_per_msg_max: int = 1024
    inflight_msgs_max: int = 64


def _tuning(rng: random.Random) -> CoreTuning:
    if rng.random() < 0.4:
        return CoreTuning()
    return CoreTuning(
        election_ticks=rng.randint(5, 20),
        heartbeat_ticks=rng.randint(1, 3),
        pre_vote=rng.random() < 0.7,
        check_quorum=rng.random() < 0.7,
        entries_per_msg_max=rng.choice((1, 2, 8, 64, 1024)),
        inflight_msgs_max=rng.choice((1, 4, 64)),
    )


SCRIPT_ELECTION_TICKS_MIN = 30  # a script runs ~200 ms: no spontaneous election meanwhile


def _script_tuning(tuning: CoreTuning, name: str) -> CoreTuning:
    """The seed's own tuning, but what the script needs to happen happens."""
    tuning = replace(tuning, election_ticks=max(tuning.election_ticks, SCRIPT_ELECTION_TICKS_MIN))
    if name == "figure8":
        # (c) needs the old entry to reach S3 without the next one; (d) needs S3 to vote
        # for S5 right after hearing from S1 (no check-quorum lease).
        tuning = replace(tuning, entries_per_msg_max=1, check_quorum=False)
    return tuning


@dataclass(frozen=True, slots=True)
class FaultPlan:
    seed: int
    nodes: int
    clients: int
    keys: int
    fault_phase_ms: float
    tick_ms: float
    tuning: CoreTuning
    network: NetworkFaults
    partitions: tuple[PartitionEpisode, ...]
    crashes: tuple[CrashEpisode, ...]
    power_losses: tuple[float, ...]  # every node crashes at once (correlated failure)
    churn: tuple[ChurnEvent, ...]
    clock_rates: tuple[float, ...]  # tick interval multiplier per node (1.0 = on time)
    fsync_ms_min: float
    fsync_ms_max: float
    torn_write_rate: float  # chance a crash leaves a prefix of the unsynced write
    snapshot_every: int  # take a snapshot every this many applied entries; 0 = never
    client_think_ms_max: float
    client_timeout_ms: float
    planned: frozenset[str] = field(default_factory=frozenset)
    wal_segment_bytes: int = 64 * 1024  # small segments: rotation and compaction happen
    script: Script | None = None  # runs first; the random faults start when it ends

    @property
    def liveness_ms(self) -> float:
        """After healing: a leader and a committed probe on every node within ten
        maximal election timeouts, plus catch-up room."""
        return 10 * 2 * self.tuning.election_ticks * self.tick_ms + 1000.0

    def describe(self) -> str:
        """One line per plan, printed at the start of a failing run."""
        net = self.network
        parts = ",".join(
            f"{p.kind.value}{list(p.side)}@{p.start_ms:.0f}+{p.duration_ms:.0f}"
            for p in self.partitions
        )
        crashes = ",".join(
            f"{c.node or 'leader'}{'/io' if c.at_storage_op else ''}"
            f"@{c.start_ms:.0f}+{c.downtime_ms:.0f}"
            for c in self.crashes
        )
        churn = ",".join(f"{c.kind.value}@{c.at_ms:.0f}" for c in self.churn)
        power = ",".join(f"{t:.0f}" for t in self.power_losses)
        rates = ",".join(f"{r:.2f}" for r in self.clock_rates)
        return (
            f"seed={self.seed} nodes={self.nodes} clients={self.clients} keys={self.keys} "
            f"phase={self.fault_phase_ms:.0f}ms drop={net.drop_rate:.2f} "
            f"dup={net.duplicate_rate:.2f} delay={net.delay_ms_min:.1f}-{net.delay_ms_max:.1f}ms "
            f"reorder={net.reorder_rate:.2f}/{net.reorder_ms_max:.0f}ms "
            f"fsync={self.fsync_ms_min:.1f}-{self.fsync_ms_max:.1f}ms "
            f"torn={self.torn_write_rate:.2f} snapshot_every={self.snapshot_every} "
            f"clock=[{rates}] partitions=[{parts}] crashes=[{crashes}] "
            f"power_loss=[{power}] churn=[{churn}] wal_segment={self.wal_segment_bytes} "
            f"script={self.script.name if self.script else None} "
            f"planned={sorted(self.planned)} {self.tuning}"
        )


def _episode_times(
    rng: random.Random, count: int, phase_ms: float, duration_ms: tuple[float, float]
) -> list[tuple[float, float]]:
    """``count`` (start, duration) pairs inside the fault phase, sorted by start."""
    times = []
    for _ in range(count):
        start = rng.uniform(0.05, 0.9) * phase_ms
        times.append((start, rng.uniform(*duration_ms)))
    return sorted(times)


def _network(rng: random.Random, planned: set[str]) -> NetworkFaults:
    drop = rng.uniform(0.01, 0.3) if "drop" in planned else 0.0
    dup = rng.uniform(0.01, 0.4) if "duplicate" in planned else 0.0
    delay_max = rng.uniform(5.0, 40.0) if "delay" in planned else 2.0
    reorder = rng.uniform(0.02, 0.15) if "reorder" in planned else 0.0
    reorder_ms = rng.uniform(20.0, 150.0) if reorder else 0.0
    return NetworkFaults(drop, dup, 0.2, delay_max, reorder, reorder_ms)


def _partitions(
    rng: random.Random, planned: set[str], nodes: int, phase_ms: float
) -> tuple[PartitionEpisode, ...]:
    kinds: list[PartitionKind] = []
    if "partition" in planned:
        kinds += [rng.choice((PartitionKind.SPLIT, PartitionKind.BRIDGE)) for _ in range(3)]
    if "one_way_partition" in planned:
        kinds += [rng.choice((PartitionKind.ONE_WAY_OUT, PartitionKind.ONE_WAY_IN))] * 2
    if "isolate_leader" in planned:
        kinds += [PartitionKind.ISOLATE_LEADER] * 2
    rng.shuffle(kinds)
    kinds = kinds[: rng.randint(1, 4)] if kinds else []
    episodes = []
    for kind, (start, duration) in zip(
        kinds, _episode_times(rng, len(kinds), phase_ms, (100.0, 1500.0)), strict=True
    ):
        if kind in (PartitionKind.SPLIT, PartitionKind.BRIDGE):
            side = tuple(sorted(rng.sample(range(1, nodes + 1), rng.randint(1, nodes // 2))))
        elif kind is PartitionKind.ISOLATE_LEADER:
            side = ()
        else:
            side = (rng.randint(1, nodes),)
        episodes.append(PartitionEpisode(start, duration, kind, side))
    return tuple(episodes)


def _crashes(
    rng: random.Random, planned: set[str], nodes: int, phase_ms: float
) -> tuple[CrashEpisode, ...]:
    if "crash" not in planned:
        return ()
    count = rng.randint(1, 6)
    return tuple(
        CrashEpisode(
            start,
            duration,
            None if rng.random() < 0.4 else rng.randint(1, nodes),
            at_storage_op=rng.random() < 0.6,
        )
        for start, duration in _episode_times(rng, count, phase_ms, (20.0, 800.0))
    )


def _churn(rng: random.Random, planned: set[str], phase_ms: float) -> tuple[ChurnEvent, ...]:
    events = []
    if "leader_transfer" in planned:
        events += [ChurnEvent(0.0, ChurnKind.TRANSFER_LEADER)] * rng.randint(1, 6)
    if "campaign" in planned:
        events += [ChurnEvent(0.0, ChurnKind.CAMPAIGN)] * rng.randint(1, 6)
    timed = [ChurnEvent(rng.uniform(0.05, 0.95) * phase_ms, e.kind) for e in events]
    return tuple(sorted(timed, key=lambda e: e.at_ms))


def _clock_rates(rng: random.Random, planned: set[str], nodes: int) -> tuple[float, ...]:
    rates = [1.0] * nodes
    if "clock_skew" in planned:
        for node in rng.sample(range(nodes), rng.randint(1, max(1, nodes // 2))):
            rates[node] = rng.choice((rng.uniform(0.3, 0.8), rng.uniform(1.3, 3.0)))
    return tuple(rates)


_PLAN_ODDS: dict[str, float] = {
    "drop": 0.5,
    "duplicate": 0.4,
    "delay": 0.4,
    "reorder": 0.4,
    "partition": 0.45,
    "one_way_partition": 0.35,
    "isolate_leader": 0.35,
    "crash": 0.6,
    "power_loss": 0.3,
    "torn_write": 0.5,
    "clock_skew": 0.4,
    "leader_transfer": 0.4,
    "campaign": 0.3,
    "snapshot": 0.6,
}


WAL_SEGMENT_BYTES_CHOICES = (4 * 1024, 16 * 1024, 64 * 1024)
SCRIPT_ODDS = 0.3


def generate_plan(seed: int, fault_phase_ms: float = 3000.0) -> FaultPlan:
    """The fault plan of ``seed`` (its own `random.Random`, independent of the run's)."""
    rng = random.Random(f"felix-fault-plan-{seed}")
    planned = {kind for kind, odds in _PLAN_ODDS.items() if rng.random() < odds}
    nodes = rng.choice((3, 5))
    slow_disk = rng.random() < 0.3  # fsync stalls of tens of ms happen on real disks
    fsync_max = rng.uniform(10.0, 40.0) if slow_disk else rng.uniform(0.5, 6.0)
    plan = FaultPlan(
        seed=seed,
        nodes=nodes,
        clients=rng.randint(3, 6),
        keys=rng.randint(1, 4),
        fault_phase_ms=fault_phase_ms,
        tick_ms=10.0,
        tuning=_tuning(rng),
        network=_network(rng, planned),
        partitions=_partitions(rng, planned, nodes, fault_phase_ms),
        crashes=_crashes(rng, planned, nodes, fault_phase_ms),
        power_losses=tuple(
            sorted(
                rng.uniform(0.05, 0.9) * fault_phase_ms
                for _ in range(rng.randint(1, 4) if "power_loss" in planned else 0)
            )
        ),
        churn=_churn(rng, planned, fault_phase_ms),
        clock_rates=_clock_rates(rng, planned, nodes),
        fsync_ms_min=0.1,
        fsync_ms_max=fsync_max,
        torn_write_rate=rng.uniform(0.3, 1.0) if "torn_write" in planned else 0.0,
        snapshot_every=rng.randint(8, 60) if "snapshot" in planned else 0,
        client_think_ms_max=rng.uniform(2.0, 30.0),
        client_timeout_ms=rng.uniform(300.0, 1000.0),
        planned=frozenset(planned),
    )
    # Drawn after everything above, so adding them left every seed's random faults as
    # they were (a script only adjusts the core tuning it needs).
    segment_bytes = rng.choice(WAL_SEGMENT_BYTES_CHOICES)
    script = None
    if rng.random() < SCRIPT_ODDS:
        script = "figure8" if nodes == 5 and rng.random() < 0.6 else "ack_crash"
    plan = replace(plan, wal_segment_bytes=segment_bytes)
    return _with_script(plan, script) if script else plan


def script_plan(seed: int, script: str, fault_phase_ms: float = 3000.0) -> FaultPlan:
    """The plan of ``seed``, made to open with ``script`` (one of `SCRIPTS`)."""
    if script not in SCRIPTS:
        raise ValueError(f"unknown script {script!r}; known: {SCRIPTS}")
    return _with_script(generate_plan(seed, fault_phase_ms), script)


def _with_script(plan: FaultPlan, name: str) -> FaultPlan:
    nodes = plan.nodes
    if name == "figure8" and nodes != 5:
        nodes = 5  # episodes name nodes 1..3 only: still valid; new nodes keep time
        plan = replace(plan, nodes=5, clock_rates=(*plan.clock_rates, 1.0, 1.0))
    script = figure8_script() if name == "figure8" else ack_crash_script(nodes)
    return replace(
        plan,
        script=script,
        tuning=_script_tuning(plan.tuning, name),
        planned=(plan.planned - set(SCRIPTS)) | {name},
    )
