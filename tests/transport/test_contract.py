"""One contract, two transports: TCP on loopback and the in-memory network."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from felix.proto.raft_messages import AppendEntries, Entry, EntryKind, RaftMessage, TimeoutNow
from felix.transport.base import PeerTransport, UnknownPeer
from felix.transport.memory import MemoryNetwork, MemoryTransport
from felix.transport.tcp import PeerAddress, TcpTransport, TcpTransportConfig

Received = tuple[int, RaftMessage]


@dataclass
class Node:
    node_id: int
    inbox_send: trio.MemorySendChannel[Received]
    inbox: trio.MemoryReceiveChannel[Received]
    transport: PeerTransport
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)

    async def next(self) -> Received:
        with trio.fail_after(10):
            return await self.inbox.receive()


class Harness:
    """Builds transports of one kind for nodes 1..n and runs/stops them."""

    def __init__(self, kind: str, nursery: trio.Nursery, n: int, queue_max: int) -> None:
        self.kind = kind
        self.nursery = nursery
        self.ids = set(range(1, n + 1))
        self.queue_max = queue_max
        self.network = MemoryNetwork(1)
        self.addresses: dict[int, PeerAddress] = {}
        self.nodes: dict[int, Node] = {}

    async def build(self, node_id: int) -> Node:
        send, receive = trio.open_memory_channel[Received](1000)

        async def deliver(sender: int, message: RaftMessage) -> None:
            await send.send((sender, message))

        transport: PeerTransport
        if self.kind == "memory":
            transport = MemoryTransport(
                self.network, node_id, self.ids, deliver, send_queue_max=self.queue_max
            )
        else:
            port = self.addresses[node_id].port if node_id in self.addresses else 0
            config = TcpTransportConfig(
                node_id=node_id,
                cluster_id="test",
                listen_host="127.0.0.1",
                listen_port=port,
                peers={p: PeerAddress("127.0.0.1", 1) for p in self.ids - {node_id}},
                send_queue_max=self.queue_max,
            )
            tcp = TcpTransport(config, deliver, random.Random(node_id))
            self.addresses[node_id] = PeerAddress("127.0.0.1", await tcp.bind())
            transport = tcp
        node = Node(node_id, send, receive, transport)
        self.nodes[node_id] = node
        return node

    def wire_addresses(self) -> None:
        for node in self.nodes.values():
            if isinstance(node.transport, TcpTransport):
                for peer, address in self.addresses.items():
                    if peer != node.node_id:
                        node.transport.set_peer_address(peer, address)

    async def start(self, node: Node) -> None:
        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with node.scope:
                    await node.transport.run(task_status=task_status)
            finally:
                node.stopped.set()

        await self.nursery.start(run)

    async def stop(self, node: Node) -> None:
        """Cancel the node's transport and wait until it has closed its sockets."""
        node.scope.cancel()
        await node.stopped.wait()

    async def start_all(self) -> None:
        for node_id in sorted(self.ids):
            await self.build(node_id)
        self.wire_addresses()
        for node in self.nodes.values():
            await self.start(node)


KINDS = ["memory", "tcp"]


@asynccontextmanager
async def cluster(kind: str, n: int = 3, queue_max: int = 1024) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        harness = Harness(kind, nursery, n, queue_max)
        yield harness
        nursery.cancel_scope.cancel()


def append(seq: int) -> AppendEntries:
    return AppendEntries(1, 1, seq, 1, (Entry(seq + 1, 1, EntryKind.NORMAL, b"x"),), seq, seq)


@pytest.mark.parametrize("kind", KINDS)
async def test_messages_arrive_in_order_with_their_sender(kind: str) -> None:
    async with cluster(kind) as h:
        await h.start_all()
        a, b = h.nodes[1], h.nodes[2]
        for seq in range(200):
            a.transport.send_nowait(2, append(seq))
        for seq in range(200):
            assert await b.next() == (1, append(seq))


@pytest.mark.parametrize("kind", KINDS)
async def test_order_holds_when_the_socket_fills_mid_message(kind: str) -> None:
    """Bursts of big messages overflow the socket buffer: TCP's direct sends are cut
    short and the rest queued; the pump drains, goes idle, and direct sends resume.
    Every message still arrives whole and in order."""
    big = b"y" * 60_000
    async with cluster(kind, queue_max=4096) as h:
        await h.start_all()
        a, b = h.nodes[1], h.nodes[2]
        seq = 0
        for burst in (1, 3, 150, 1, 2, 200, 1):
            sent = []
            for _ in range(burst):
                entry = Entry(seq + 1, 1, EntryKind.NORMAL, big)
                sent.append(AppendEntries(1, 1, seq, 1, (entry,), seq, seq))
                a.transport.send_nowait(2, sent[-1])
                seq += 1
            assert [await b.next() for _ in sent] == [(1, m) for m in sent]
        if kind == "tcp":
            stats = a.transport.stats
            assert stats.sent == seq and stats.sent_direct > 0 and stats.direct_cut_short > 0


