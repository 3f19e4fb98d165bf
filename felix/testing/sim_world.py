"""The simulated servers: cores, WALs on simulated disks, state machines, crashes.

Why a module: this is the part of the simulation that must be the production node, not
a model of it.  A node is driven exactly as `felix.raft.ready` says, through the
production `felix.raft.driver.ReadyDriver` (`_DriverHands` is its disk, network and
applier): ``send_now`` goes out at once, the batch is written to the node's real WAL
(`felix.storage.memory_wal.MemoryWal` on simulated files) without fsync and becomes
durable only when the simulated fsync completes; then the driver's ``finish`` steps
``Persisted``, sends ``send_after_persist``, applies and answers reads.  A crash is a
power loss of the simulated disk and a restart the production recovery; sends and
recoveries are checked against the model of what is durable
(`felix.testing.sim_durability`).

`World` also serves clients (requests arrive and replies leave as events; the client
side is `felix.testing.sim_clients`) and feeds `ClusterChecker` everything it watches.
It sends through `felix.testing.sim_network.Network` and knows nothing of the run's
phases: those (`felix.testing.sim_phases`) call it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from felix.proto.raft_messages import (
    ConfChange,
    ConfState,
    EntryKind,
    RequestVote,
    SnapshotMeta,
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
    Entry,
    Input,
    Propose,
    ProposeConfChange,
    RaftConfig,
    ReadIndex,
    Receive,
    Role,
    SnapshotTaken,
    Tick,
)
from felix.storage.memory_wal import MemoryWal
from felix.storage.snapshots import snapshot_meta
from felix.testing.checkers import ClusterChecker, InvariantViolation, chain_digest
from felix.testing.clients import (
    ClientReply,
    ClientRequest,
    ReplyOutcome,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
)
from felix.testing.conf_checks import MembershipChecker
from felix.testing.faults import FaultPlan
from felix.testing.linearizability import OpKind
from felix.testing.sabotage import core_for
from felix.testing.sim_durability import check_send_promise, recover
from felix.testing.sim_events import (
    CLIENT_LINK_MS,
    Scheduler,
    _ClientArrive,
    _ClientReplyArrive,
    _CrashNow,
    _Deliver,
    _FsyncDone,
    _PowerLoss,
    _Restart,
    _Tick,
)
from felix.testing.sim_network import Network
from felix.testing.simdisk import DiskWrite, SimDisk, SimFiles

__all__ = ["PROBE_REQUEST_BASE", "SIM_SABOTAGE", "ProbeLog", "World"]

PROBE_REQUEST_BASE = 1 << 48  # request ids from here on are liveness probes, not clients
PROBE_RETRY_MS = 50.0
SIM_SABOTAGE = frozenset({"lying_fsync", "lax_sync"})  # break the disk or driver, not the core
"""``lying_fsync``: the disk acknowledges every batch fsync without making anything
durable (docs/architecture.md, "Reliability tiers": a missing fsync): the ``recovery``
check must see it.  ``lax_sync``: the Ready driver syncs less than the contract demands
(a new term or vote is not written before the votes that promise it go out): the
``send_promise`` check must see it."""
KEEP_WHOLE_ODDS = 0.25  # a torn-write crash keeps the whole unsynced record this often


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
    crash_on_write: bool = False  # script: crash once a write reaches `World.crash_mark`
    leader_term: int | None = None
    last_commit: int = 0
    requests: dict[int, ClientRequest] = field(default_factory=dict)
    proposals: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    pending_reads: list[ReadState] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.core is not None


@dataclass(slots=True)
class ProbeLog:
    """What became of the liveness probes proposed (`felix.testing.sim_phases.Liveness`)."""

    accepted: list[tuple[int, int]] = field(default_factory=list)  # (index, term)
    retry_at_ms: float | None = None  # a probe was refused: propose again from then on


class _LaxSyncDriver(ReadyDriver[bool]):
    """Sabotage ``lax_sync``: a new term or vote alone is not written (only entries,
    snapshots and compactions are), so votes go out before what they promise is durable."""

    def needs_write(self, ready: Ready) -> bool:
        return bool(ready.entries or ready.snapshot or ready.compact_to is not None)


class _DriverHands:
    """One simulated node as the Ready driver's core, disk, network and applier."""

    __slots__ = ("node", "world")

    def __init__(self, world: World, node: _Node) -> None:
        self.world, self.node = world, node

    def step(self, inp: Input) -> None:
        assert self.node.core is not None
        self.node.core.step(inp)
        self.world._observe(self.node)

    def start_write(self, ready: Ready) -> bool:
        return self.world._write(self.node, ready)

    def send(self, out: Outbound) -> None:
        self.world._send_all(self.node, (out,))

    def resolve(self, ready: Ready) -> None:
        for accepted in ready.proposed:
            self.world._on_accepted(self.node, accepted)
        for refused in ready.refused:
            self.world._on_refused(self.node, refused)

    def restore(self, meta: SnapshotMeta, data: bytes) -> None:
        self.world._restore(self.node, meta, data)
        self.world.fired["install_snapshot"] += 1

    def apply(self, entry: Entry) -> None:
        self.world._apply(self.node, entry)

    def batch_applied(self, ready: Ready) -> None:
        self.world._batch_applied(self.node, ready)


