"""Tier-A deterministic whole-cluster simulation of the pure Raft cores (docs/architecture.md §10).

Theory of operation
-------------------
N `RaftCore`s (3 or 5) live in one process with no Trio, no clock and no threads.  One
heap of ``(time, seq, event)`` is the only scheduler and one ``random.Random(seed)`` the
only source of chance, so a seed replays bit for bit.  Each seed draws a `FaultPlan`
(`felix.testing.faults`): message drop, duplication, delay and reorder, symmetric,
non-transitive and one-way partitions (also around the current leader), crashes that lose
unsynced (possibly torn) writes, per-node clock rates, leadership transfers, forced
campaigns and snapshot/compaction every K applied entries.

A node is driven exactly as `felix.raft.ready` says: ``send_now`` goes out at once, the
batch is written to the node's real WAL (`felix.storage.memory_wal.MemoryWal` on
simulated files) without fsync, and becomes durable only when the simulated fsync
completes and the driver calls ``sync`` (so a crash between "sent" and "durable"
happens); then ``Persisted`` is stepped, ``send_after_persist`` goes out, committed
entries are applied, reads are answered, and ``compact_to`` compacts the WAL.  One batch
is on disk at a time; inputs keep reaching the core meanwhile.  A snapshot the node takes
itself is saved to the WAL's snapshot store before the core hears ``SnapshotTaken``.

A crash is a power loss of the simulated disk (`MemoryWal.crash`): the unsynced batch
record is lost, kept whole, or torn (a prefix kept), and a restart is the production
recovery, ``open`` -> `BootState` -> a fresh `RaftCore`.  Next to each WAL runs a model of
its durable image (`felix.testing.simdisk.SimDisk`); the checkers read "durable" from
the model, and every recovery -- and a final power loss at the end of each run -- must
give back exactly the model's image (the ``recovery`` invariant), so a WAL that loses or
invents anything fails the seed.

Some seeds open with a scripted schedule (`felix.testing.sim_scripts.Script`: Raft's figure
8, followers crashing right after an acknowledgement) before the random faults start.

Clients (`felix.testing.clients`) write unique values and read keys of a replicated
register through the node they believe leads; the history feeds the linearizability
checker.  After the fault phase everything heals and the cluster must elect a leader and
commit a fresh probe on every node within `FaultPlan.liveness_ms` (liveness).
`ClusterChecker` watches every step.

Usage
-----
Soak many seeds and print a summary (exit status 1 if any seed failed)::

    python -m felix.testing.sim --seeds 20000 --start 0

Replay one seed with a full event trace (also ``FELIX_SIM_SEED=<n> pytest tests/sim``)::

    python -m felix.testing.sim --seed 1234 --verbose

Run with a sabotaged core to see the checkers fire (``--disable`` turns checkers off,
``--script figure8`` / ``ack_crash`` opens every seed with that schedule)::

    python -m felix.testing.sim --seeds 50 --sabotage ack_before_persist
    python -m felix.testing.sim --seeds 5 --script figure8 --sabotage commit_old_term \\
        --disable leader_commit_rule
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from felix.proto.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfState,
    EntryKind,
    InstallSnapshot,
    RequestVote,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from felix.raft.core import RaftCore
from felix.raft.driver import ReadyDriver
from felix.raft.ready import (
    Outbound,
    ProposalAccepted,
    ProposalRefused,
    ReadRefused,
    ReadState,
    Ready,
)
from felix.raft.types import (
    BootState,
    Campaign,
    Entry,
    Input,
    Propose,
    RaftConfig,
    ReadIndex,
    Receive,
    Role,
    SnapshotTaken,
    Tick,
    TransferLeader,
)
from felix.storage.errors import StorageError
from felix.storage.memory_wal import MemoryWal
from felix.storage.snapshots import snapshot_meta
from felix.testing.checkers import ClusterChecker, InvariantViolation, chain_digest
from felix.testing.clients import (
    ClientOp,
    ClientReply,
    ClientRequest,
    ReplyOutcome,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
)
from felix.testing.faults import (
    HEALTHY_NETWORK,
    SCRIPTS,
    ChurnKind,
    FaultPlan,
    generate_plan,
    script_plan,
)
from felix.testing.linearizability import Operation, OpKind, check_register_history
from felix.testing.sabotage import core_for
from felix.testing.sim_events import (
    CLIENT_LINK_MS,
    Scheduler,
    _Churn,
    _ClientArrive,
    _ClientIssue,
    _ClientReplyArrive,
    _ClientRetry,
    _ClientTimeout,
    _Crash,
    _CrashNow,
    _Deliver,
    _FsyncDone,
    _Heal,
    _LivenessDeadline,
    _PartitionEnd,
    _PartitionStart,
    _PowerLoss,
    _Restart,
    _ScriptWake,
    _Tick,
)
from felix.testing.sim_network import Network
from felix.testing.sim_scripts import (
    Applied,
    CaughtUp,
    Committed,
    CrashNodes,
    CrashOnWrite,
    Holds,
    IsLeader,
    Links,
    RestartNodes,
    Script,
    ScriptAction,
    ScriptCondition,
    StartCampaign,
    Write,
)
from felix.testing.simdisk import DiskWrite, SimDisk, SimFiles

__all__ = ["SimResult", "Simulation", "main", "replay_line", "run_seed"]

EVENTS_MAX = 3_000_000  # a runaway (zero-delay loop) fails instead of hanging
PROBE_REQUEST_BASE = 1 << 48
PROBE_RETRY_MS = 50.0
# Messages whose term the sender must have made durable before sending them.
_TERM_PROMISES = (AppendEntries, InstallSnapshot, TimeoutNow, RequestVote)

SIM_SABOTAGE = frozenset({"lying_fsync", "lax_sync"})  # break the disk or driver, not the core
"""``lying_fsync``: the disk acknowledges every batch fsync without making anything
durable (docs/architecture.md, "Reliability tiers": a missing fsync): the ``recovery``
check must see it.  ``lax_sync``: the Ready driver syncs less than the contract demands
(a new term or vote is not written before the votes that promise it go out): the
``send_promise`` check must see it."""
KEEP_WHOLE_ODDS = 0.25  # a torn-write crash keeps the whole unsynced record this often
SCRIPT_FSYNC_MS_MAX = 2.0  # while a script runs: its waits assume a quick disk


def replay_line(seed: int) -> str:
    return f"FELIX_SIM_SEED={seed} pytest tests/sim"


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Node:
    """One simulated server: its core (None while crashed), WAL and state machine.

    ``files`` is the WAL's simulated disk; ``model`` what it holds durably (see
    `felix.testing.simdisk`)."""

    node_id: int
    files: SimFiles
    wal: MemoryWal
    model: SimDisk = field(default_factory=SimDisk)
    core: RaftCore | None = None
    incarnation: int = 0
    in_flight: Ready | None = None
    driver: ReadyDriver[bool] | None = None
    kv: dict[str, str] = field(default_factory=dict)
    applied: int = 0
    digest: int = 0
    snapshot_index: int = 0
    crash_armed_ms: float | None = None  # crash at the next disk write, down this long
    crash_on_write: bool = False  # script: crash once a write reaches the mark
    leader_term: int | None = None
    last_commit: int = 0
    requests: dict[int, ClientRequest] = field(default_factory=dict)
    proposals: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    pending_reads: list[ReadState] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.core is not None


@dataclass(slots=True)
class _Client:
    client_id: int
    believed_leader: int
    op: ClientOp | None = None
    next_seq: int = 0


@dataclass(frozen=True, slots=True)
class SimResult:
    seed: int
    plan: FaultPlan
    violation: InvariantViolation | None
    fired: dict[str, int]
    history_ops: int
    client_acks: int
    events: int
    sim_ms: float
    trace_hash: str
    leaders_elected: int
    script_steps: tuple[str, ...] = ()  # per script step: "ok" or "timeout"

    @property
    def ok(self) -> bool:
        return self.violation is None

    def report(self) -> str:
        """What a failing run prints: the plan, the violation, the replay command."""
        return (
            f"FAULT PLAN {self.plan.describe()}\n"
            f"VIOLATION {self.violation}\n"
            f"replay: {replay_line(self.seed)}"
        )


# --------------------------------------------------------------------------- simulation


class _LaxSyncDriver(ReadyDriver[bool]):
    """Sabotage ``lax_sync``: a new term or vote alone is not written (only entries,
    snapshots and compactions are), so votes go out before what they promise is durable."""

    def needs_write(self, ready: Ready) -> bool:
        return bool(ready.entries or ready.snapshot or ready.compact_to is not None)


class _DriverHands:
    """One simulated node as the Ready driver's core, disk, network and applier."""

    __slots__ = ("node", "sim")

    def __init__(self, sim: Simulation, node: _Node) -> None:
        self.sim, self.node = sim, node

    def step(self, inp: Input) -> None:
        assert self.node.core is not None
        self.node.core.step(inp)
        self.sim._observe(self.node)

    def start_write(self, ready: Ready) -> bool:
        return self.sim._write(self.node, ready)

    def send(self, out: Outbound) -> None:
        self.sim._send_all(self.node, (out,))

    def resolve(self, ready: Ready) -> None:
        for accepted in ready.proposed:
            self.sim._on_accepted(self.node, accepted)
        for refused in ready.refused:
            self.sim._on_refused(self.node, refused)

    def restore(self, meta: SnapshotMeta, data: bytes) -> None:
        self.sim._restore(self.node, meta, data)
        self.sim.fired["install_snapshot"] += 1

    def apply(self, entry: Entry) -> None:
        self.sim._apply(self.node, entry)

    def batch_applied(self, ready: Ready) -> None:
        self.sim._batch_applied(self.node, ready)


