"""Bad input at the TCP edge: each gets a clear log line, and the node keeps serving."""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from felix.proto.frames import encode_frame
from felix.proto.raft_messages import PEER, JoinRequest, PeerHello, RaftMessage, TimeoutNow
from felix.transport.base import UnknownPeer
from felix.transport.tcp import PeerAddress, TcpTransport, TcpTransportConfig


async def serving(
    nursery: trio.Nursery, **overrides: object
) -> tuple[TcpTransport, trio.MemoryReceiveChannel[tuple[int, RaftMessage]]]:
    send, receive = trio.open_memory_channel[tuple[int, RaftMessage]](100)

    async def deliver(sender: int, message: RaftMessage) -> None:
        await send.send((sender, message))

    fields: dict[str, object] = {
        "node_id": 1,
        "cluster_id": "prod",
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "peers": {2: PeerAddress("127.0.0.1", 9)},  # never dialed successfully; unused
    }
    fields.update(overrides)
    transport = TcpTransport(TcpTransportConfig(**fields), deliver, random.Random(0))  # type: ignore[arg-type]
    await nursery.start(transport.run)
    return transport, receive


def hello(cluster_id: str = "prod", node_id: int = 2, version: int = 1) -> bytes:
    return encode_frame(PEER.encode(PeerHello(cluster_id, node_id, version, version)))


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.fail_after(10):
        try:
            while await stream.receive_some(1000):
                pass
        except trio.BrokenResourceError:
            pass
    return True


async def test_good_peer_is_served() -> None:
    async with trio.open_nursery() as nursery:
        transport, inbox = await serving(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        await stream.send_all(hello() + encode_frame(PEER.encode(TimeoutNow(4, 2))))
        with trio.fail_after(10):
            assert await inbox.receive() == (2, TimeoutNow(4, 2))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("first_frame", "log_text"),
    [
        (hello(cluster_id="staging"), "belongs to cluster 'staging', this is 'prod'"),
        (hello(version=9), "node 2 speaks [9, 9], node 1 speaks [1, 1]"),
        (encode_frame(PEER.encode(TimeoutNow(1, 2))), "expected Hello first, got TimeoutNow"),
    ],
)
async def test_handshake_refused_with_a_clear_log_line(
    first_frame: bytes, log_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="felix.transport")
    async with trio.open_nursery() as nursery:
        transport, inbox = await serving(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        await stream.send_all(first_frame)
        assert await closed_by_server(stream)
        assert transport.stats.handshakes_refused == 1
        assert log_text in caplog.text
        assert "refused peer connection from 127.0.0.1" in caplog.text
        # ...and the node keeps serving good peers.
        good = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        await good.send_all(hello() + encode_frame(PEER.encode(TimeoutNow(5, 2))))
        with trio.fail_after(10):
            assert await inbox.receive() == (2, TimeoutNow(5, 2))
        nursery.cancel_scope.cancel()


async def test_a_non_member_may_only_ask_to_join() -> None:
    """Node 7 (not a peer: about to join) is heard only for its JoinRequest; node 2,
    once removed from the configuration, is treated the same way."""
    async with trio.open_nursery() as nursery:
        transport, inbox = await serving(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        join = JoinRequest(7, "127.0.0.1:7007", 0)
        await stream.send_all(
            hello(node_id=7)
            + encode_frame(PEER.encode(TimeoutNow(4, 7)))
            + encode_frame(PEER.encode(join))
        )
        with trio.fail_after(10):
            assert await inbox.receive() == (7, join)
        assert transport.stats.dropped_not_member == 1
        transport.remove_peer(2)
        removed = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        rejoin = JoinRequest(2, "127.0.0.1:7002", 40)
        await removed.send_all(
            hello(node_id=2)
            + encode_frame(PEER.encode(TimeoutNow(5, 2)))
            + encode_frame(PEER.encode(rejoin))
        )
        with trio.fail_after(10):
            assert await inbox.receive() == (2, rejoin)
        assert transport.stats.dropped_not_member == 2
        with pytest.raises(UnknownPeer):
            transport.send_nowait(2, TimeoutNow(5, 1))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("garbage", "log_text"),
    [
        (b"\x00\x00\x00\x03\xff\xff\xff", "invalid CBOR"),
        ((10**7).to_bytes(4, "big"), "frame_bytes_max"),
        (encode_frame(b"\xa1\x64type\x64Nope"), "unknown peer message type 'Nope'"),
        (hello(), "second Hello on one connection"),
    ],
)
async def test_garbage_after_handshake_closes_only_that_connection(
    garbage: bytes, log_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="felix.transport")
    async with trio.open_nursery() as nursery:
        transport, inbox = await serving(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        await stream.send_all(hello() + garbage)
        assert await closed_by_server(stream)
        assert transport.stats.protocol_errors == 1
        assert log_text in caplog.text
        good = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        await good.send_all(hello() + encode_frame(PEER.encode(TimeoutNow(6, 2))))
        with trio.fail_after(10):
            assert await inbox.receive() == (2, TimeoutNow(6, 2))
        nursery.cancel_scope.cancel()


async def test_silent_connection_is_closed_after_the_handshake_timeout(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="felix.transport")
    async with trio.open_nursery() as nursery:
        transport, _ = await serving(nursery, handshake_timeout_s=5.0)
        stream = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        while transport.stats.inbound_connections == 0:
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(4.9)
        await trio.testing.wait_all_tasks_blocked()
        assert "no Hello" not in caplog.text
        mock_clock.jump(0.2)
        assert await closed_by_server(stream)
        assert "no handshake and Hello within 5.0 s" in caplog.text
        nursery.cancel_scope.cancel()


def test_a_node_cannot_list_itself_as_peer() -> None:
    config = TcpTransportConfig(1, "c", "127.0.0.1", 0, {1: PeerAddress("127.0.0.1", 1)})
    with pytest.raises(ValueError, match="lists itself"):
        TcpTransport(config, _never, random.Random(0))


async def _never(sender: int, message: RaftMessage) -> None:
    raise AssertionError("not expected")