@pytest.mark.parametrize("kind", KINDS)
async def test_both_directions_and_all_pairs(kind: str) -> None:
    async with cluster(kind) as h:
        await h.start_all()
        for src in h.ids:
            for dst in h.ids - {src}:
                h.nodes[src].transport.send_nowait(dst, TimeoutNow(src, src))
        for dst in h.ids:
            got = {await h.nodes[dst].next() for _ in range(len(h.ids) - 1)}
            assert got == {(src, TimeoutNow(src, src)) for src in h.ids - {dst}}


@pytest.mark.parametrize("kind", KINDS)
async def test_unknown_peer_raises_unknown_peer(kind: str) -> None:
    async with cluster(kind) as h:
        await h.start_all()
        transport = h.nodes[1].transport
        with pytest.raises(UnknownPeer) as raised:
            transport.send_nowait(99, TimeoutNow(1, 1))
        assert isinstance(raised.value, KeyError) and raised.value.node_id == 99
        assert str(raised.value) == "node 99 is not a peer of this transport"
        with pytest.raises(UnknownPeer):
            transport.send_nowait(1, TimeoutNow(1, 1))  # itself
        assert transport.stats.dropped_unknown_peer == 2
        assert transport.stats.dropped_queue_full == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_full_queue_raises_would_block_instead_of_blocking(kind: str) -> None:
    async with cluster(kind, queue_max=4) as h:
        for node_id in sorted(h.ids):
            await h.build(node_id)
        h.wire_addresses()
        a, b = h.nodes[1], h.nodes[2]
        for seq in range(4):
            a.transport.send_nowait(2, append(seq))
        for seq in range(4, 10):
            with pytest.raises(trio.WouldBlock):
                a.transport.send_nowait(2, append(seq))
        assert a.transport.stats.dropped_queue_full == 6
        assert a.transport.stats.dropped_unknown_peer == 0
        a.transport.send_nowait(3, append(0))  # one peer's full queue is not another's
        c = h.nodes[3]
        await h.start(b)
        await h.start(c)  # both receivers up before the sender's queues drain
        await h.start(a)
        for seq in range(4):  # what was queued is delivered once the transport runs
            assert await b.next() == (1, append(seq))
        assert await c.next() == (1, append(0))


@pytest.mark.parametrize("kind", KINDS)
async def test_peer_restart_reconnects(kind: str) -> None:
    async with cluster(kind) as h:
        await h.start_all()
        a, b = h.nodes[1], h.nodes[2]
        a.transport.send_nowait(2, TimeoutNow(1, 1))
        assert await b.next() == (1, TimeoutNow(1, 1))
        await h.stop(b)  # its listener is closed before the new one binds the port
        restarted = await h.build(2)  # same address, fresh transport
        h.wire_addresses()
        await h.start(restarted)
        # Messages sent while the peer was down or reconnecting may be lost (Raft
        # retransmits); keep offering until one arrives.
        with trio.fail_after(10):
            term = 2
            while True:
                a.transport.send_nowait(2, TimeoutNow(term, 1))
                with trio.move_on_after(0.05):
                    sender, message = await restarted.inbox.receive()
                    assert sender == 1 and isinstance(message, TimeoutNow)
                    break
                term += 1


def test_kinds_cover_both_implementations() -> None:
    factories: list[Callable[..., object]] = [MemoryTransport, TcpTransport]
    assert len(KINDS) == len(factories)


class HalfFirstSocket:
    """Wraps a link's socket: the first send takes only half the bytes (as a full
    socket buffer would), later sends take everything the real socket takes."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.calls = 0

    def send(self, data: bytes) -> int:
        self.calls += 1
        if self.calls == 1:
            return int(self.sock.send(data[: len(data) // 2]))
        return int(self.sock.send(data))

    def close(self) -> None:
        self.sock.close()


async def test_tcp_a_cut_short_direct_send_queues_everything_after_it() -> None:
    async with cluster("tcp") as h:
        await h.start_all()
        a, b = h.nodes[1], h.nodes[2]
        transport = a.transport
        assert isinstance(transport, TcpTransport)
        transport.send_nowait(2, append(0))  # connect, then wait until idle
        assert await b.next() == (1, append(0))
        with trio.fail_after(5):
            while not (2 in transport._links and transport._links[2].idle):
                await trio.sleep(0.001)
        link = transport._links[2]
        link.sock = HalfFirstSocket(link.sock)  # type: ignore[assignment]
        for seq in range(1, 4):  # the 2nd and 3rd must wait for the 1st's rest
            transport.send_nowait(2, append(seq))
        assert [await b.next() for _ in range(3)] == [(1, append(s)) for s in range(1, 4)]
        assert transport.stats.direct_cut_short == 1