class Simulation:
    """One seeded run: build with a plan, call `run` once."""

    def __init__(
        self,
        plan: FaultPlan,
        *,
        sabotage: frozenset[str] = frozenset(),
        disabled: frozenset[str] = frozenset(),
        trace: list[str] | None = None,
        hash_trace: bool = False,
        voters: int | None = None,
    ) -> None:
        """``voters``: only the plan's first ``voters`` nodes vote, the others boot as
        learners (thesis §4.2.1); ``voters=1`` is how a cluster grown from one node
        starts.  None: every node votes."""
        self.plan = plan
        self.sabotage = sabotage
        self.core_class = core_for(sabotage - SIM_SABOTAGE)  # felix/testing/sabotage.py
        self.sched = Scheduler(plan.seed, trace=trace, hash_trace=hash_trace)
        self.checker = ClusterChecker(disabled)
        voter_count = plan.nodes if voters is None else voters
        assert 0 < voter_count <= plan.nodes, f"{voter_count} voters of {plan.nodes} nodes"
        self.conf = ConfState(
            voters=tuple(range(1, voter_count + 1)),
            learners=tuple(range(voter_count + 1, plan.nodes + 1)),
        )
        self.fired: Counter[str] = Counter()
        self.network = Network(plan.network, self.conf.voters, self.sched, self.fired)
        self.nodes = {i: self._new_node(i) for i in range(1, plan.nodes + 1)}
        self.clients = [
            _Client(c, self.sched.rng.choice(self.conf.voters)) for c in range(plan.clients)
        ]
        self.history: list[Operation] = []
        self.applied_values: set[str] = set()
        self.clock_rates = list(plan.clock_rates)
        self.next_request_id = 1
        self.in_liveness = False
        self.live = False
        self.probe_terms: set[int] = set()
        self.probe_retry_ms: float | None = None
        self.probe_count = 0
        self.power_loss_armed = False
        self.probe_points: list[tuple[int, int]] = []
        self.leader_terms: set[int] = set()
        self.fsync_ms_max = plan.fsync_ms_max
        self.script: Script | None = None  # while the plan's script runs
        self.script_step = 0
        self.script_deadline = 0.0
        self.script_retry_at = math.inf
        self.script_mark = 0
        self.script_steps: list[str] = []
        self.handlers: dict[type, Callable[[Any], None]] = {
            _Tick: self._on_tick,
            _Deliver: self._on_deliver,
            _FsyncDone: self._on_fsync,
            _ClientArrive: self._on_client_arrive,
            _ClientReplyArrive: self._on_client_reply,
            _ClientTimeout: self._on_client_timeout,
            _ClientIssue: self._on_client_issue,
            _ClientRetry: self._on_client_retry,
            _PartitionStart: self._on_partition_start,
            _PartitionEnd: self._on_partition_end,
            _Crash: self._on_crash,
            _CrashNow: self._on_crash_now,
            _PowerLoss: self._on_power_loss,
            _Restart: self._on_restart,
            _Churn: self._on_churn,
            _Heal: self._on_heal,
            _LivenessDeadline: self._on_liveness_deadline,
            _ScriptWake: lambda _event: None,  # the loop re-evaluates the script
        }

    def _new_node(self, node_id: int) -> _Node:
        files = SimFiles()
        wal = MemoryWal(disk=files, segment_bytes_max=self.plan.wal_segment_bytes)
        return _Node(node_id, files, wal)

    # ------------------------------------------------------------------ scheduling

    def _schedule_plan(self) -> None:
        for node in self.nodes.values():
            self._boot(node)
        if self.plan.script is not None:
            self._start_script(self.plan.script)
        else:
            self._schedule_faults()

    def _schedule_faults(self) -> None:
        """Clients and the random faults, from now on (after the script, if any)."""
        plan = self.plan
        for client in self.clients:
            self.sched.at(
                self.sched.rng.uniform(0, plan.client_think_ms_max), _ClientIssue(client.client_id)
            )
        for i, episode in enumerate(plan.partitions):
            self.sched.at(episode.start_ms, _PartitionStart(i, episode))
            self.sched.at(episode.start_ms + episode.duration_ms, _PartitionEnd(i))
        for crash in plan.crashes:
            self.sched.at(crash.start_ms, _Crash(crash))
        for i, at_ms in enumerate(plan.power_losses):
            self.sched.at(at_ms, _PowerLoss(at_commit=i % 2 == 0))
        for churn in plan.churn:
            self.sched.at(churn.at_ms, _Churn(churn))
        self.sched.at(plan.fault_phase_ms, _Heal())

    def run(self) -> SimResult:
        violation: InvariantViolation | None = None
        try:
            self._schedule_plan()
            self._loop()
            self._final_checks()
        except InvariantViolation as exc:
            violation = exc
        except Exception as exc:  # a crash inside the core is a finding too
            detail = "".join(traceback.format_exception(exc)[-6:])
            violation = InvariantViolation("exception", f"at step {self.sched.step_no}: {detail}")
        return SimResult(
            seed=self.plan.seed,
            plan=self.plan,
            violation=violation,
            fired=dict(self.fired),
            history_ops=len(self.history),
            client_acks=len(self.checker.acked),
            events=self.sched.step_no,
            sim_ms=self.sched.now,
            trace_hash=self.sched.trace_hash(),
            leaders_elected=len(self.leader_terms),
            script_steps=tuple(self.script_steps),
        )

    def _loop(self) -> None:
        while self.sched.queue and not self.live:
            event = self.sched.pop()
            if self.sched.step_no > EVENTS_MAX:
                self.checker.fail("liveness", f"more than {EVENTS_MAX} events")
            self.sched.record(event)
            self.handlers[type(event)](event)
            if self.script is not None:
                self._script_progress()
            if self.in_liveness:
                self._liveness_progress()
        if not self.live:
            self.checker.fail("liveness", "event queue ran dry")

    def _settled_history(self) -> list[Operation]:
        """Drop unknown writes whose unique value no node ever applied: they never took
        effect (as etcd's robustness suite patches its histories).  Keeps the search
        small; unknown writes that were applied stay unknown-but-possible."""
        return [
            op
            for op in self.history
            if not (op.unknown and op.kind is OpKind.WRITE and op.value not in self.applied_values)
        ]

    def _final_checks(self) -> None:
        for client in self.clients:  # still in flight when the run stopped: unknown
            op = client.op
            if op is not None and op.kind is OpKind.WRITE:
                self.history.append(
                    Operation(client.client_id, op.call, math.inf, op.kind, op.key, op.value)
                )
        self._final_power_loss()
        self.checker.check_durability()
        result = check_register_history(self._settled_history())
        if not result.ok:
            why = "check ran out of budget" if result.exhausted else "not linearizable"
            ops = [op for op in self.history if op.key == result.key]
            path = _dump_history(self.plan.seed, ops)
            self.checker.fail(
                "linearizability", f"key {result.key}: {why}; {len(ops)} ops written to {path}"
            )

    # ------------------------------------------------------------------ nodes

    def _boot(self, node: _Node) -> None:
        """Start (or restart) a node from what its WAL recovers."""
        tuning = self.plan.tuning
        config = RaftConfig(
            node_id=node.node_id,
            election_ticks=tuning.election_ticks,
            heartbeat_ticks=tuning.heartbeat_ticks,
            pre_vote=tuning.pre_vote,
            check_quorum=tuning.check_quorum,
            entries_per_msg_max=tuning.entries_per_msg_max,
            inflight_msgs_max=tuning.inflight_msgs_max,
        )
        core_rng = random.Random(self.sched.rng.getrandbits(64))
        node.incarnation += 1
        node.kv, node.applied, node.digest = {}, 0, 0
        node.leader_term, node.last_commit, node.in_flight = None, 0, None
        node.snapshot_index = 0
        boot = self._recover(node)
        node.core = self.core_class(config, core_rng, boot)
        driver = _LaxSyncDriver if "lax_sync" in self.sabotage else ReadyDriver
        hands = _DriverHands(self, node)
        node.driver = driver(hands, hands, hands, hands)
        if boot.snapshot is not None:
            self._restore(node, *boot.snapshot)
            node.snapshot_index = node.applied
        self._schedule_tick(node)
        self._after_input(node)

    def _recover(self, node: _Node) -> BootState:
        """Open the WAL (replay, repair a torn tail); it must give back the model's image."""
        try:
            boot = node.wal.open(self.conf)
        except StorageError as exc:
            raise InvariantViolation(
                "recovery", f"node {node.node_id} cannot recover its WAL: {exc}"
            ) from exc
        expected = node.model.expected_boot(self.conf)
        if boot != expected:
            self.checker.fail(
                "recovery", f"node {node.node_id}: {_boot_difference(boot, expected)}"
            )
        return boot

    def _final_power_loss(self) -> None:
        """Every node loses power once more and recovers: what each WAL holds durably must
        be exactly what the checkers took for durable all along."""
        for node in self.nodes.values():
            node.wal.crash("lose")
            node.model.crash()
            node.wal.close()
            self._recover(node)

    def _schedule_tick(self, node: _Node) -> None:
        rate = self.clock_rates[node.node_id - 1]
        if rate != 1.0:
            self.fired["clock_skew"] += 1
        self.sched.at(self.plan.tick_ms * rate, _Tick(node.node_id, node.incarnation))

    def _step(self, node: _Node, inp: Input) -> None:
        assert node.core is not None
        node.core.step(inp)
        self._after_input(node)

    def _after_input(self, node: _Node) -> None:
        self._observe(node)
        self._drain(node)

    def _observe(self, node: _Node) -> None:
        """Feed the checkers what the core's state shows right now."""
        core = node.core
        if core is None:
            return
        commit = core.commit_index
        self.checker.observe_commit(node.node_id, node.incarnation, commit)
        if core.role is Role.LEADER:
            term = core.term
            self.checker.observe_leader(node.node_id, term)
            self.checker.observe_matches(node.node_id, term, core.match_indexes())
            self.leader_terms.add(term)
            if node.leader_term != term:
                node.leader_term = term
                log = core.entries(core.first_index, core.last_index + 1)
                self.checker.observe_new_leader(node.node_id, term, core.first_index - 1, log)
            elif commit > node.last_commit:
                commit_term = _term_at(core, commit)
                self.checker.observe_leader_commit(node.node_id, term, commit, commit_term)
                if self.power_loss_armed:
                    self.power_loss_armed = False
                    self.sched.at(0.0, _PowerLoss())
        else:
            node.leader_term = None
        node.last_commit = commit

    def _drain(self, node: _Node) -> None:
        """Take Ready batches while the node's disk is free (one write at a time)."""
        while node.core is not None and node.in_flight is None and node.core.has_ready():
            ready = node.core.take_ready()
            self._observe(node)
            self._start_ready(node, ready)

    def _start_ready(self, node: _Node, ready: Ready) -> None:
        """The Ready goes through the same driver as production (felix/raft/driver.py):
        ``begin`` writes (via `_write`) and sends; `_finish_ready` once it is durable."""
        assert node.driver is not None
        if ready.entries:
            prev_term = _term_at_or_none(node.core, ready.entries[0].index - 1)
            self.checker.observe_entries(node.node_id, ready.entries, prev_term)
        if not ready.must_sync and ready.hard_state is not None:
            self.fired["commit_unsynced"] += 1  # the production rule: no write for these
        if not node.driver.begin(ready):
            self._finish_ready(node, ready)  # nothing to write, or nothing to wait for

    def _write(self, node: _Node, ready: Ready) -> bool:
        """The disk half of ``begin``: True if the write waits for a simulated fsync."""
        node.model.submit(
            DiskWrite(ready.snapshot, ready.entries, ready.hard_state, ready.compact_to)
        )
        if ready.snapshot is None and not ready.entries and ready.hard_state is None:
            node.model.complete_oldest()  # compaction only: no fsync to wait for
            self._compact(node, ready.compact_to)
            return False
        segments = node.wal.segment_count
        node.wal.write(ready.hard_state, ready.entries, ready.snapshot)  # no fsync yet
        if node.wal.segment_count > segments:
            self.fired["wal_rotate"] += 1
        node.in_flight = ready
        fsync_ms = self.sched.rng.uniform(self.plan.fsync_ms_min, self.fsync_ms_max)
        self.sched.at(fsync_ms, _FsyncDone(node.node_id, node.incarnation))
        if node.crash_armed_ms is not None:  # crash while this write is unsynced
            crash = _CrashNow(node.node_id, node.incarnation, node.crash_armed_ms)
            node.crash_armed_ms = None
            self.sched.at(self.sched.rng.uniform(0, fsync_ms * 0.99), crash)
        if node.crash_on_write and ready.entries and ready.entries[-1].index >= self.script_mark:
            node.crash_on_write = False  # script: right after this batch's send_now
            self.sched.at(0.0, _CrashNow(node.node_id, node.incarnation, None, lose_unsynced=True))
        return True

    def _on_fsync(self, event: _FsyncDone) -> None:
        node = self.nodes[event.node]
        if node.incarnation != event.incarnation or node.in_flight is None:
            return
        if "lying_fsync" not in self.sabotage:
            node.wal.sync()
        node.model.complete_oldest()
        ready, node.in_flight = node.in_flight, None
        self._compact(node, ready.compact_to)
        self._finish_ready(node, ready)
        self._drain(node)

    def _compact(self, node: _Node, index: int | None) -> None:
        """``compact_to``, once the batch is durable: drop WAL segments behind it."""
        if index is not None and node.wal.compact(index):
            self.fired["wal_compact"] += 1

    def _finish_ready(self, node: _Node, ready: Ready) -> None:
        """Steps 3–6 (the driver's ``finish``): Persisted, send_after_persist, apply."""
        assert node.driver is not None
        node.driver.finish(ready)

    def _batch_applied(self, node: _Node, ready: Ready) -> None:
        node.pending_reads.extend(ready.read_states)
        self._answer_reads(node)
        self._maybe_snapshot(node)

    # ------------------------------------------------------------------ state machine

    def _apply(self, node: _Node, entry: Entry) -> None:
        before = node.applied
        node.digest = chain_digest(node.digest, entry)
        node.applied = entry.index
        if entry.kind is EntryKind.NORMAL:
            command = decode_command(entry.data)
            if command is not None:
                node.kv[command[0]] = command[1]
                self.applied_values.add(command[1])
        self.checker.observe_apply(node.node_id, before, entry, node.digest)
        for request_id, term in node.proposals.pop(entry.index, ()):
            outcome = ReplyOutcome.OK if term == entry.term else ReplyOutcome.FAILED
            self._reply(node, request_id, outcome, index=entry.index, term=term)

    def _restore(self, node: _Node, meta: SnapshotMeta, data: bytes) -> None:
        applied, digest, kv = decode_state(data)
        if applied != meta.index:
            self.checker.fail("state_machine_safety", f"snapshot {meta} holds state {applied}")
        node.applied, node.digest, node.kv = applied, digest, kv
        self.checker.observe_restore(node.node_id, meta.index, meta.term, digest)
        for index in [i for i in node.proposals if i <= applied]:
            del node.proposals[index]  # unresolvable now: those clients time out
        self._answer_reads(node)

    def _maybe_snapshot(self, node: _Node) -> None:
        """Every K applied entries, snapshot the state machine, save it durably in the
        WAL's snapshot store, and only then tell the core (which may then compact)."""
        every = self.plan.snapshot_every
        core = node.core
        if not every or core is None or node.applied - node.snapshot_index < every:
            return
        index = node.snapshot_index = node.applied
        held = core.snapshot_meta
        if held is not None and held.index >= index:
            return  # the core holds a newer snapshot (a leader's, not yet handed over)
        data = encode_state(index, node.digest, node.kv)
        meta = snapshot_meta(index, _term_at(core, index), core.confs.at(index), data)
        node.wal.snapshots.save(meta, data)
        node.model.save_snapshot(meta, data)
        core.step(SnapshotTaken(index, data))
        assert core.snapshot_meta == meta, f"core took {core.snapshot_meta}, saved {meta}"
        self.fired["snapshot"] += 1
        self._observe(node)

    def _answer_reads(self, node: _Node) -> None:
        waiting = []
        for read in node.pending_reads:
            if read.index > node.applied:
                waiting.append(read)
                continue
            request = node.requests.get(read.request_id)
            value = node.kv.get(request.key) if request else None
            self._reply(node, read.request_id, ReplyOutcome.OK, value=value)
        node.pending_reads = waiting

    def _on_accepted(self, node: _Node, accepted: ProposalAccepted) -> None:
        if accepted.request_id >= PROBE_REQUEST_BASE:
            self.probe_points.append((accepted.index, accepted.term))
        elif accepted.index > node.applied:
            node.proposals.setdefault(accepted.index, []).append(
                (accepted.request_id, accepted.term)
            )

    def _on_refused(self, node: _Node, refused: ProposalRefused | ReadRefused) -> None:
        if refused.request_id >= PROBE_REQUEST_BASE:
            self.probe_retry_ms = self.sched.now + PROBE_RETRY_MS  # e.g. a transfer in progress
        self._reply(node, refused.request_id, ReplyOutcome.REFUSED, hint=refused.leader_hint)

    # ------------------------------------------------------------------ network

    def _send_all(self, node: _Node, outbound: Sequence[Outbound]) -> None:
        for item in outbound:
            self._check_promise(node, item)
            self.network.transmit(node.node_id, item.to, item.message)

    def _check_promise(self, node: _Node, item: Outbound) -> None:
        """Votes and acks promise durable state (§5.1 figure 2): check the disk."""
        msg, disk = item.message, node.model
        if isinstance(msg, VoteResponse) and msg.granted and not msg.pre_vote:
            hs = disk.hard_state
            durable = hs.term > msg.term or (hs.term == msg.term and hs.vote == item.to)
            self.checker.observe_send_promise(
                node.node_id, f"a vote for {item.to} in term {msg.term}", durable,
                lambda: f"its durable hard state {hs} records it",
            )  # fmt: skip
            self.checker.observe_vote_sent(node.node_id, msg.term, item.to)
        elif isinstance(msg, AppendResponse) and msg.success:
            durable = disk.last_index >= msg.match_index
            self.checker.observe_send_promise(
                node.node_id, f"an ack of index {msg.match_index}", durable,
                lambda: f"its durable log (last index {disk.last_index}) holds it",
            )  # fmt: skip
        elif isinstance(msg, SnapshotResponse) and msg.installed:
            durable = disk.last_index >= msg.snapshot_index
            self.checker.observe_send_promise(
                node.node_id, f"an install ack of snapshot {msg.snapshot_index}", durable,
                lambda: f"its durable snapshot and log (to {disk.last_index}) cover it",
            )  # fmt: skip
        elif isinstance(msg, _TERM_PROMISES) and not getattr(msg, "pre_vote", False):
            # A leader's messages and a candidate's requests act on a term (and vote)
            # that a crash must not forget: that term is durable before they leave.
            hs = disk.hard_state
            self.checker.observe_send_promise(
                node.node_id, f"{type(msg).__name__} of term {msg.term}", hs.term >= msg.term,
                lambda: f"its durable hard state {hs} reaches that term",
            )  # fmt: skip

    def _on_deliver(self, event: _Deliver) -> None:
        node = self.nodes[event.dst]
        if node.core is None or not self.network.admit(event):
            return
        self._step(node, Receive(event.src, event.message))

    def _on_tick(self, event: _Tick) -> None:
        node = self.nodes[event.node]
        if node.core is None or node.incarnation != event.incarnation:
            return
        self._schedule_tick(node)
        self._step(node, Tick())

    # ------------------------------------------------------------------ clients

    def _on_client_issue(self, event: _ClientIssue) -> None:
        client = self.clients[event.client]
        if self.in_liveness or self.script is not None or client.op is not None:
            return  # (a paused client is restarted when the script ends)
        client.next_seq += 1
        key = f"k{self.sched.rng.randrange(self.plan.keys)}"
        if self.sched.rng.random() < 0.5:
            self._issue(client, OpKind.WRITE, key, client.believed_leader)
        else:
            self._issue(client, OpKind.READ, key, client.believed_leader)

    def _issue(self, client: _Client, kind: OpKind, key: str, target: int) -> None:
        value = f"c{client.client_id}.{client.next_seq}" if kind is OpKind.WRITE else None
        client.op = ClientOp(client.next_seq, kind, key, value, self.sched.step_no)
        client.op.target = target
        self._send_request(client, client.op)
        self.sched.at(self.plan.client_timeout_ms, _ClientTimeout(client.client_id, client.op.seq))

    def _send_request(self, client: _Client, op: ClientOp) -> None:
        op.attempt += 1
        request = ClientRequest(client.client_id, op.seq, op.attempt, op.kind, op.key, op.value)
        self.sched.at(self.sched.rng.uniform(*CLIENT_LINK_MS), _ClientArrive(op.target, request))

    def _on_client_arrive(self, event: _ClientArrive) -> None:
        node = self.nodes[event.node]
        if node.core is None:
            return  # lost with the crashed node: the client will time out
        request_id = self.next_request_id
        self.next_request_id += 1
        request = event.request
        node.requests[request_id] = request
        if request.kind is OpKind.WRITE:
            assert request.value is not None
            self._step(node, Propose(request_id, encode_command(request.key, request.value)))
        else:
            self._step(node, ReadIndex(request_id))

    def _reply(
        self,
        node: _Node,
        request_id: int,
        outcome: ReplyOutcome,
        *,
        value: str | None = None,
        hint: int | None = None,
        index: int = 0,
        term: int = 0,
    ) -> None:
        request = node.requests.pop(request_id, None)
        if request is None:
            return
        reply = ClientReply(
            request.client, request.op_seq, request.attempt, outcome, value, hint, index, term
        )
        self.sched.at(self.sched.rng.uniform(*CLIENT_LINK_MS), _ClientReplyArrive(reply))

    def _on_client_reply(self, event: _ClientReplyArrive) -> None:
        reply = event.reply
        client = self.clients[reply.client]
        op = client.op
        if op is None or op.seq != reply.op_seq or op.attempt != reply.attempt:
            return  # an answer to an attempt the client gave up on
        if reply.outcome is ReplyOutcome.REFUSED:
            client.believed_leader = reply.leader_hint or self.sched.rng.choice(self.conf.voters)
            op.target = client.believed_leader
            self.sched.at(self.sched.rng.uniform(1.0, 10.0), _ClientRetry(client.client_id, op.seq))
            return
        if reply.outcome is ReplyOutcome.OK:
            client.believed_leader = op.target
            self.history.append(
                Operation(client.client_id, op.call, self.sched.step_no, op.kind, op.key,
                          op.value if op.kind is OpKind.WRITE else reply.value)
            )  # fmt: skip
            if op.kind is OpKind.WRITE:
                self.checker.observe_client_ack(reply.index, reply.term)
        self._finish_op(client)

    def _on_client_retry(self, event: _ClientRetry) -> None:
        client = self.clients[event.client]
        if client.op is not None and client.op.seq == event.op_seq:
            self._send_request(client, client.op)

    def _on_client_timeout(self, event: _ClientTimeout) -> None:
        client = self.clients[event.client]
        op = client.op
        if op is None or op.seq != event.op_seq:
            return
        if op.kind is OpKind.WRITE:
            self.history.append(
                Operation(client.client_id, op.call, math.inf, op.kind, op.key, op.value)
            )
        client.believed_leader = self.sched.rng.choice(self.conf.voters)
        self._finish_op(client)

    def _finish_op(self, client: _Client) -> None:
        client.op = None
        self.sched.at(
            self.sched.rng.uniform(0, self.plan.client_think_ms_max), _ClientIssue(client.client_id)
        )

    # ------------------------------------------------------------------ faults

    def _current_leader(self) -> _Node | None:
        leaders = [
            n for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER
        ]
        return max(leaders, key=lambda n: n.core.term if n.core else 0, default=None)

    def _on_partition_start(self, event: _PartitionStart) -> None:
        if self.in_liveness:
            return
        leader = self._current_leader()
        leader_id = leader.node_id if leader is not None else None
        self.network.start_partition(event.episode_id, event.episode, leader_id)

    def _on_partition_end(self, event: _PartitionEnd) -> None:
        self.network.end_partition(event.episode_id)

    def _on_crash(self, event: _Crash) -> None:
        if self.in_liveness:
            return
        victim = self._crash_victim(event.episode.node)
        if victim is None:
            return
        if event.episode.at_storage_op:
            victim.crash_armed_ms = event.episode.downtime_ms
        else:
            self._crash(victim, event.episode.downtime_ms)

    def _on_crash_now(self, event: _CrashNow) -> None:
        node = self.nodes[event.node]
        if node.core is not None and node.incarnation == event.incarnation:
            self._crash(node, event.downtime_ms, lose_unsynced=event.lose_unsynced)

    def _on_power_loss(self, event: _PowerLoss) -> None:
        """Every running node loses power at once; each comes back on its own.  Armed
        "at commit", it strikes right after a leader advances its commit index, when
        followers' acks may still be unsynced (the window a persist-order bug opens)."""
        if self.in_liveness:
            return
        if event.at_commit:
            self.power_loss_armed = True
            return
        self.fired["power_loss"] += 1
        for node in self.nodes.values():
            if node.core is not None:
                self._crash(node, self.sched.rng.uniform(10.0, 300.0))

    def _crash(
        self, victim: _Node, downtime_ms: float | None, *, lose_unsynced: bool = False
    ) -> None:
        """Power loss: memory goes, and the unsynced batch record (if any) is lost, or a
        prefix of it is kept (a torn tail recovery must cut), or -- the fsync had not
        returned but the bytes made it -- all of it."""
        unsynced = victim.files.unsynced_bytes
        if "lying_fsync" not in self.sabotage:
            assert (unsynced > 0) == (victim.in_flight is not None), (unsynced, victim.in_flight)
            assert victim.files.unsynced_files() <= 1, "unsynced bytes in more than one file"
        kept = 0
        rate = self.plan.torn_write_rate
        if unsynced and rate and not lose_unsynced and self.sched.rng.random() < rate:
            whole = self.sched.rng.random() < KEEP_WHOLE_ODDS
            kept = unsynced if whole else self.sched.rng.randrange(unsynced)
            victim.wal.crash("torn", torn_bytes=kept)
        else:
            victim.wal.crash("lose")
        victim.model.crash(writes_kept=1 if unsynced and kept == unsynced else 0)
        self.fired["crash"] += 1
        if unsynced and kept == unsynced:
            self.fired["unsynced_kept"] += 1
        elif unsynced:
            self.fired["unsynced_loss"] += 1
        if 0 < kept < unsynced:
            self.fired["torn_write"] += 1
        victim.core = None
        victim.in_flight = None
        victim.requests.clear()
        victim.proposals.clear()
        victim.pending_reads.clear()
        if downtime_ms is not None:
            self.sched.at(downtime_ms, _Restart(victim.node_id))

    def _crash_victim(self, node_id: int | None) -> _Node | None:
        if node_id is None:
            return self._current_leader()
        node = self.nodes[node_id]
        return node if node.alive else None

    def _on_restart(self, event: _Restart) -> None:
        node = self.nodes[event.node]
        if node.core is None:
            self._boot(node)

    def _on_churn(self, event: _Churn) -> None:
        if self.in_liveness:
            return
        if event.event.kind is ChurnKind.TRANSFER_LEADER:
            leader = self._current_leader()
            if leader is None:
                return
            targets = [n for n in self.conf.voters if n != leader.node_id]
            if not targets:
                return  # a single voter has no one to hand leadership to
            target = self.sched.rng.choice(targets)
            self.fired["leader_transfer"] += 1
            self._step(leader, TransferLeader(target))
        else:
            alive = [n for n in self.nodes.values() if n.alive]
            if alive:
                self.fired["campaign"] += 1
                self._step(self.sched.rng.choice(alive), Campaign())

    # ------------------------------------------------------------------ scripts

    def _start_script(self, script: Script) -> None:
        """Run ``script`` on a healthy network, on-time clocks and a quick disk; clients
        wait (one writes when the script says); the random faults start afterwards."""
        self.script = script
        self.network.faults = HEALTHY_NETWORK
        self.clock_rates = [1.0] * self.plan.nodes
        self.fsync_ms_max = min(self.plan.fsync_ms_max, SCRIPT_FSYNC_MS_MAX)
        self.script_step = -1
        self._next_script_step()

    def _next_script_step(self) -> None:
        """Start steps until one has to wait (or the script is over)."""
        script = self.script
        assert script is not None
        while True:
            self.script_step += 1
            if self.script_step == len(script.steps):
                self._end_script(script)
                return
            step = script.steps[self.script_step]
            self.sched.note(f"script {script.name} step {self.script_step}: {step}")
            self._script_do(step.do)
            if step.until is None or self._script_holds(step.until):
                self.script_steps.append("ok")
                continue
            self.script_deadline = self.sched.now + step.timeout_ms
            self.sched.at(step.timeout_ms, _ScriptWake(self.script_step))
            self.script_retry_at = math.inf
            if step.retry_ms is not None:
                self.script_retry_at = self.sched.now + step.retry_ms
                self.sched.at(step.retry_ms, _ScriptWake(self.script_step))
            return

    def _script_progress(self) -> None:
        """After every event: has the waiting step's condition come true (or timed out)?"""
        script = self.script
        assert script is not None
        step = script.steps[self.script_step]
        assert step.until is not None
        if self._script_holds(step.until):
            self.script_steps.append("ok")
        elif self.sched.now >= self.script_deadline:
            self.script_steps.append("timeout")
            self.sched.note(f"script {script.name} step {self.script_step}: timed out")
        else:
            if step.retry_ms is not None and self.sched.now >= self.script_retry_at:
                self._script_do(step.do)
                self.script_retry_at = self.sched.now + step.retry_ms
                self.sched.at(step.retry_ms, _ScriptWake(self.script_step))
            return
        self._next_script_step()

    def _end_script(self, script: Script) -> None:
        self.script = None
        self.fired[script.name] += 1
        self.network.reset(self.plan.network)
        self.clock_rates = list(self.plan.clock_rates)
        self.fsync_ms_max = self.plan.fsync_ms_max
        for node in self.nodes.values():
            node.crash_on_write = False
            if node.core is None:
                self.sched.at(self.sched.rng.uniform(10.0, 100.0), _Restart(node.node_id))
        self._schedule_faults()

    def _script_do(self, actions: Sequence[ScriptAction]) -> None:
        for action in actions:
            if isinstance(action, Links):
                self.network.set_links(action)
            elif isinstance(action, CrashNodes):
                for node_id in action.nodes:
                    if self.nodes[node_id].core is not None:
                        self._crash(self.nodes[node_id], None, lose_unsynced=True)
            elif isinstance(action, CrashOnWrite):
                for node_id in action.nodes:
                    self.nodes[node_id].crash_on_write = True
            elif isinstance(action, RestartNodes):
                for node_id in action.nodes:
                    node = self.nodes[node_id]
                    node.crash_on_write = False
                    if node.core is None:
                        self._boot(node)
            elif isinstance(action, StartCampaign):
                node = self.nodes[action.node]
                if node.core is not None:
                    self._step(node, Campaign())
            else:
                self._script_write(action)

    def _script_write(self, action: Write) -> None:
        core = self.nodes[action.node].core
        client = self.clients[0]
        if core is None or client.op is not None:
            return
        self.script_mark = core.last_index + 1
        client.next_seq += 1
        self._issue(client, OpKind.WRITE, "k0", action.node)

    def _script_holds(self, cond: ScriptCondition) -> bool:
        mark = self.script_mark
        if isinstance(cond, IsLeader):
            return any(self._role(n) is Role.LEADER for n in cond.nodes)
        if isinstance(cond, CaughtUp):
            leader = self._current_leader()
            if leader is None or leader.core is None:
                return False
            last = leader.core.last_index
            return all(n.applied >= last for n in self.nodes.values() if n.core is not None)
        if isinstance(cond, Holds):
            return all(self._holds_mark(self.nodes[n], cond.durable) for n in cond.nodes)
        node = self.nodes[cond.node]
        if node.core is None:
            return False
        if isinstance(cond, Committed):
            return node.core.commit_index >= mark
        assert isinstance(cond, Applied)
        return node.applied >= mark

    def _holds_mark(self, node: _Node, durable: bool) -> bool:
        if durable:
            return node.model.last_index >= self.script_mark
        return node.core is not None and node.core.last_index >= self.script_mark

    def _role(self, node_id: int) -> Role | None:
        core = self.nodes[node_id].core
        return core.role if core is not None else None

    # ------------------------------------------------------------------ liveness

    def _on_heal(self, _event: _Heal) -> None:
        """End of the fault phase: heal the network, clocks and crashed nodes."""
        self.in_liveness = True
        self.network.heal()
        self.clock_rates = [1.0] * self.plan.nodes
        self.power_loss_armed = False
        for node in self.nodes.values():
            node.crash_armed_ms = None
            if node.core is None:
                self._boot(node)
        self.sched.at(self.plan.liveness_ms, _LivenessDeadline())

    def _liveness_progress(self) -> None:
        """Propose a probe to each new leader; done once one probe is applied everywhere."""
        leader = self._current_leader()
        if self.probe_retry_ms is not None and self.sched.now >= self.probe_retry_ms:
            self.probe_retry_ms = None
            self.probe_terms.clear()
        if leader is not None and leader.core is not None:
            term = leader.core.term
            if term not in self.probe_terms:
                self.probe_terms.add(term)
                self.probe_count += 1
                request_id = PROBE_REQUEST_BASE + self.probe_count
                self._step(leader, Propose(request_id, f"probe|{term}".encode()))
        applied_everywhere = min(n.applied for n in self.nodes.values())
        for index, term in self.probe_points:
            record = self.checker.applied.get(index)
            if record and record.term == term and applied_everywhere >= index:
                self.live = True

    def _on_liveness_deadline(self, _event: _LivenessDeadline) -> None:
        if not self.live:
            states = ", ".join(
                f"{n.node_id}:{n.core.role.value}/t{n.core.term}/c{n.core.commit_index}"
                f"/a{n.applied}"
                for n in self.nodes.values()
                if n.core is not None
            )
            self.checker.fail(
                "liveness",
                f"no probe applied on every node {self.plan.liveness_ms:.0f}ms after healing "
                f"[{states}]",
            )


