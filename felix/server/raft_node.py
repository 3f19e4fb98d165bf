"""`RaftNode`: the one task that owns a Raft core (docs/architecture.md, "Data flow").

Theory of operation
-------------------
Everything that wants something from Raft — the ticker, the peer transport, client
requests — puts an input on one bounded memory channel.  The loop takes an input, then
drains whatever else is already waiting (so a burst of proposals becomes one batch),
steps them all into the core, and hands each resulting `Ready` to the shared
`felix.raft.driver.ReadyDriver`, which applies the contract of felix/raft/ready.py:

1. the durable write starts (only if ``ready.must_sync``: a commit-only change is not
   written), then ``send_now`` goes to the transport's per-peer queues (non-blocking; the
   leader replicates while it fsyncs: thesis §10.2.1);
2. once the write returns: ``Persisted`` back into the core (and
   ``HardStatePersisted`` if the batch wrote a hard state: a candidate counts its own
   vote only then), ``send_after_persist`` (votes and acks promise durability), then the
   request table learns the batch's outcomes, the snapshot and committed entries are
   applied, and the state machine's batch ends (the metadata state machine publishes its
   deltas to the watch hub, whose own fan-out task sends them).

Proposals and reads wait in the `felix.server.requests.RequestTable`; requests for the
leader that reach a follower go through `felix.server.forwarding.Forwarder`, which reads
them from `RaftNode.forwarded`.

Snapshots are taken by a separate task so the loop never waits for one: the state
machine hands over an encoder for a frozen view, which runs in a worker thread; the file
is saved durably, and only then does ``SnapshotTaken`` let the core (and WAL) drop the
log prefix.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from felix.proto.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    Forward,
    ForwardMessage,
    ForwardResult,
    JoinReply,
    JoinRequest,
    RequestVote,
    SnapshotMeta,
)
from felix.raft.core import RaftCore
from felix.raft.driver import ReadyDriver
from felix.raft.ready import Outbound, Ready
from felix.raft.types import (
    BootState,
    Campaign,
    Input,
    Propose,
    ProposeConfChange,
    RaftConfig,
    ReadIndex,
    Receive,
    Role,
    SnapshotTaken,
    Tick,
    TransferLeader,
)
from felix.server.metrics import NodeMetrics
from felix.server.outcome import Outcome
from felix.server.requests import (
    NodeError,
    ProposalTimeout,
    RequestTable,
    ResultOutcome,
    ShuttingDown,
    applied_ok,
)
from felix.transport.base import Deliver, PeerPayload, PeerTransport, UnknownPeer

log = logging.getLogger("felix.raft_node")

INPUTS_BATCH_MAX = 512
RTT_TRACKED_MAX = 4096
FORWARDED_QUEUE_MAX = 1024  # Forward / ForwardResult messages not yet taken by the forwarder
CAMPAIGNING = frozenset({Role.PRE_CANDIDATE, Role.CANDIDATE})
JOIN_REQUESTS_QUEUE_MAX = 64  # JoinRequests not yet taken by the autopilot; more are dropped


# --- seams -----------------------------------------------------------------------------


class StateMachine(Protocol):
    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry (NORMAL, NOOP or CONFIG); the result goes to the
        proposer.  Must be deterministic: every node applies the same entries."""
        ...

    def snapshot_encoder(self) -> Callable[[], bytes]:
        """A function that encodes a frozen view of the current state (thread-safe)."""
        ...

    def restore(self, data: bytes, index: int) -> None: ...

    def batch_applied(self) -> None:
        """End of one Ready's apply (the metadata state machine publishes its deltas)."""
        ...


class LogStore(Protocol):
    async def save(self, ready: Ready) -> None: ...

    def start_save(self, ready: Ready) -> PendingWrite | None:
        """Start `save` without waiting (see `SegmentedWal.start_save`), or None if that
        is not possible right now: then the node awaits `save`."""
        ...

    async def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class PendingWrite(Protocol):
    async def wait(self) -> None: ...


