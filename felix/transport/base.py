"""The seam every peer transport implements, and the counters it keeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from felix.proto.raft_messages import ForwardMessage, JoinMessage, RaftMessage

PeerPayload = RaftMessage | ForwardMessage | JoinMessage
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
    dropped_not_member: int = 0  # inbound messages from a node that is not a peer
    dropped_by_version: int = 0  # a message type the link's protocol version lacks (TCP)
    protocol_errors: int = 0
    handshakes_refused: int = 0
    connects: int = 0
    inbound_connections: int = 0


class UnknownPeer(KeyError):
    """`PeerTransport.send_nowait` to a node id with no send queue here: not a peer this
    transport was configured with or told about (`PeerTransport.add_peer`), or itself."""

    def __init__(self, node_id: int) -> None:
        super().__init__(node_id)
        self.node_id = node_id

    def __str__(self) -> str:
        return f"node {self.node_id} is not a peer of this transport"


class PeerQueues:
    """One bounded send queue per peer, shared by both transports: `offer` never blocks;
    it raises `trio.WouldBlock` on a full queue and `UnknownPeer` for a node id without
    one, and counts either in the stats (Raft retransmits)."""

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

    def remove(self, peer: int) -> None:
        """Forget ``peer``'s queue (its pump is cancelled by the transport; closing the
        channel instead would end that pump with an error rather than a cancellation)."""
        self.senders.pop(peer, None)
        self.receivers.pop(peer, None)

    def offer(self, to: int, message: QueueItem) -> None:
        queue = self.senders.get(to)
        if queue is None:
            self.stats.dropped_unknown_peer += 1
            raise UnknownPeer(to)
        try:
            queue.send_nowait(message)
        except trio.WouldBlock:
            self.stats.dropped_queue_full += 1
            raise


class PeerTransport(Protocol):
    node_id: int
    stats: TransportStats

    def send_nowait(self, to: int, message: PeerPayload) -> None:
        """Queue ``message`` for peer ``to`` (or write it at once) without blocking.

        Raises `trio.WouldBlock` if that peer's bounded send queue is full, and
        `UnknownPeer` (a `KeyError`) if ``to`` has no queue here (never configured or
        added, or this node itself); either is counted in `stats`
        (``dropped_queue_full``, ``dropped_unknown_peer``) and the message is dropped.
        Raft retransmits (the Raft paper, §5.3), so a dropped message is always safe and
        the Raft loop never waits on a peer: callers catch both and move on.  Returning
        normally means queued, not delivered: a message queued to a peer whose
        connection then breaks may still be lost.
        """
        ...

    def add_peer(self, peer: int, address: str) -> None:
        """Start talking to a node that joined (``address`` is ``host:port``), or dial a
        known one at a new address from the next connection on."""
        ...

    def peer_ids(self) -> frozenset[int]:
        """The nodes this transport talks to (configured, or added since)."""
        ...

    def link_versions(self) -> dict[int, int]:
        """The protocol version of each live outbound link (docs/architecture.md §16)."""
        ...

    def remove_peer(self, peer: int) -> None:
        """Stop talking to a node that left the configuration: no more dialing, its
        queue dropped, and nothing but a `JoinRequest` accepted from it."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started()`` once messages can flow."""
        ...