def _dump_history(seed: int, ops: Sequence[Operation]) -> str:
    """Write a failing key's history where a human can read it, one op per line."""
    path = Path(tempfile.gettempdir()) / f"felix_sim_history_{seed}.txt"
    lines = [
        f"client={op.client} call={op.call} ret={op.ret} {op.kind.value} {op.value}" for op in ops
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _boot_difference(boot: BootState, expected: BootState) -> str:
    """How a recovered `BootState` differs from the model's durable image."""
    problems = []
    if boot.hard_state != expected.hard_state:
        problems.append(f"hard state {boot.hard_state}, durable {expected.hard_state}")
    if boot.conf != expected.conf:
        problems.append(f"membership {boot.conf}, durable {expected.conf}")
    got = boot.snapshot[0] if boot.snapshot else None
    want = expected.snapshot[0] if expected.snapshot else None
    if got != want or (boot.snapshot and expected.snapshot and boot.snapshot != expected.snapshot):
        problems.append(f"snapshot {got}, durable {want}")
    if boot.entries != expected.entries:
        ours = [(e.index, e.term) for e in boot.entries]
        theirs = [(e.index, e.term) for e in expected.entries]
        pairs = zip(boot.entries, expected.entries, strict=False)
        diverge = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(ours), len(theirs)))
        problems.append(
            f"log of {len(ours)} entries {ours[diverge : diverge + 3]}... from position "
            f"{diverge}, durable {len(theirs)} entries {theirs[diverge : diverge + 3]}..."
        )
    return "recovered " + "; ".join(problems)


