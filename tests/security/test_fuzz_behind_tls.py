"""Hostile bytes behind TLS: the decoders still raise nothing but `ProtocolError`, a
tampered record is refused rather than decrypted into something else, and on real
sockets the peer port and the client port close only the offending connection, say
why, and keep serving everyone else.

The in-memory properties run on one handshaken `TlsSession` pair (Hypothesis); the
socket tests replay seeded mutations, so a failure names the payload that caused it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    ClientHello,
    Deltas,
    Error,
    ErrorCode,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.proto.errors import ProtocolError
from felix.proto.frames import CLOSED, NEED_DATA, FrameDecoder, encode_frame
from felix.proto.raft_messages import PEER, PeerHello, TimeoutNow
from felix.proto.ws_frames import client_frame
from felix.security.certs import init_ca, issue
from felix.security.contexts import client_context
from felix.security.tls import TlsSession
from felix.transport.tcp import PeerAddress
from tests.security.tls_harness import Pki
from tests.server.test_client_tls import ADMIN, serving
from tests.transport.test_tcp_tls import CLUSTER, Node, peer_tls

FRAME_BYTES_MAX = 64 * 1024


# --- in memory: one session pair, many examples -------------------------------------


async def _handshaken(pki: Pki) -> tuple[TlsSession, TlsSession]:
    near, far = trio.testing.memory_stream_pair()
    client = TlsSession(pki.client(pki.node2), server_side=False)
    server = TlsSession(pki.server(), server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.handshake, near)
        nursery.start_soon(server.handshake, far)
    return client, server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The peer tests' cluster CA with nodes 1 and 2 (another CA is not needed here)."""
    main = tmp_path_factory.mktemp("fuzz-tls")
    init_ca(main, CLUSTER)
    node1, node2 = issue(main, "node", 1), issue(main, "node", 2)
    return Pki(main, main, node1, node2, node2)


@pytest.fixture(scope="module")
def session_pair(pki: Pki) -> tuple[TlsSession, TlsSession]:
    return trio.run(_handshaken, pki)