class _Write:
    """One Ready's durable write: started at once in the WAL's worker thread when it is
    free, else when awaited.  ``started`` is when the fsync metric starts counting."""

    __slots__ = ("_pending", "_ready", "_wal", "started")

    def __init__(self, wal: LogStore, ready: Ready) -> None:
        self._wal, self._ready = wal, ready
        self.started = time.perf_counter()
        self._pending = wal.start_save(ready)

    async def wait(self) -> None:
        if self._pending is not None:
            await self._pending.wait()
            return
        self.started = time.perf_counter()
        await self._wal.save(self._ready)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: int
    role: str
    term: int
    leader_id: int | None
    commit_index: int
    applied_index: int
    last_index: int
    first_index: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]  # observers included
    observers: tuple[int, ...]
    snapshot_index: int
    match_index: dict[int, int]  # leader only: how far each peer's log is known to match


@dataclass(frozen=True, slots=True)
class NodeSettings:
    tick_s: float = 0.05
    inputs_queue_max: int = 4096
    proposals_pending_max: int = 10_000
    proposal_timeout_s: float = 5.0
    snapshot_entries: int = 10_000  # take a snapshot every N applied entries...
    snapshot_bytes: int = 64 * 1024 * 1024  # ...or once this many entry bytes were applied
    # Encode snapshots in a worker thread (off the event loop).  Simulations on MockClock
    # turn it off: a thread would let virtual time jump while it runs.
    snapshot_in_thread: bool = True