def _term_at_or_none(core: RaftCore | None, index: int) -> int | None:
    if core is None:
        return None
    if index == 0:
        return 0
    meta = core.snapshot_meta
    if meta is not None and meta.index == index:
        return meta.term
    if core.first_index <= index <= core.last_index:
        return core.entries(index, index + 1)[0].term
    return None


def _term_at(core: RaftCore, index: int) -> int:
    term = _term_at_or_none(core, index)
    if term is None:
        raise InvariantViolation("log_matching", f"node {core.node_id} lacks index {index}")
    return term


# --------------------------------------------------------------------------- entry points


def run_seed(
    seed: int,
    *,
    sabotage: Iterable[str] = (),
    disabled: Iterable[str] = (),
    trace: list[str] | None = None,
    hash_trace: bool = False,
    fault_phase_ms: float = 3000.0,
    script: str | None = None,
    voters: int | None = None,
) -> SimResult:
    """Run one seed: its plan, the simulation, the checkers.  ``script`` makes the seed
    open with that scripted schedule (`felix.testing.faults.SCRIPTS`) whatever it drew.
    ``voters`` makes only that many of the plan's nodes voters, the rest learners (the
    scripts, written for all-voter clusters, are dropped then)."""
    if script is not None:
        plan = script_plan(seed, script, fault_phase_ms)
    else:
        plan = generate_plan(seed, fault_phase_ms)
    if voters is not None:
        plan = replace(plan, script=None)
    sim = Simulation(
        plan,
        sabotage=frozenset(sabotage),
        disabled=frozenset(disabled),
        trace=trace,
        hash_trace=hash_trace,
        voters=voters,
    )
    return sim.run()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m felix.testing.sim", description="Felix tier-A simulation soak."
    )
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="run only this seed (replay)")
    parser.add_argument("--verbose", action="store_true", help="print every event")
    parser.add_argument(
        "--sabotage", action="append", default=[], help="break the core (or lying_fsync)"
    )
    parser.add_argument("--disable", action="append", default=[], help="turn a checker off")
    parser.add_argument("--script", choices=SCRIPTS, help="open every seed with this script")
    parser.add_argument("--phase-ms", type=float, default=3000.0, help="fault phase length")
    parser.add_argument("--stop-on-failure", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    fired: Counter[str] = Counter()
    failures: list[SimResult] = []
    events = 0
    for seed in seeds:
        trace: list[str] | None = [] if args.verbose else None
        result = run_seed(
            seed,
            sabotage=args.sabotage,
            disabled=args.disable,
            trace=trace,
            fault_phase_ms=args.phase_ms,
            script=args.script,
        )
        for line in trace or ():
            print(line)
        events += result.events
        fired.update(kind for kind, count in result.fired.items() if count)
        if not result.ok:
            failures.append(result)
            print(result.report(), flush=True)
            if args.stop_on_failure:
                break
    _print_summary(len(seeds), events, fired, failures)
    return 1 if failures else 0


def _print_summary(
    seed_count: int, events: int, fired: Counter[str], failures: list[SimResult]
) -> None:
    print(f"seeds={seed_count} events={events} failures={len(failures)}")
    for kind, count in sorted(fired.items()):
        print(f"  {kind:<18} fired in {count} seeds")
    for result in failures:
        print(f"  FAILED seed {result.seed}: {result.violation}".splitlines()[0])
        print(f"    {replay_line(result.seed)}")


if __name__ == "__main__":
    sys.exit(main())
