"""Protocol versions between real TCP transports over mutual TLS: a node running the
test-only next version (2) and one that is not talk version 1 both ways; two next
nodes talk 2 (the synthetic field arrives); no common version is refused on both
sides naming both ranges; a message type a link's version lacks is dropped, logged."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from felix.proto.frames import CLOSED, FrameDecoder, encode_frame
from felix.proto.raft_messages import (
    PEER,
    AppendEntries,
    HelloAck,
    HelloRefused,
    PeerHello,
    RaftMessage,
    TimeoutNow,
)
from felix.proto.versions import VersionRange
from felix.transport.tcp import PeerAddress, PeerTls, TcpTransport, TcpTransportConfig
from tests.transport.test_tcp_edges import closed_by_server, serving
from tests.transport.test_tcp_tls import CLUSTER, peer_tls, pki

__all__ = ["pki"]  # the fixture

V1, NEXT = VersionRange(1, 1), VersionRange(1, 2)


class Node:
    def __init__(
        self, node_id: int, tls: PeerTls, peers: dict[int, PeerAddress], versions: VersionRange
    ) -> None:
        self.inbox_send, self.inbox = trio.open_memory_channel[tuple[int, RaftMessage]](100)

        async def deliver(sender: int, message: RaftMessage) -> None:
            await self.inbox_send.send((sender, message))

        config = TcpTransportConfig(
            node_id, CLUSTER, "127.0.0.1", 0, peers, tls=tls, versions=versions
        )
        self.transport = TcpTransport(config, deliver, random.Random(node_id))


async def start_pair(
    nursery: trio.Nursery, pki: dict[str, Any], versions1: VersionRange, versions2: VersionRange
) -> tuple[Node, Node]:
    ca = pki["ca"]
    one = Node(1, peer_tls(ca, pki[1]), {2: PeerAddress("127.0.0.1", 9)}, versions1)
    port1 = await one.transport.bind()
    two = Node(2, peer_tls(ca, pki[2]), {1: PeerAddress("127.0.0.1", port1)}, versions2)
    port2 = await two.transport.bind()
    one.transport.set_peer_address(2, PeerAddress("127.0.0.1", port2))
    await nursery.start(one.transport.run)
    await nursery.start(two.transport.run)
    return one, two


async def linked(one: Node, two: Node) -> tuple[int | None, int | None]:
    """Both links' versions, once both are up (bounded polling of a condition)."""
    with trio.fail_after(10):
        while one.transport.peer_version(2) is None or two.transport.peer_version(1) is None:
            await trio.sleep(0.01)
    return one.transport.peer_version(2), two.transport.peer_version(1)


def append(leader: int, seq: int, probe: int) -> AppendEntries:
    return AppendEntries(3, leader, 0, 0, (), 0, seq, next_probe=probe)


async def exchange(one: Node, two: Node) -> tuple[list[Any], list[Any]]:
    """AppendEntries with the synthetic field set, both ways, and what arrived."""
    for seq in range(1, 4):
        one.transport.send_nowait(2, append(1, seq, probe=7))
        two.transport.send_nowait(1, append(2, seq, probe=8))
    with trio.fail_after(10):
        got1 = [await one.inbox.receive() for _ in range(3)]
        got2 = [await two.inbox.receive() for _ in range(3)]
    return got1, got2


async def test_a_next_node_and_a_baseline_node_talk_version_1(pki: dict[str, Any]) -> None:
    async with trio.open_nursery() as nursery:
        one, two = await start_pair(nursery, pki, NEXT, V1)
        assert await linked(one, two) == (1, 1)
        got1, got2 = await exchange(one, two)
        # The v1 links left the v2 field out (the decoders would refuse it): default 0.
        assert got1 == [(2, append(2, seq, probe=0)) for seq in range(1, 4)]
        assert got2 == [(1, append(1, seq, probe=0)) for seq in range(1, 4)]
        assert one.transport.stats.protocol_errors == two.transport.stats.protocol_errors == 0
        nursery.cancel_scope.cancel()


async def test_two_next_nodes_talk_version_2(pki: dict[str, Any]) -> None:
    async with trio.open_nursery() as nursery:
        one, two = await start_pair(nursery, pki, NEXT, NEXT)
        assert await linked(one, two) == (2, 2)
        got1, got2 = await exchange(one, two)
        assert got1 == [(2, append(2, seq, probe=8)) for seq in range(1, 4)]
        assert got2 == [(1, append(1, seq, probe=7)) for seq in range(1, 4)]
        nursery.cancel_scope.cancel()


async def test_no_common_version_is_refused_on_both_sides(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "felix.transport")
    async with trio.open_nursery() as nursery:
        one, two = await start_pair(nursery, pki, VersionRange(2, 2), V1)
        with trio.fail_after(10):  # each side's listener refuses, each dialer hears why
            while one.transport.stats.handshakes_refused < 2:
                await trio.sleep(0.01)
            while two.transport.stats.handshakes_refused < 2:
                await trio.sleep(0.01)
        assert one.transport.peer_version(2) is None
        assert two.transport.peer_version(1) is None
        text = caplog.text
        # node 1's listener refusing node 2, and node 2's dialer told so:
        assert "no common protocol version: node 2 speaks [1, 1], node 1 speaks [2, 2]" in text
        assert "refused the link to peer 1 at 127.0.0.1:" in text
        assert "it refused the connection: no common protocol version: node 2 speaks" in text
        # ...and the other direction:
        assert "no common protocol version: node 1 speaks [2, 2], node 2 speaks [1, 1]" in text
        nursery.cancel_scope.cancel()