class RaftNode:
    def __init__(
        self,
        raft_config: RaftConfig,
        boot: BootState,
        wal: LogStore,
        transport_factory: Callable[[Deliver], PeerTransport],
        state_machine: StateMachine,
        *,
        settings: NodeSettings = NodeSettings(),
        metrics: NodeMetrics | None = None,
        rng: random.Random | None = None,
        outcome_of: ResultOutcome = applied_ok,
    ) -> None:
        """Built once, with every collaborator; nothing runs until `run`.  The state
        machine is restored from the boot snapshot here, so whatever reads it (the
        watch hub) starts from the same version the node does."""
        self.node_id = raft_config.node_id
        self.settings = settings
        self.metrics = metrics or NodeMetrics(self.node_id)
        self.state_machine = state_machine
        self.wal = wal
        self.core = RaftCore(raft_config, rng or random.Random(), boot)
        self.transport = transport_factory(self.deliver)
        self._inputs_send, self._inputs = trio.open_memory_channel[Input](settings.inputs_queue_max)
        self._forwarded_send, self.forwarded = trio.open_memory_channel[tuple[int, ForwardMessage]](
            FORWARDED_QUEUE_MAX
        )
        # Non-members asking to join, for `felix.server.autopilot.Autopilot` (only a
        # leader acts on them; a full queue drops: the joiner asks again).
        self._joins_send, self.join_requests = trio.open_memory_channel[JoinRequest](
            JOIN_REQUESTS_QUEUE_MAX
        )
        self.heard_from_s: dict[int, float] = {}  # peer -> trio time of its last message
        self._synced_conf = self.core.conf  # what the transport's peer list reflects
        self.requests = RequestTable(
            self.node_id,
            self.metrics,
            pending_max=settings.proposals_pending_max,
            timeout_s=settings.proposal_timeout_s,
        )
        self.outcome_of = outcome_of
        self._changed = trio.Event()  # set (and replaced) whenever a Ready was handled
        self._leader_changed = trio.Event()  # set (and replaced) when the leader changes
        self.applied_index = 0
        self._snapshot_index = boot.snapshot[0].index if boot.snapshot else 0
        self._snapshotting = False
        self._last_leader: int | None = None
        self._published_role: Role | None = None
        self._bytes_since_snapshot = 0
        self._driver: ReadyDriver[_Write] = ReadyDriver(self.core, self, self, self)
        self._rtt_sent: dict[tuple[int, int], float] = {}
        if boot.snapshot:
            meta, data = boot.snapshot
            state_machine.restore(data, meta.index)
            self.applied_index = meta.index

    # --- public API (any task) -------------------------------------------------------

    async def deliver(self, sender: int, message: PeerPayload) -> None:
        """The transport's receive path: Raft messages into the loop, forwarded requests
        and their answers to `forwarded` (read by a `felix.server.forwarding.Forwarder`)."""
        self.heard_from_s[sender] = trio.current_time()
        if isinstance(message, (Forward, ForwardResult)):
            await self._forwarded_send.send((sender, message))
            return
        if isinstance(message, JoinRequest):
            with contextlib.suppress(trio.WouldBlock, UnknownPeer):
                self.transport.send_nowait(sender, JoinReply(self.core.term, self.core.last_index))
            with contextlib.suppress(trio.WouldBlock):
                self._joins_send.send_nowait(message)
            return
        if isinstance(message, JoinReply):
            return  # only a booting node's probe asks for them (felix/server/bootstrap.py)
        if isinstance(message, AppendResponse) and message.seq:
            sent = self._rtt_sent.pop((sender, message.seq), None)
            if sent is not None:
                self.metrics.peer_rtt.labels(str(sender)).observe(time.perf_counter() - sent)
        await self._inputs_send.send(Receive(sender, message))

    async def propose(self, data: bytes, *, timeout_s: float | None = None) -> tuple[int, Any]:
        """Replicate ``data``; returns (applied index, state machine result)."""
        return await self._request(lambda rid: Propose(rid, data), timeout_s)

    async def change_membership(
        self,
        kind: ConfChangeKind,
        node: int,
        *,
        address: str = "",
        observer: bool = False,
        timeout_s: float | None = None,
    ) -> int:
        """``observer``: an ADD_LEARNER of a permanent non-voting member
        (docs/architecture.md, "Observers")."""
        if address:  # the leader must reach the new node before it can replicate to it
            self.transport.add_peer(node, address)
        change = ConfChange(kind, node, address, observer=observer)
        index, _ = await self._request(lambda rid: ProposeConfChange(rid, change), timeout_s)
        return index

    async def read_index(self, *, timeout_s: float | None = None) -> int:
        """A linearizable read point: returns once this node has applied it (thesis §6.4)."""
        requests = self.requests
        rid, waiter = requests.register(requests.reads)
        try:
            await self._inputs_send.send(ReadIndex(rid))
            return int(await requests.wait(waiter, timeout_s))
        finally:
            requests.forget(rid, waiter)

    async def transfer_leader(self, target: int, *, timeout_s: float = 5.0) -> None:
        """Ask this node (the leader) to hand leadership to ``target`` (thesis §3.10);
        returns once this node sees ``target`` lead."""
        await self._inputs_send.send(TransferLeader(target))
        with trio.move_on_after(timeout_s):
            while self.core.leader_id != target:
                await self.wait_changed()
            return
        raise ProposalTimeout(f"leadership did not move to node {target} within {timeout_s} s")

    async def propose_outcome(self, data: bytes) -> Outcome:
        """Propose here (this node must lead) and map the result to an `Outcome`."""
        try:
            index, result = await self.propose(data)
        except NodeError as exc:
            return exc.outcome()
        return self.outcome_of(index, result)

    async def campaign(self) -> None:
        await self._inputs_send.send(Campaign())

    async def wait_changed(self) -> None:
        """Wait until the next Ready has been handled (for status watchers and tests)."""
        await self._changed.wait()

    async def wait_leader_changed(self) -> None:
        """Wait until this node sees a different leader (or none)."""
        await self._leader_changed.wait()

    def status(self) -> NodeStatus:
        """``role`` is the Raft role, except "observer" for a member of
        ``conf.observers`` (its Raft role is always follower: it never campaigns)."""
        core = self.core
        observer = self.node_id in core.conf.observers and core.role is Role.FOLLOWER
        return NodeStatus(
            node_id=self.node_id,
            role="observer" if observer else core.role.value,
            term=core.term,
            leader_id=core.leader_id,
            commit_index=core.commit_index,
            applied_index=self.applied_index,
            last_index=core.last_index,
            first_index=core.first_index,
            voters=core.conf.voters,
            learners=core.conf.learners,
            observers=core.conf.observers,
            snapshot_index=self._snapshot_index,
            match_index=core.match_indexes() if core.role is Role.LEADER else {},
        )

    def known_peers(self) -> frozenset[int]:
        """Nodes the transport talks to: the members, and a joining node's seeds."""
        return self.transport.peer_ids()

    def heard_recently(self, within_s: float) -> frozenset[int]:
        """Peers a message arrived from in the last ``within_s`` seconds."""
        now = trio.current_time()
        return frozenset(p for p, t in self.heard_from_s.items() if now - t <= within_s)

    @property
    def handing_over(self) -> bool:
        """This node leads but is transferring leadership (thesis §3.10): it takes no
        proposals until the transfer ends (or is abandoned after an election timeout)."""
        core = self.core
        return core.role is Role.LEADER and core.transfer_target is not None

    @property
    def inputs_queue_depth(self) -> int:
        return self._inputs.statistics().current_buffer_used

    # --- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.transport.run)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._loop)
                task_status.started()
        finally:
            self.requests.fail_all(ShuttingDown(f"node {self.node_id} is shutting down"))

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.settings.tick_s)
            # A saturated loop skips a tick: that only delays timeouts.
            with contextlib.suppress(trio.WouldBlock):
                self._inputs_send.send_nowait(Tick())

    async def _loop(self) -> None:
        core = self.core
        while True:
            core.step(await self._inputs.receive())
            for _ in range(INPUTS_BATCH_MAX):
                try:
                    core.step(self._inputs.receive_nowait())
                except trio.WouldBlock:
                    break
            while core.has_ready():
                await self._handle_ready(core.take_ready())
            self._publish()

    async def _handle_ready(self, ready: Ready) -> None:
        """One Ready through the shared driver (felix/raft/driver.py): the write starts
        before the sends, ``Persisted`` and the apply follow once it is durable."""
        if self.core.role in CAMPAIGNING:  # only a campaign's Ready holds its vote requests
            self._count_elections(ready)
        driver = self._driver
        pending = driver.begin(ready)
        if pending is None:
            if ready.send_now:
                # Let the transport put these (e.g. commit notices) on the wire before
                # this Ready's apply and watch fan-out, which can take milliseconds:
                # followers and their brokers should not wait for our brokers.
                await trio.lowlevel.checkpoint()
        else:
            await pending.wait()
            self.metrics.fsync_duration.observe(time.perf_counter() - pending.started)
        driver.finish(ready)

    def _count_elections(self, ready: Ready) -> None:
        """Campaigns this node starts, told apart by their vote requests: a transfer's
        (thesis §3.10) is marked ``leader_transfer``; any other real one followed an
        election timeout (after a won pre-vote, thesis §9.6).  Once per campaign, not
        per voter asked."""
        causes: set[str] = set()
        pre_vote = False
        for messages in (ready.send_now, ready.send_after_persist):
            for out in messages:
                m = out.message
                if type(m) is RequestVote and m.candidate == self.node_id:
                    if m.pre_vote:
                        pre_vote = True
                    else:
                        causes.add("transfer" if m.leader_transfer else "timeout")
        if pre_vote:
            self.metrics.pre_votes.inc()
        for cause in causes:
            self.metrics.elections.labels(cause).inc()

    # --- the driver's disk, network and applier (felix/raft/driver.py) ---------------

    def start_write(self, ready: Ready) -> _Write:
        return _Write(self.wal, ready)

    def send(self, out: Outbound) -> None:
        message = out.message
        if isinstance(message, AppendEntries) and message.seq:
            self._note_rtt_start(out.to, message.seq, time.perf_counter())
        try:
            self.transport.send_nowait(out.to, message)
        except (trio.WouldBlock, UnknownPeer):  # dropped; Raft retransmits
            self.metrics.peer_send_drops.labels(str(out.to)).inc()

    def resolve(self, ready: Ready) -> None:
        self.requests.resolve(ready)

    def restore(self, meta: SnapshotMeta, data: bytes) -> None:
        self.state_machine.restore(data, meta.index)
        self.applied_index = meta.index
        self._snapshot_index = max(self._snapshot_index, meta.index)
        self._bytes_since_snapshot = 0

    def batch_applied(self, ready: Ready) -> None:
        if ready.committed or ready.snapshot:
            self.state_machine.batch_applied()
        self.requests.release_reads(self.applied_index)
        self._maybe_snapshot()

    def _note_rtt_start(self, peer: int, seq: int, now: float) -> None:
        """Peer round-trip time: from the first AppendEntries of a heartbeat round to the
        first reply echoing that round (bounded: old unanswered rounds are forgotten)."""
        if len(self._rtt_sent) >= RTT_TRACKED_MAX:
            self._rtt_sent.clear()
        self._rtt_sent.setdefault((peer, seq), now)

    def apply(self, entry: Entry) -> None:
        result = self.state_machine.apply(entry)
        self.applied_index = entry.index
        self._bytes_since_snapshot += len(entry.data)
        self.metrics.proposals_applied.inc()
        self.requests.entry_applied(entry, result)

    def _sync_peers(self) -> None:
        """Keep the transport's peers equal to the members' addresses in the latest
        configuration (docs/architecture.md, "Membership"): a member added at run time is
        dialed from every node, also after compaction and restarts; a removed one is
        dropped.  Peers this node was configured with but that are not members (the seeds
        a joining node asks) stay until a configuration removes them."""
        conf, before = self.core.conf, self._synced_conf
        if conf is before:
            return
        self._synced_conf = conf
        for member in conf.addresses:
            if member.node == self.node_id or member.address == before.address_of(member.node):
                continue
            try:
                self.transport.add_peer(member.node, member.address)
            except (KeyError, ValueError) as exc:
                log.warning(
                    "node %d: cannot reach member %d at %r: %s",
                    self.node_id,
                    member.node,
                    member.address,
                    exc,
                )
        for gone in before.members() - conf.members():
            if gone != self.node_id:
                self.transport.remove_peer(gone)

    def _publish(self) -> None:
        core, metrics = self.core, self.metrics
        self._sync_peers()
        metrics.term.set(core.term)
        if core.role is not self._published_role:  # label lookups only on a change
            self._published_role = core.role
            for role in Role:
                metrics.role.labels(role.value).set(1 if core.role is role else 0)
        metrics.is_leader.set(1 if core.role is Role.LEADER else 0)
        metrics.has_leader.set(1 if core.leader_id is not None else 0)
        if core.leader_id != self._last_leader:
            self._leader_changed.set()
            self._leader_changed = trio.Event()
        if core.leader_id != self._last_leader and core.leader_id is not None:
            metrics.leader_changes.inc()
            log.info(
                "node %d: leader is now node %d (term %d)", self.node_id, core.leader_id, core.term
            )
        self._last_leader = core.leader_id
        metrics.commit_index.set(core.commit_index)
        metrics.applied_index.set(self.applied_index)
        metrics.proposals_pending.set(len(self.requests.proposals))
        metrics.inputs_queue_depth.set(self.inputs_queue_depth)
        self._changed.set()
        self._changed = trio.Event()

    # --- snapshots -----------------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        due = (
            self.applied_index - self._snapshot_index >= self.settings.snapshot_entries
            or self._bytes_since_snapshot >= self.settings.snapshot_bytes
        )
        if not due or self._snapshotting or self.requests.stopping:
            return
        if self.applied_index <= max(self._snapshot_index, self.core.first_index - 1):
            self._bytes_since_snapshot = 0  # nothing new since the last (or installed) one
            return
        index = self.applied_index
        term = self.core.entries(index, index + 1)[0].term
        conf = self.core.conf_at(index)
        self._snapshotting = True
        self._bytes_since_snapshot = 0
        self._nursery.start_soon(
            self._take_snapshot, index, term, conf, self.state_machine.snapshot_encoder()
        )

    async def _take_snapshot(
        self, index: int, term: int, conf: ConfState, encode: Callable[[], bytes]
    ) -> None:
        started = time.perf_counter()
        try:
            if self.settings.snapshot_in_thread:
                data = await trio.to_thread.run_sync(encode)
            else:
                await trio.lowlevel.checkpoint()
                data = encode()
            meta = SnapshotMeta(index, term, conf, len(data), zlib.crc32(data))
            await self.wal.save_snapshot(meta, data)
            await self._inputs_send.send(SnapshotTaken(index, data))
            self._snapshot_index = index
            self.metrics.snapshot_bytes.set(len(data))
            self.metrics.snapshot_duration.observe(time.perf_counter() - started)
            log.info("node %d: snapshot at index %d (%d bytes)", self.node_id, index, len(data))
        finally:
            self._snapshotting = False

    # --- requests ---------------------------------------------------------------------

    async def _request(
        self, make: Callable[[int], Input], timeout_s: float | None
    ) -> tuple[int, Any]:
        requests = self.requests
        rid, waiter = requests.register(requests.proposals)
        try:
            await self._inputs_send.send(make(rid))
            result: tuple[int, Any] = await requests.wait(waiter, timeout_s)
            return result
        finally:
            requests.forget(rid, waiter)


def bootstrap_conf(voters: list[int]) -> ConfState:
    return ConfState(tuple(sorted(voters)), ())
