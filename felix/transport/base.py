"""The seam every peer transport implements, and the counters it keeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from felix.proto.raft_messages import ForwardMessage, RaftMessage

PeerPayload = RaftMessage | ForwardMessage
QueueItem = PeerPayload | bytes  # bytes: an already-framed message (TCP direct sends)
Deliver = Callable[[int, PeerPayload], Awaitable[None]]
"""Hands one received message and its sender to the node.  Awaiting it is backpressure:
a node whose input channel is full slows its peers' connections down instead of
buffering without bound."""


@dataclass(slots=True)
class TransportStats:
    sent: int = 0
    sent_direct: int = 0  # written by the caller while the connection was idle (TCP)
    direct_cut_short: int = 0  # ...of which the socket took only a part
    received: int = 0
    dropped_queue_full: int = 0
    dropped_unknown_peer: int = 0
    protocol_errors: int = 0
    handshakes_refused: int = 0
    connects: int = 0
    inbound_connections: int = 0


class PeerQueues:
    """One bounded send queue per peer, shared by both transports: `offer` never blocks
    and drops on a full queue or an unknown peer (Raft retransmits)."""

    def __init__(self, peers: Iterable[int], queue_max: int, stats: TransportStats) -> None:
        self.queue_max = queue_max
        self.stats = stats
        self.senders: dict[int, trio.MemorySendChannel[QueueItem]] = {}
        self.receivers: dict[int, trio.MemoryReceiveChannel[QueueItem]] = {}
        for peer in peers:
            self.add(peer)

    def add(self, peer: int) -> None:
        send, receive = trio.open_memory_channel[QueueItem](self.queue_max)
        self.senders[peer] = send
        self.receivers[peer] = receive

    def offer(self, to: int, message: QueueItem) -> bool:
        queue = self.senders.get(to)
        if queue is None:
            self.stats.dropped_unknown_peer += 1
            return False
        try:
            queue.send_nowait(message)
        except trio.WouldBlock:
            self.stats.dropped_queue_full += 1
            return False
        return True


class PeerTransport(Protocol):
    node_id: int
    stats: TransportStats

    def send_nowait(self, to: int, message: PeerPayload) -> bool:
        """Queue ``message`` for peer ``to`` without blocking.

        False if it was dropped (unknown peer, or that peer's bounded queue is full):
        Raft retransmits, so dropping is always safe and never stalls the Raft loop.
        """
        ...

    def add_peer(self, peer: int, address: str) -> None:
        """Start talking to a node that joined (``address`` is ``host:port``)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started()`` once messages can flow."""
        ...