@pytest.fixture
def timeout_now_from_v2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend TimeoutNow were added in version 2 (no real message type is, yet)."""
    monkeypatch.setitem(PEER._since, "TimeoutNow", 2)
    PEER._tables.clear()
    yield
    monkeypatch.undo()
    PEER._tables.clear()


@pytest.mark.usefixtures("timeout_now_from_v2")
async def test_a_message_type_the_link_lacks_is_dropped_with_a_log_line(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "felix.transport")
    async with trio.open_nursery() as nursery:
        one, two = await start_pair(nursery, pki, NEXT, V1)
        one.transport.send_nowait(2, TimeoutNow(3, 1))  # queued: framed by the pump
        one.transport.send_nowait(2, append(1, 1, probe=0))
        assert await linked(one, two) == (1, 1)
        with trio.fail_after(10):
            assert await two.inbox.receive() == (1, append(1, 1, probe=0))
        one.transport.send_nowait(2, TimeoutNow(3, 1))  # direct or queued: dropped either way
        one.transport.send_nowait(2, append(1, 2, probe=0))
        with trio.fail_after(10):
            assert await two.inbox.receive() == (1, append(1, 2, probe=0))
        assert one.transport.stats.dropped_by_version == 2
        dropped = "not sending to peer 2: TimeoutNow needs protocol version 2, this connection"
        assert caplog.text.count(dropped) == 1  # said once, counted twice
        assert two.transport.stats.protocol_errors == 0
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("timeout_now_from_v2")
async def test_a_v2_link_carries_the_v2_message_type(pki: dict[str, Any]) -> None:
    async with trio.open_nursery() as nursery:
        one, two = await start_pair(nursery, pki, NEXT, NEXT)
        assert await linked(one, two) == (2, 2)
        one.transport.send_nowait(2, TimeoutNow(3, 1))
        with trio.fail_after(10):
            assert await two.inbox.receive() == (1, TimeoutNow(3, 1))
        assert one.transport.stats.dropped_by_version == 0
        nursery.cancel_scope.cancel()


# --- the listener's answer, seen by a hand-written dialer (plaintext) --------------------


async def answer(stream: trio.SocketStream) -> Any:
    """The one frame the listener writes, decoded (None: it closed without one)."""
    decoder = FrameDecoder()
    with trio.fail_after(10):
        while True:
            frame = decoder.next_frame()
            if isinstance(frame, bytes):
                return PEER.decode(frame)
            if frame is CLOSED:
                return None
            decoder.feed(await stream.receive_some(1000))


def hello(low: int, high: int) -> bytes:
    return encode_frame(PEER.encode(PeerHello("prod", 2, low, high)))


@pytest.mark.parametrize(
    ("ours", "low", "high", "chosen"), [(V1, 1, 1, 1), (V1, 1, 5, 1), (NEXT, 1, 5, 2)]
)
async def test_the_listener_answers_the_version_it_chose(
    ours: VersionRange, low: int, high: int, chosen: int
) -> None:
    async with trio.open_nursery() as nursery:
        transport, inbox = await serving(nursery, versions=ours)
        stream = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        await stream.send_all(hello(low, high))
        assert await answer(stream) == HelloAck(chosen)
        message = append(2, 1, probe=5)
        await stream.send_all(encode_frame(PEER.encode(message, chosen)))
        with trio.fail_after(10):
            assert await inbox.receive() == (2, append(2, 1, probe=5 if chosen == 2 else 0))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("low", "high", "reason"),
    [
        (3, 4, "no common protocol version: node 2 speaks [3, 4], node 1 speaks [1, 1]"),
        (2, 1, "node 2 sent bad protocol version range [2, 1]"),
    ],
)
async def test_the_listener_says_why_it_refuses(
    low: int, high: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="felix.transport")
    async with trio.open_nursery() as nursery:
        transport, _ = await serving(nursery, versions=V1)
        stream = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        await stream.send_all(hello(low, high))
        assert await answer(stream) == HelloRefused(reason)
        assert await closed_by_server(stream)  # after counting and logging
        assert transport.stats.handshakes_refused == 1
        assert reason in caplog.text
        nursery.cancel_scope.cancel()


async def test_a_dialer_refuses_a_version_outside_its_range(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A listener answering a version the dialer never offered gets no messages."""
    caplog.set_level(logging.WARNING, logger="felix.transport")
    hellos: list[Any] = []

    async def listener(stream: trio.SocketStream) -> None:
        hellos.append(await answer(stream))
        await stream.send_all(encode_frame(PEER.encode(HelloAck(2))))
        await stream.receive_some(1000)  # until the dialer closes

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, listener, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        transport, _ = await serving(nursery, peers={2: PeerAddress("127.0.0.1", port)})
        with trio.fail_after(10):
            while transport.stats.handshakes_refused == 0:
                await trio.sleep(0.01)
        assert hellos[0] == PeerHello("prod", 1, 1, 1)
        assert "it chose protocol version 2, this node speaks [1, 1]" in caplog.text
        assert transport.peer_version(2) is None
        nursery.cancel_scope.cancel()
