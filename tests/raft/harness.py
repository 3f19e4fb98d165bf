"""A tiny synchronous network of `RaftCore`s for scenario tests.

Each `Node` plays the driver: it honours the `Ready` ordering contract (send_now, persist,
Persisted, send_after_persist, apply) against an in-memory "disk" (``durable_*``), and a
crash rebuilds the core from exactly that durable state.  Messages sit in one FIFO queue;
tests deliver them all (`Network.deliver`), selectively (a ``keep`` predicate), or drop
them (`cut`, `isolate`).  A toy state machine records applied entries and serialises them
as its snapshot payload.

Every delivery step checks election safety (one leader per term) and that committed
entries never change and agree across nodes (state machine safety).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from felix.proto.raft_messages import (
    AppendEntries,
    ConfState,
    Entry,
    EntryKind,
    RaftMessage,
    SnapshotMeta,
)
from felix.raft.core import RaftCore
from felix.raft.ready import Outbound, ProposalAccepted, ProposalRefused, ReadRefused, Ready
from felix.raft.ready import ReadState as ReadStateOut
from felix.raft.types import (
    BootState,
    Campaign,
    HardState,
    HardStatePersisted,
    Input,
    Persisted,
    Propose,
    RaftConfig,
    Receive,
    Role,
    SnapshotTaken,
    Tick,
)
from felix.testing.sabotage import core_for

SCENARIO_TIMINGS: dict[str, object] = {"election_ticks": 10, "heartbeat_ticks": 1}


@dataclass
class Message:
    frm: int
    to: int
    msg: RaftMessage

    def __repr__(self) -> str:
        return f"{self.frm}->{self.to} {describe(self.msg)}"


def describe(m: RaftMessage) -> str:
    """One short line per message, for transcripts and failure output."""
    name = type(m).__name__
    if isinstance(m, AppendEntries):
        span = f"{m.entries[0].index}..{m.entries[-1].index}" if m.entries else "-"
        return (
            f"{name} t{m.term} prev={m.prev_log_index}/t{m.prev_log_term} "
            f"entries={span} commit={m.leader_commit} seq={m.seq}"
        )
    fields = ", ".join(
        f"{k}={getattr(m, k)!r}" for k in type(m).__dataclass_fields__ if k not in ("chunk",)
    )
    return f"{name}({fields})"


def encode_state(applied: list[tuple[int, int, str]]) -> bytes:
    return json.dumps(applied).encode()


def decode_state(data: bytes) -> list[tuple[int, int, str]]:
    return [(int(i), int(t), str(d)) for i, t, d in json.loads(data)]


@dataclass
class Node:
    config: RaftConfig
    boot_conf: ConfState
    seed: int
    # The core's class: `RaftCore`, or one broken on purpose (felix/testing/sabotage.py).
    core_class: type[RaftCore] = RaftCore
    core: RaftCore = field(init=False)
    # The "disk": what a crash keeps.
    durable_hard_state: HardState = field(default_factory=HardState)
    durable_snapshot: tuple[SnapshotMeta, bytes] | None = None
    durable_entries: list[Entry] = field(default_factory=list)
    # The toy state machine: (index, term, data) of every applied NORMAL entry.
    applied: list[tuple[int, int, str]] = field(default_factory=list)
    applied_index: int = 0
    read_states: list[ReadStateOut] = field(default_factory=list)
    proposed: list[ProposalAccepted] = field(default_factory=list)
    refused: list[ProposalRefused | ReadRefused] = field(default_factory=list)
    readies: list[Ready] = field(default_factory=list)
    up: bool = True
    # When set, the driver's Persisted notices are held back (a slow fsync).
    hold_persisted: bool = False
    held_persisted: list[Persisted] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boot()

    def boot(self) -> None:
        boot = BootState(
            hard_state=self.durable_hard_state,
            conf=self.boot_conf,
            snapshot=self.durable_snapshot,
            entries=tuple(self.durable_entries),
        )
        self.core = self.core_class(self.config, random.Random(self.seed), boot)
        if self.durable_snapshot is not None:
            meta, data = self.durable_snapshot
            self.applied = decode_state(data)
            self.applied_index = meta.index
        else:
            self.applied = []
            self.applied_index = 0

    @property
    def durable_first_index(self) -> int:
        return (self.durable_snapshot[0].index if self.durable_snapshot else 0) + 1

    def persist(self, ready: Ready) -> None:
        """Ready step 2: snapshot, then entries (suffix overwrite), then hard state."""
        if ready.snapshot is not None:
            self.durable_snapshot = ready.snapshot
            self.durable_entries = []
        if ready.entries:
            start = ready.entries[0].index - self.durable_first_index
            assert 0 <= start <= len(self.durable_entries), "gap in the durable log"
            del self.durable_entries[start:]
            self.durable_entries.extend(ready.entries)
        if ready.hard_state is not None:
            self.durable_hard_state = ready.hard_state
        if ready.compact_to is not None:
            cut = ready.compact_to
            self.durable_entries = [e for e in self.durable_entries if e.index > cut]

    def apply(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            meta, data = ready.snapshot
            self.applied = decode_state(data)
            self.applied_index = meta.index
        for e in ready.committed:
            assert e.index == self.applied_index + 1, f"apply gap at {e.index}"
            self.applied_index = e.index
            if e.kind is EntryKind.NORMAL:
                self.applied.append((e.index, e.term, e.data.decode()))

    def take_snapshot(self) -> None:
        """Snapshot the state machine at its applied index (the driver's job): the
        durable log is then kept from the snapshot on (``durable_first_index``)."""
        index = self.applied_index
        data = encode_state(self.applied)
        self.durable_entries = [e for e in self.durable_entries if e.index > index]
        self.core.step(SnapshotTaken(index, data))
        meta = self.core.snapshot_meta
        assert meta is not None and meta.index == index
        self.durable_snapshot = (meta, data)


class Network:
    def __init__(
        self,
        voters: Iterable[int] = (1, 2, 3),
        learners: Iterable[int] = (),
        extra: Iterable[int] = (),
        seed: int = 0,
        sabotage: Iterable[str] = (),
        **config: object,
    ) -> None:
        """``extra``: nodes that boot with the same configuration but are not in it yet
        (to be added as learners later).  ``sabotage``: cores that break those rules on
        purpose (`felix.testing.sabotage.core_for`)."""
        self.conf = ConfState(voters=tuple(voters), learners=tuple(learners))
        # The scenarios count ticks with a heartbeat every tick and a 10-tick election
        # timeout (not RaftConfig's defaults, felix.config's): keep them explicit.
        config = {**SCENARIO_TIMINGS, **config}
        self.config_overrides = config
        self.nodes: dict[int, Node] = {}
        core_class = core_for(sabotage)
        for nid in (*self.conf.voters, *self.conf.learners, *extra):
            cfg = RaftConfig(node_id=nid, **config)  # type: ignore[arg-type]
            self.nodes[nid] = Node(cfg, self.conf, seed * 1000 + nid, core_class)
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.leaders_by_term: dict[int, int] = {}
        self.committed: dict[int, Entry] = {}  # index -> the entry committed there
        self.trace: list[str] = []

    # -- driving ---------------------------------------------------------------------

    def core(self, nid: int) -> RaftCore:
        return self.nodes[nid].core

    def step(self, nid: int, inp: Input) -> None:
        node = self.nodes[nid]
        if not node.up:
            return
        node.core.step(inp)
        self.process(nid)

    def step_many(self, nid: int, inputs: Iterable[Input]) -> None:
        """Several inputs before one Ready (how a driver batches proposals)."""
        node = self.nodes[nid]
        for inp in inputs:
            node.core.step(inp)
        self.process(nid)

    def process(self, nid: int) -> None:
        """Drain Ready batches of ``nid`` following the ordering contract."""
        node = self.nodes[nid]
        core = node.core
        while core.has_ready():
            ready = core.take_ready()
            node.readies.append(ready)
            self._send(nid, ready.send_now)
            node.persist(ready)
            if ready.entries:
                last = ready.entries[-1]
                if node.hold_persisted:
                    node.held_persisted.append(Persisted(last.index, last.term))
                else:
                    core.step(Persisted(last.index, last.term))
            if ready.hard_state is not None and ready.must_sync:
                hs = ready.hard_state
                core.step(HardStatePersisted(hs.term, hs.vote))
            self._send(nid, ready.send_after_persist)
            node.apply(ready)
            node.read_states.extend(ready.read_states)
            node.proposed.extend(ready.proposed)
            node.refused.extend(ready.refused)
            self._check(nid, ready)

    def release_persisted(self, nid: int) -> None:
        node = self.nodes[nid]
        node.hold_persisted = False
        held, node.held_persisted = node.held_persisted, []
        for p in held:
            node.core.step(p)
        self.process(nid)

    def _send(self, frm: int, outbound: Iterable[Outbound]) -> None:
        for out in outbound:
            self.queue.append(Message(frm, out.to, out.message))

    def deliver_one(self, m: Message) -> None:
        self.trace.append(repr(m))
        if (m.frm, m.to) in self.cut or m.to not in self.nodes or not self.nodes[m.to].up:
            return
        self.step(m.to, Receive(m.frm, m.msg))

    def deliver(
        self,
        keep: Callable[[Message], bool] | None = None,
        rounds_max: int = 10_000,
    ) -> int:
        """Deliver queued messages (and what they cause) until the queue is empty.
        With ``keep``, only messages it accepts are delivered; the rest are dropped."""
        delivered = 0
        while self.queue:
            batch, self.queue = self.queue, []
            for m in batch:
                if keep is None or keep(m):
                    self.deliver_one(m)
                    delivered += 1
            rounds_max -= 1
            assert rounds_max > 0, "network never went quiet"
        return delivered

    def deliver_except(self, hold: Callable[[Message], bool]) -> list[Message]:
        """Deliver everything until quiet except messages ``hold`` accepts, which are
        removed from the queue and returned (in order) for the test to deal with."""
        held: list[Message] = []
        while self.queue:
            batch, self.queue = self.queue, []
            for m in batch:
                if hold(m):
                    held.append(m)
                else:
                    self.deliver_one(m)
        return held

    def take(self, pred: Callable[[Message], bool] | None = None) -> list[Message]:
        """Remove and return queued messages (all, or those ``pred`` accepts)."""
        if pred is None:
            taken, self.queue = self.queue, []
            return taken
        taken = [m for m in self.queue if pred(m)]
        self.queue = [m for m in self.queue if not pred(m)]
        return taken

    def tick(self, nids: Iterable[int] | None = None, n: int = 1) -> None:
        for _ in range(n):
            for nid in list(nids) if nids is not None else list(self.nodes):
                self.step(nid, Tick())

    def tick_deliver(self, n: int, nids: Iterable[int] | None = None) -> None:
        ids = list(nids) if nids is not None else None
        for _ in range(n):
            self.tick(ids)
            self.deliver()

    def campaign(self, nid: int) -> None:
        self.step(nid, Campaign())
        self.deliver()

    def elect(self, nid: int) -> None:
        self.campaign(nid)
        assert self.core(nid).role is Role.LEADER, f"node {nid} did not win: {self.core(nid)}"

    def propose(self, nid: int, data: str, request_id: int = 0) -> None:
        self.step(nid, Propose(request_id, data.encode()))

    # -- faults ----------------------------------------------------------------------

    def isolate(self, nid: int) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def partition(self, *groups: Iterable[int]) -> None:
        sets = [set(g) for g in groups]
        for a in self.nodes:
            for b in self.nodes:
                if a != b and not any(a in s and b in s for s in sets):
                    self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, nid: int) -> None:
        """Lose everything not durable; the node stays down until `restart`."""
        self.nodes[nid].up = False
        self.queue = [m for m in self.queue if m.to != nid and m.frm != nid]

    def crash_during_write(self, nid: int) -> Ready:
        """Take one Ready of ``nid``, put its ``send_now`` on the wire (contract step 1),
        and crash before its write is durable: the batch is lost, its sends are not."""
        node = self.nodes[nid]
        ready = node.core.take_ready()
        node.readies.append(ready)
        self.crash(nid)
        self._send(nid, ready.send_now)
        return ready

    def restart(self, nid: int) -> None:
        node = self.nodes[nid]
        node.up = True
        node.boot()
        self.process(nid)

    # -- queries and checks ----------------------------------------------------------

    def leader(self) -> int | None:
        best = None
        for nid, node in self.nodes.items():
            c = node.core
            if node.up and c.role is Role.LEADER and (best is None or c.term > best[1]):
                best = (nid, c.term)
        return best[0] if best else None

    def _check(self, nid: int, ready: Ready) -> None:
        core = self.nodes[nid].core
        if core.role is Role.LEADER:
            prior = self.leaders_by_term.setdefault(core.term, nid)
            assert prior == nid, f"two leaders in term {core.term}: {prior} and {nid}"
        for e in ready.committed:
            seen = self.committed.setdefault(e.index, e)
            assert seen == e, f"index {e.index} committed as {seen} and as {e}"

    def applied_data(self, nid: int) -> list[str]:
        return [d for _i, _t, d in self.nodes[nid].applied]

    def assert_logs_match(self, nids: Iterable[int] | None = None) -> None:
        """Log matching (§5.3): entries with the same index and term are identical, and
        so are all entries before them."""
        ids = list(nids) if nids is not None else list(self.nodes)
        for a in ids:
            for b in ids:
                ca, cb = self.core(a), self.core(b)
                lo = max(ca.first_index, cb.first_index)
                hi = min(ca.last_index, cb.last_index)
                for i in range(hi, lo - 1, -1):
                    ea, eb = ca.entries(i, i + 1)[0], cb.entries(i, i + 1)[0]
                    if ea.term == eb.term:
                        assert ca.entries(lo, i + 1) == cb.entries(lo, i + 1)
                        break


def with_config(network: Network, nid: int, **changes: object) -> None:
    node = network.nodes[nid]
    node.config = replace(node.config, **changes)  # type: ignore[arg-type]
