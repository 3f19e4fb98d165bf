"""A peer that comes back is dialed at once, not after the back-off grown while it was
away: a restarted follower must hear from the leader before its election timeout, or it
starts a (needless) pre-vote and is not ready until the leader's next attempt."""

from __future__ import annotations

import logging
import random
import socket

import pytest
import trio

from felix.proto.frames import encode_frame
from felix.proto.raft_messages import PEER, HelloAck, RaftMessage, TimeoutNow
from felix.security.tls import TlsSession
from felix.transport.tcp import PeerAddress, TcpTransport, TcpTransportConfig
from tests.transport.test_tcp_edges import closed_by_server, hello

BACKOFF_S = 600.0  # far longer than the test: only the wake-up can make it dial again


async def _ignore(sender: int, message: RaftMessage) -> None:
    pass


async def test_a_peer_that_dials_in_is_dialed_back_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="felix.transport")
    away = socket.socket()  # peer 2's port, bound but not listening: connections refused
    away.bind(("127.0.0.1", 0))
    port = away.getsockname()[1]
    config = TcpTransportConfig(
        node_id=1, cluster_id="prod", listen_host="127.0.0.1", listen_port=0,
        peers={2: PeerAddress("127.0.0.1", port)}, backoff_s_min=BACKOFF_S,
        backoff_s_max=BACKOFF_S,
    )  # fmt: skip
    transport = TcpTransport(config, _ignore, random.Random(0))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        with trio.fail_after(10):
            while "peer 2 at" not in caplog.text:  # the first dial failed: backing off
                await trio.sleep(0.01)
        away.close()
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")  # peer 2 is back
        inbound = await trio.open_tcp_stream("127.0.0.1", transport.listen_port)
        await inbound.send_all(hello(node_id=2))  # ...and dials node 1
        with trio.fail_after(10):
            dialed = await listeners[0].accept()  # node 1 dials back without waiting
            assert await dialed.receive_some(4096)  # its Hello
        await dialed.aclose()
        await inbound.aclose()
        for listener in listeners:
            await listener.aclose()
        nursery.cancel_scope.cancel()


async def test_a_link_ends_when_the_peer_closes_it_not_at_the_next_send() -> None:
    """A follower rarely sends to a non-leader peer: when that peer restarts, the old
    outbound link must end (and be redialed, at a freshly negotiated version) at once."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    config = TcpTransportConfig(
        node_id=1, cluster_id="prod", listen_host="127.0.0.1", listen_port=0,
        peers={2: PeerAddress("127.0.0.1", port)}, backoff_s_min=0.01, backoff_s_max=0.01,
    )  # fmt: skip
    transport = TcpTransport(config, _ignore, random.Random(0))
    ack = encode_frame(PEER.encode(HelloAck(1)))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        with trio.fail_after(10):
            first = await listeners[0].accept()
            assert await first.receive_some(4096)  # its Hello
            await first.send_all(ack)
            while transport.link_versions() != {2: 1}:
                await trio.sleep(0.01)
            await first.aclose()  # peer 2 goes away; node 1 has nothing to send it
            while transport.link_versions():
                await trio.sleep(0.01)
            second = await listeners[0].accept()  # ...and it is dialed again
            assert await second.receive_some(4096)
        assert transport.stats.sent == 0
        await second.aclose()
        for listener in listeners:
            await listener.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("added_back", [False, True])
async def test_a_peer_removed_as_its_handshake_completes_is_let_go(added_back: bool) -> None:
    """The leader removes a voter (`remove_peer`: a wiped member asking to rejoin) just
    as the dialer's handshake with it has finished: that task runs on until its next
    checkpoint with its cancel pending and the peer's queue gone.  It must close the
    connection and end -- raising there took the whole node down -- while the other
    peer's link carries on.  Added back at once (as a learner), the peer is dialed
    afresh by a new dialer, and the old one takes nothing over."""
    listeners = {n: (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] for n in (2, 3)}
    address = {n: f"127.0.0.1:{lis.socket.getsockname()[1]}" for n, lis in listeners.items()}
    config = TcpTransportConfig(
        node_id=1, cluster_id="prod", listen_host="127.0.0.1", listen_port=0,
        peers={n: PeerAddress("127.0.0.1", lis.socket.getsockname()[1])
               for n, lis in listeners.items()},
        backoff_s_min=0.01, backoff_s_max=0.01,
    )  # fmt: skip
    transport = TcpTransport(config, _ignore, random.Random(0))
    handshake = transport._hello_outbound  # white box: the moment the race needs
    removed = False

    async def removed_as_it_completes(
        peer: int, stream: trio.SocketStream, tls: TlsSession | None
    ) -> int:
        nonlocal removed
        version = await handshake(peer, stream, tls)
        if peer == 2 and not removed:
            removed = True
            transport.remove_peer(2)  # before this task's next checkpoint
            if added_back:
                transport.add_peer(2, address[2])
        return version

    transport._hello_outbound = removed_as_it_completes  # type: ignore[method-assign]
    ack = encode_frame(PEER.encode(HelloAck(1)))
    expected = {2: 1, 3: 1} if added_back else {3: 1}
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        with trio.fail_after(10):
            accepted = {}
            for n, listener in listeners.items():
                accepted[n] = await listener.accept()
                assert await accepted[n].receive_some(4096)  # its Hello
                await accepted[n].send_all(ack)
            assert await closed_by_server(accepted[2])  # let go, not a crash
            if added_back:
                accepted[2] = await listeners[2].accept()  # the new dialer's connection
                assert await accepted[2].receive_some(4096)
                await accepted[2].send_all(ack)
            while transport.link_versions() != expected:
                await trio.sleep(0.01)
        assert transport.peer_ids() == set(expected)
        for n in expected:
            transport.send_nowait(n, TimeoutNow(4, 1))
            with trio.fail_after(10):
                assert await accepted[n].receive_some(4096)  # each live link carries it
        for stream in accepted.values():
            await stream.aclose()
        for listener in listeners.values():
            await listener.aclose()
        nursery.cancel_scope.cancel()