class World:
    """The nodes of one run and everything that happens to them."""

    def __init__(
        self,
        plan: FaultPlan,
        conf: ConfState,
        sched: Scheduler,
        network: Network,
        checker: ClusterChecker,
        fired: Counter[str],
        *,
        sabotage: frozenset[str],
    ) -> None:
        self.plan, self.conf, self.sched, self.network = plan, conf, sched, network
        self.checker, self.fired, self.sabotage = checker, fired, sabotage
        self.core_class = core_for(sabotage - SIM_SABOTAGE)  # felix/testing/sabotage.py
        self.nodes = {i: self._new_node(i) for i in range(1, plan.nodes + 1)}
        self.clock_rates = list(plan.clock_rates)  # tick interval multiplier per node
        self.fsync_ms_max = plan.fsync_ms_max
        self.power_loss_armed = False  # strike at the next leader commit advance
        self.crash_mark = 0  # a node armed `crash_on_write` crashes writing this index
        self.leader_terms: set[int] = set()
        self.applied_values: set[str] = set()
        self.next_request_id = 1
        self.probes = ProbeLog()
        # Membership changes (felix.testing.sim_membership) set these; without them every
        # node boots with ``conf`` and none ever leaves.
        self.members: MembershipChecker | None = None
        self.boot_confs: dict[int, ConfState] = {}
        self.unstarted: set[int] = set()  # nodes not in the initial configuration, not up yet
        self.retired: set[int] = set()  # removed nodes whose process is gone for good
        self.joined_from: dict[int, str] = {}  # joiner -> "log" or "snapshot"

    def _new_node(self, node_id: int) -> _Node:
        files = SimFiles()
        wal = MemoryWal(disk=files, segment_bytes_max=self.plan.wal_segment_bytes)
        return _Node(node_id, files, wal)

    def current_leader(self) -> _Node | None:
        leaders = [
            n for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER
        ]
        return max(leaders, key=lambda n: n.core.term if n.core else 0, default=None)

    # ------------------------------------------------------------------ boot and recovery

    def boot(self, node: _Node) -> None:
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
        conf = self.boot_confs.get(node.node_id, self.conf)
        boot = recover(self.checker, node.node_id, node.wal, node.model, conf)
        self.unstarted.discard(node.node_id)
        if self.members is not None:
            meta = boot.snapshot[0] if boot.snapshot is not None else None
            self.members.on_boot(node.node_id, boot.conf, meta, boot.entries)
        node.core = self.core_class(config, core_rng, boot)
        driver = _LaxSyncDriver if "lax_sync" in self.sabotage else ReadyDriver
        hands = _DriverHands(self, node)
        node.driver = driver(hands, hands, hands, hands)
        if boot.snapshot is not None:
            self._restore(node, *boot.snapshot)
            node.snapshot_index = node.applied
        self._schedule_tick(node)
        self._after_input(node)

    def final_power_loss(self) -> None:
        """Every node loses power once more and recovers: what each WAL holds durably must
        be exactly what the checkers took for durable all along."""
        for node in self.nodes.values():
            if node.incarnation == 0:
                continue  # never started (a spare no membership change used)
            node.wal.crash("lose")
            node.model.crash()
            node.wal.close()
            conf = self.boot_confs.get(node.node_id, self.conf)
            recover(self.checker, node.node_id, node.wal, node.model, conf)

    # ------------------------------------------------------------------ stepping

    def _schedule_tick(self, node: _Node) -> None:
        rate = self.clock_rates[node.node_id - 1]
        if rate != 1.0:
            self.fired["clock_skew"] += 1
        self.sched.at(self.plan.tick_ms * rate, _Tick(node.node_id, node.incarnation))

    def on_tick(self, event: _Tick) -> None:
        node = self.nodes[event.node]
        if node.core is None or node.incarnation != event.incarnation:
            return
        self._schedule_tick(node)
        self.step(node, Tick())

    def step(self, node: _Node, inp: Input) -> None:
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
            members = self.members
            if node.leader_term != term:
                node.leader_term = term
                log = core.entries(core.first_index, core.last_index + 1)
                self.checker.observe_new_leader(node.node_id, term, core.first_index - 1, log)
                if members is not None:
                    members.on_new_leader(node.node_id, term, core.last_index, commit)
            elif commit > node.last_commit:
                commit_term = _term_at(core, commit)
                self.checker.observe_leader_commit(node.node_id, term, commit, commit_term)
                if members is not None:
                    holders = {p for p, m in core.match_indexes().items() if m >= commit}
                    if node.model.last_index >= commit:
                        holders.add(node.node_id)
                    members.on_leader_commit(node.node_id, term, commit, core.last_index, holders)
                if self.power_loss_armed:
                    self.power_loss_armed = False
                    self.sched.at(0.0, _PowerLoss())
        else:
            node.leader_term = None
        node.last_commit = commit

    # ------------------------------------------------------------------ Ready and disk

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
        if self.members is not None and node.core is not None:
            core = node.core
            meta = ready.snapshot[0] if ready.snapshot is not None else None
            self.members.on_batch(node.node_id, meta, ready.entries)
            commit = core.commit_index if core.role is Role.LEADER else None
            self.members.check_conf(node.node_id, core.conf, core.term, commit)
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
        rng = self.sched.rng
        fsync_ms = rng.uniform(self.plan.fsync_ms_min, self.fsync_ms_max)
        self.sched.at(fsync_ms, _FsyncDone(node.node_id, node.incarnation))
        if node.crash_armed_ms is not None:  # crash while this write is unsynced
            crash = _CrashNow(node.node_id, node.incarnation, node.crash_armed_ms)
            node.crash_armed_ms = None
            self.sched.at(rng.uniform(0, fsync_ms * 0.99), crash)
        if node.crash_on_write and ready.entries and ready.entries[-1].index >= self.crash_mark:
            node.crash_on_write = False  # script: right after this batch's send_now
            self.sched.at(0.0, _CrashNow(node.node_id, node.incarnation, None, lose_unsynced=True))
        return True

    def on_fsync(self, event: _FsyncDone) -> None:
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
        elif entry.kind is EntryKind.CONFIG and self.members is not None:
            conf = self.members.on_applied(node.node_id, entry)
            joiner = node.node_id in self.boot_confs and node.node_id not in self.joined_from
            if conf is not None and joiner and node.node_id in conf.learners:
                self.joined_from[node.node_id] = "log"
                self.fired["join_from_log"] += 1
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
        if node.node_id in self.boot_confs and node.node_id not in self.joined_from:
            self.joined_from[node.node_id] = "snapshot"
            self.fired["join_from_snapshot"] += 1
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
        if self.members is not None:
            self.members.on_snapshot_taken(node.node_id, meta)
        node.wal.snapshots.save(meta, data)
        node.model.save_snapshot(meta, data)
        core.step(SnapshotTaken(index, data))
        assert core.snapshot_meta == meta, f"core took {core.snapshot_meta}, saved {meta}"
        self.fired["snapshot"] += 1
        self._observe(node)

    # ------------------------------------------------------------------ serving clients

    def on_client_arrive(self, event: _ClientArrive) -> None:
        node = self.nodes[event.node]
        if node.core is None:
            return  # lost with the crashed node: the client will time out
        request_id = self.next_request_id
        self.next_request_id += 1
        request = event.request
        node.requests[request_id] = request
        if request.kind is OpKind.WRITE:
            assert request.value is not None
            self.step(node, Propose(request_id, encode_command(request.key, request.value)))
        else:
            self.step(node, ReadIndex(request_id))

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
            self.probes.accepted.append((accepted.index, accepted.term))
        elif accepted.index > node.applied:
            node.proposals.setdefault(accepted.index, []).append(
                (accepted.request_id, accepted.term)
            )

    def _on_refused(self, node: _Node, refused: ProposalRefused | ReadRefused) -> None:
        if refused.request_id >= PROBE_REQUEST_BASE:  # e.g. a transfer in progress
            self.probes.retry_at_ms = self.sched.now + PROBE_RETRY_MS
        self._reply(node, refused.request_id, ReplyOutcome.REFUSED, hint=refused.leader_hint)

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

    # ------------------------------------------------------------------ network

    def _send_all(self, node: _Node, outbound: Sequence[Outbound]) -> None:
        for item in outbound:
            check_send_promise(self.checker, node.node_id, node.model, item)
            if self.members is not None and isinstance(item.message, RequestVote):
                self.members.on_vote_request(node.node_id, item.message.term)
            if (
                self.members is not None
                and isinstance(item.message, VoteResponse)
                and item.message.granted
            ):
                self.members.on_vote_granted(node.node_id, item.to, item.message.term)
            self.network.transmit(node.node_id, item.to, item.message)

    def on_deliver(self, event: _Deliver) -> None:
        node = self.nodes[event.dst]
        if node.core is None or not self.network.admit(event):
            return
        self.step(node, Receive(event.src, event.message))

    # ------------------------------------------------------------------ crashes

    def crash(
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
        rate, rng = self.plan.torn_write_rate, self.sched.rng
        if unsynced and rate and not lose_unsynced and rng.random() < rate:
            whole = rng.random() < KEEP_WHOLE_ODDS
            kept = unsynced if whole else rng.randrange(unsynced)
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

    def crash_victim(self, node_id: int | None) -> _Node | None:
        """The running node ``node_id`` (None: the current leader), if there is one."""
        if node_id is None:
            return self.current_leader()
        node = self.nodes[node_id]
        return node if node.alive else None

    def power_loss(self) -> None:
        """Every running node loses power at once; each comes back on its own."""
        for node in self.nodes.values():
            if node.core is not None:
                self.crash(node, self.sched.rng.uniform(10.0, 300.0))

    def on_crash_now(self, event: _CrashNow) -> None:
        node = self.nodes[event.node]
        if node.core is not None and node.incarnation == event.incarnation:
            self.crash(node, event.downtime_ms, lose_unsynced=event.lose_unsynced)

    def on_restart(self, event: _Restart) -> None:
        node = self.nodes[event.node]
        if node.core is None and node.node_id not in self.retired:
            self.boot(node)

    def heal(self) -> None:
        """The end of the fault phase: clocks on time, no armed crash, every node up."""
        self.clock_rates = [1.0] * self.plan.nodes
        self.power_loss_armed = False
        for node in self.nodes.values():
            node.crash_armed_ms = None
            if node.core is None and node.node_id not in self.retired | self.unstarted:
                self.boot(node)

    # ------------------------------------------------------------------ membership

    def propose_conf_change(self, node: _Node, request_id: int, change: ConfChange) -> bool:
        """Hand ``change`` to ``node``'s core (thesis §4.1); True if it appended it.  The
        checker learns the entry before any batch carries it."""
        core = node.core
        assert core is not None
        last = core.last_index
        core.step(ProposeConfChange(request_id, change))
        accepted = core.last_index > last
        if accepted and self.members is not None:
            (entry,) = core.entries(core.last_index, core.last_index + 1)
            assert entry.kind is EntryKind.CONFIG, entry
            self.members.on_proposed(node.node_id, entry, change, core.conf)
        self._after_input(node)
        return accepted

    def retire(self, node_id: int) -> None:
        """A removed node's process stops for good (the pod goes, thesis §4.2.3)."""
        node = self.nodes[node_id]
        self.retired.add(node_id)
        if node.core is not None:
            self.crash(node, None)

    def serving_nodes(self) -> list[_Node]:
        """The nodes liveness waits for: all, or with membership changes the running
        members of the current leader's configuration."""
        if self.members is None:
            return list(self.nodes.values())
        leader = self.current_leader()
        wanted = set(self.nodes) - self.retired - self.unstarted
        if leader is not None and leader.core is not None:
            conf = leader.core.conf
            wanted &= set(conf.voters) | set(conf.learners)
        return [self.nodes[n] for n in sorted(wanted)]


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
