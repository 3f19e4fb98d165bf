"""`ReadyDriver`: the one place that applies the `Ready` ordering contract.

The server's Raft loop (`felix.server.raft_node`) and the tier-A simulation
(`felix.testing.sim`) both hand every Ready to this driver, so the rule the simulation
checks is the rule production runs (docs/architecture.md, "The Ready contract").

A Ready is handled in two halves because the durable write in between is asynchronous
in both worlds (a worker thread's fsync; a simulated disk's completion event):

* `ReadyDriver.begin` starts the write if ``ready.must_sync`` (before any send: a send
  can wake a peer onto this CPU, and our own fsync should not wait behind it), then
  sends ``send_now`` (the leader replicates in parallel with its own fsync: thesis
  §10.2.1).  It returns the disk's handle for the write, or None when there is none.
* `ReadyDriver.finish`, once that write is durable: ``Persisted`` back into the core,
  and ``HardStatePersisted`` if the batch wrote a hard state (a candidate's own vote
  counts only from then on), ``send_after_persist`` (votes and acks promise what is on
  disk: §5.1, figure 2), then the applier gets the batch's request outcomes, the
  snapshot, the committed entries in order, and the end of the batch.

PURE: no I/O of its own; the disk, the network and the applier are passed in.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from felix.proto.raft_messages import Entry, SnapshotMeta
from felix.raft.ready import Outbound, Ready
from felix.raft.types import HardStatePersisted, Input, Persisted

W = TypeVar("W")
W_co = TypeVar("W_co", covariant=True)


class Steppable(Protocol):
    def step(self, inp: Input) -> None: ...


class ReadyDisk(Protocol[W_co]):
    def start_write(self, ready: Ready) -> W_co:
        """Begin the durable write of ``ready``'s snapshot, entries and hard state, then
        its compaction; return a handle the caller waits on (called only if
        ``ready.must_sync``)."""
        ...


class ReadyNetwork(Protocol):
    def send(self, out: Outbound) -> None:
        """Hand one message to the transport; never blocks (a full queue drops it)."""
        ...


class ReadyApplier(Protocol):
    def resolve(self, ready: Ready) -> None:
        """Note ``ready.proposed`` / ``ready.refused`` (before the apply: a proposal
        can be accepted and committed in the same batch)."""
        ...

    def restore(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the state machine with a snapshot received from the leader."""
        ...

    def apply(self, entry: Entry) -> None:
        """Apply one committed entry, strictly in index order."""
        ...

    def batch_applied(self, ready: Ready) -> None:
        """End of the batch: answer ``read_states``, publish, schedule snapshots."""
        ...


class ReadyDriver(Generic[W]):
    """Applies one Ready at a time: `begin`, wait for the handle it returns (if any),
    `finish`.  Called only by the task (or event handler) that owns the core."""

    def __init__(
        self,
        core: Steppable,
        disk: ReadyDisk[W],
        network: ReadyNetwork,
        applier: ReadyApplier,
    ) -> None:
        self.core = core
        self.disk = disk
        self.network = network
        self.applier = applier

    def needs_write(self, ready: Ready) -> bool:
        """The contract's sync rule, decided by the core (`Ready.must_sync`)."""
        return ready.must_sync

    def begin(self, ready: Ready) -> W | None:
        """Steps 1–2 of the contract: start the write, then ``send_now``."""
        pending = self.disk.start_write(ready) if self.needs_write(ready) else None
        send = self.network.send
        for out in ready.send_now:
            send(out)
        return pending

    def finish(self, ready: Ready) -> None:
        """Steps 3–6, once the write `begin` started (if any) is durable."""
        if ready.entries:
            last = ready.entries[-1]
            self.core.step(Persisted(last.index, last.term))
        hs = ready.hard_state
        if hs is not None and ready.must_sync:
            self.core.step(HardStatePersisted(hs.term, hs.vote))
        send = self.network.send
        for out in ready.send_after_persist:
            send(out)
        applier = self.applier
        applier.resolve(ready)
        if ready.snapshot is not None:
            applier.restore(*ready.snapshot)
        for entry in ready.committed:
            applier.apply(entry)
        applier.batch_applied(ready)