def _pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` in the pieces a socket might deliver it in."""
    at = 0
    for cut in cuts:
        if at >= len(data):
            break
        yield data[at : at + cut]
        at += cut
    if at < len(data):
        yield data[at:]


def _decode_all(plain: bytes) -> int:
    """Frames and messages out of ``plain`` as the peer port reads them; every message
    is also tried as a client message.  Returns how many frames decoded."""
    decoder = FrameDecoder(FRAME_BYTES_MAX)
    decoder.feed(plain)
    decoder.feed(b"")  # the end of the stream
    frames = 0
    while True:
        frame = decoder.next_frame()
        if not isinstance(frame, bytes):
            assert frame is CLOSED or frame is NEED_DATA
            return frames
        frames += 1
        for registry in (PEER, CLIENT_TO_SERVER):
            with contextlib.suppress(ProtocolError):
                registry.decode(frame)


VALID = [encode_frame(PEER.encode(m)) for m in (PeerHello(CLUSTER, 2, 1, 1), TimeoutNow(3, 2))]


def _mutated(raw: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(raw)
    for at, value in flips:
        if out:
            out[at % len(out)] = value
    return bytes(out)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunks=st.lists(
        st.binary(max_size=300)
        | st.builds(
            _mutated,
            st.sampled_from(VALID),
            st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(1, 80), max_size=20),
)
def test_fuzzed_plaintext_behind_tls_raises_only_protocol_error(
    session_pair: tuple[TlsSession, TlsSession], chunks: list[bytes], cuts: list[int]
) -> None:
    """Whatever a peer with a valid certificate sends, delivered in any pieces: TLS hands
    over exactly those bytes, and decoding them raises nothing but ProtocolError."""
    client, server = session_pair
    sent = b"".join(chunks)
    wire = b"".join(client.encrypt(chunk) for chunk in chunks if chunk)
    plain = b"".join(server.decrypt(piece) for piece in _pieces(wire, cuts))
    assert plain == sent
    with contextlib.suppress(ProtocolError):
        _decode_all(plain)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.binary(min_size=1, max_size=200),
    at=st.integers(0, 10_000),
    xor=st.integers(1, 255),
)
def test_a_tampered_record_is_refused_never_decrypted_into_other_bytes(
    pki: Pki, payload: bytes, at: int, xor: int
) -> None:
    """One flipped bit anywhere in a record: the receiver raises `ssl.SSLError` (the
    connection is then closed) and never returns plaintext that was not sent."""
    client, server = trio.run(_handshaken, pki)
    wire = bytearray(client.encrypt(payload))
    wire[at % len(wire)] ^= xor
    try:
        plain = server.decrypt(bytes(wire))
    except ssl.SSLError:
        return
    assert plain == b""  # a flip in the length field leaves the record incomplete ...
    with pytest.raises(ssl.SSLError):  # ... until more bytes arrive: then the tag fails
        server.decrypt(client.encrypt(bytes(70_000)))  # more than any record length


# --- real sockets: the peer port -------------------------------------------------------


def _hostile_peer_payloads(seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    hello = VALID[0]
    cases = [
        ("random bytes", rng.randbytes(300)),
        ("a length prefix over the frame bound", (1 << 31).to_bytes(4, "big") + b"x" * 16),
        ("a frame of garbage CBOR", encode_frame(rng.randbytes(64))),
        ("a Hello, then garbage", hello + rng.randbytes(100)),
    ]
    for n in range(6):
        cases.append(
            (f"a mutated Hello #{n}", _mutated(hello, [(rng.randrange(64), rng.randrange(256))]))
        )
    return cases


async def _dial_tls(port: int, context: ssl.SSLContext) -> tuple[trio.SocketStream, TlsSession]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    session = TlsSession(context, server_side=False)
    with trio.fail_after(10):
        await session.handshake(stream)
    return stream, session


async def _closed_by_the_other_side(stream: trio.SocketStream) -> None:
    with trio.fail_after(10):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_peer_port_closes_a_hostile_peer_and_keeps_serving(
    pki: Pki, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    """A peer with a valid node certificate sends garbage inside TLS: that link is
    closed and logged; then node 2 itself connects and its messages arrive."""
    caplog.set_level(logging.WARNING, "felix.transport")
    async with trio.open_nursery() as nursery:
        one = Node(1, peer_tls(pki.ca, pki.node1), {2: PeerAddress("127.0.0.1", 9)})
        await nursery.start(one.transport.run)
        port = one.transport.listen_port
        for what, payload in _hostile_peer_payloads(seed):
            before = one.transport.stats.protocol_errors + one.transport.stats.handshakes_refused
            stream, session = await _dial_tls(port, pki.client(pki.node2))
            with contextlib.suppress(trio.BrokenResourceError):  # it may close first
                await stream.send_all(session.encrypt(payload))
                await stream.send_eof()
            await _closed_by_the_other_side(stream)
            await stream.aclose()
            after = one.transport.stats.protocol_errors + one.transport.stats.handshakes_refused
            assert after == before + 1, what
        assert "protocol error" in caplog.text
        two = Node(2, peer_tls(pki.ca, pki.node2), {1: PeerAddress("127.0.0.1", port)})
        await nursery.start(two.transport.run)
        with trio.fail_after(10):
            while True:  # offered until the link is up (a send before it may be dropped)
                two.transport.send_nowait(1, TimeoutNow(5, 2))
                with trio.move_on_after(0.05):
                    assert await one.inbox.receive() == (2, TimeoutNow(5, 2))
                    break
        nursery.cancel_scope.cancel()


async def test_garbage_inside_the_peer_handshake_is_refused(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's ClientHello is real, then its second flight is random bytes in a
    handshake record: refused with a reason, the node unharmed."""
    caplog.set_level(logging.WARNING, "felix.transport")
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        one = Node(1, peer_tls(pki.ca, pki.node1), {2: PeerAddress("127.0.0.1", 9)})
        await nursery.start(one.transport.run)
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", one.transport.listen_port)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = pki.client(pki.node2).wrap_bio(incoming, outgoing, server_side=False)
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            await stream.send_all(outgoing.read())  # the real ClientHello
            with trio.fail_after(10):
                assert await stream.receive_some(65536)  # the server's flight
            body = rng.randbytes(200)
            record = b"\x17\x03\x03" + len(body).to_bytes(2, "big") + body
            await stream.send_all(record)
            await _closed_by_the_other_side(stream)
            await stream.aclose()
        with trio.fail_after(10):
            while one.transport.stats.handshakes_refused < 3:
                await trio.sleep(0.01)  # polling a counter, bounded
        assert "refused peer connection" in caplog.text
        nursery.cancel_scope.cancel()


# --- real sockets: the client port -----------------------------------------------------


@asynccontextmanager
async def _watched(tmp_path: Path) -> AsyncIterator[tuple[int, ssl.SSLContext, Any]]:
    """The TLS client port of a one-node cluster, and a watcher that must keep getting
    deltas whatever the hostile clients do."""
    async with serving(tmp_path) as (port, pki_dir, _):
        context = client_context(pki_dir / "ca.crt")
        watcher = await ClientConnection.open("127.0.0.1", port, token=ADMIN, ssl_context=context)
        try:
            await watcher.send(ClientHello(None, None, ""))
            assert isinstance(await watcher.receive(), SnapshotChunk)
            yield port, context, watcher
        finally:
            await watcher.aclose()


async def _still_served(
    port: int, context: ssl.SSLContext, watcher: ClientConnection, n: int
) -> None:
    writer = await ClientConnection.open("127.0.0.1", port, token=ADMIN, ssl_context=context)
    try:
        await writer.send(WriteRequest(1, "set_tenant", {"name": f"after{n}"}, None))
        assert isinstance(await writer.receive(), WriteResult)
    finally:
        await writer.aclose()
    with trio.fail_after(10):
        while True:
            message = await watcher.receive()
            if isinstance(message, Deltas) and any(
                c.key == f"after{n}" for d in message.deltas for c in d.changes
            ):
                return


def _hostile_client_payloads(seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    valid = CLIENT_TO_SERVER.encode(ClientHello(None, None, ""))
    cases = [
        ("random bytes where WebSocket frames go", rng.randbytes(200)),
        ("a binary message of garbage CBOR", client_frame(rng.randbytes(80), os.urandom(4))),
        ("a text message", client_frame(b"hello", os.urandom(4), 0x1)),
    ]
    for n in range(5):
        broken = _mutated(valid, [(rng.randrange(64), rng.randrange(256)) for _ in range(2)])
        cases.append((f"a mutated Hello #{n}", client_frame(broken, os.urandom(4))))
    return cases


async def _closed(conn: ClientConnection) -> list[Any]:
    """What the server said before closing the connection (Errors, most likely)."""
    said: list[Any] = []
    with trio.fail_after(10), pytest.raises(ConnectionClosed):
        while True:
            said.append(await conn.receive())
    return said


async def test_the_client_port_closes_hostile_clients_and_keeps_serving(tmp_path: Path) -> None:
    async with _watched(tmp_path) as (port, context, watcher):
        for n, (what, payload) in enumerate(_hostile_client_payloads(3)):
            conn = await ClientConnection.open("127.0.0.1", port, token=ADMIN, ssl_context=context)
            await conn.send_raw(payload)
            said = await _closed(conn)
            await conn.aclose()
            assert all(isinstance(m, Error) for m in said), (what, said)
            if "CBOR" in what or "mutated" in what:
                assert said and said[0].code is ErrorCode.BAD_REQUEST, (what, said)
            await _still_served(port, context, watcher, n)


async def test_a_tampered_record_on_the_client_port_closes_only_that_connection(
    tmp_path: Path,
) -> None:
    async with _watched(tmp_path) as (port, context, watcher):
        conn = await ClientConnection.open("127.0.0.1", port, token=ADMIN, ssl_context=context)
        frame = client_frame(CLIENT_TO_SERVER.encode(ClientHello(None, None, "")), os.urandom(4))
        wire = bytearray(conn._tls.encrypt(frame))  # type: ignore[union-attr]  # test: raw record
        wire[-3] ^= 0x40  # inside the authentication tag
        conn._sock.send(bytes(wire))
        await _closed(conn)
        await conn.aclose()
        await _still_served(port, context, watcher, 0)
