"""An in-memory peer network with seeded faults, for Trio-tier tests on MockClock.

Faults are data (`LinkFaults`) set per directed link or for the whole network: drop,
duplicate, delay (with jitter, which also reorders), and partitions (a blocked directed
link; block both directions for a symmetric one).  Every directed link draws from its own
`random.Random` derived from the network's seed, so a link's fate sequence does not
depend on how Trio interleaves the senders; delays use `trio.sleep`, so on
``MockClock(autojump_threshold=0)`` a run replays exactly.

Messages are passed through the real codec by default, so the memory network also
proves every message the core sends survives the wire.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import trio

from felix.proto.raft_messages import PEER
from felix.transport.base import Deliver, PeerPayload, PeerQueues, QueueItem, TransportStats


@dataclass(frozen=True, slots=True)
class LinkFaults:
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    delay_s_min: float = 0.0
    delay_s_max: float = 0.0


NO_FAULTS = LinkFaults()


class MemoryNetwork:
    def __init__(self, seed: int, *, through_codec: bool = True) -> None:
        self._seed = seed
        self._link_rngs: dict[tuple[int, int], random.Random] = {}
        self._through_codec = through_codec
        self._endpoints: dict[int, Deliver] = {}
        self._blocked: set[tuple[int, int]] = set()
        self._link_faults: dict[tuple[int, int], LinkFaults] = {}
        self.default_faults = NO_FAULTS
        self.delivered = 0
        self.dropped = 0

    # --- fault control -------------------------------------------------------------

    def block(self, src: int, dst: int) -> None:
        """One-way partition: nothing from ``src`` reaches ``dst``."""
        self._blocked.add((src, dst))

    def partition(self, group_a: set[int], group_b: set[int]) -> None:
        """Symmetric partition between two groups."""
        for a in group_a:
            for b in group_b:
                self.block(a, b)
                self.block(b, a)

    def isolate(self, node: int, others: set[int]) -> None:
        self.partition({node}, others - {node})

    def heal(self) -> None:
        self._blocked.clear()
        self._link_faults.clear()
        self.default_faults = NO_FAULTS

    def set_link_faults(self, src: int, dst: int, faults: LinkFaults) -> None:
        self._link_faults[(src, dst)] = faults

    # --- plumbing ------------------------------------------------------------------

    def attach(self, node_id: int, deliver: Deliver) -> None:
        self._endpoints[node_id] = deliver

    def detach(self, node_id: int, deliver: Deliver) -> None:
        """A stopped node: messages to it vanish, like packets to a dead host.  Only the
        endpoint that attached is removed, so a restarted node is never detached by the
        old incarnation's cleanup."""
        if self._endpoints.get(node_id) is deliver:
            del self._endpoints[node_id]

    def fate(self, src: int, dst: int) -> tuple[int, float]:
        """How many copies of a message from ``src`` to ``dst`` arrive, and after what delay."""
        if (src, dst) in self._blocked:
            return 0, 0.0
        faults = self._link_faults.get((src, dst), self.default_faults)
        rng = self._link_rngs.get((src, dst))
        if rng is None:
            rng = self._link_rngs[(src, dst)] = random.Random(f"{self._seed}:{src}->{dst}")
        if faults.drop_rate and rng.random() < faults.drop_rate:
            return 0, 0.0
        copies = 2 if faults.duplicate_rate and rng.random() < faults.duplicate_rate else 1
        delay = 0.0
        if faults.delay_s_max:
            delay = rng.uniform(faults.delay_s_min, faults.delay_s_max)
        return copies, delay

    def wire(self, message: PeerPayload) -> PeerPayload:
        if not self._through_codec:
            return message
        decoded: PeerPayload = PEER.decode(PEER.encode(message))
        return decoded

    async def deliver(self, src: int, dst: int, message: PeerPayload) -> None:
        if (src, dst) in self._blocked:  # a partition that started while in flight
            self.dropped += 1
            return
        endpoint = self._endpoints.get(dst)
        if endpoint is None:
            self.dropped += 1
            return
        self.delivered += 1
        await endpoint(src, message)


class MemoryTransport:
    """One node's view of a `MemoryNetwork`; same contract as the TCP transport."""

    def __init__(
        self,
        network: MemoryNetwork,
        node_id: int,
        peers: set[int],
        deliver: Deliver,
        *,
        send_queue_max: int = 1024,
    ) -> None:
        self.node_id = node_id
        self.stats = TransportStats()
        self._network = network
        self._deliver = deliver
        self._queues = PeerQueues(peers - {node_id}, send_queue_max, self.stats)

    def send_nowait(self, to: int, message: PeerPayload) -> None:
        """See `PeerTransport.send_nowait`."""
        self._queues.offer(to, message)

    def add_peer(self, peer: int, address: str) -> None:
        """Every node of the memory network is reachable by id; only a queue is needed."""
        if peer != self.node_id and peer not in self._queues.senders:
            raise KeyError(f"node {peer} is not on this memory network's id list")

    def peer_ids(self) -> frozenset[int]:
        return frozenset(self._queues.senders)

    def link_versions(self) -> dict[int, int]:
        return {}  # messages travel as objects: no wire, no version

    def remove_peer(self, peer: int) -> None:
        """The memory network keeps every id reachable (the simulation's faults decide who
        hears whom); a removed member's messages reach the core, which ignores them."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        endpoint = self._receive
        try:
            async with trio.open_nursery() as nursery:
                self._network.attach(self.node_id, endpoint)
                for peer, receiver in self._queues.receivers.items():
                    nursery.start_soon(self._pump, peer, receiver, nursery)
                task_status.started()
        finally:
            self._network.detach(self.node_id, endpoint)

    async def _receive(self, sender: int, message: PeerPayload) -> None:
        self.stats.received += 1
        await self._deliver(sender, message)

    async def _pump(
        self,
        peer: int,
        receiver: trio.MemoryReceiveChannel[QueueItem],
        nursery: trio.Nursery,
    ) -> None:
        network = self._network
        async for message in receiver:
            assert not isinstance(message, bytes)  # only TCP queues pre-framed bytes
            copies, delay = network.fate(self.node_id, peer)
            if copies == 0:
                network.dropped += 1
                continue
            self.stats.sent += 1
            wire = network.wire(message)
            for _ in range(copies):
                if delay:
                    nursery.start_soon(self._later, delay, peer, wire)
                else:
                    await network.deliver(self.node_id, peer, wire)

    async def _later(self, delay: float, peer: int, message: PeerPayload) -> None:
        await trio.sleep(delay)
        await self._network.deliver(self.node_id, peer, message)
