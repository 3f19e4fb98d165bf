"""The broker's lean WebSocket connection against a scripted server on loopback.

The server side is written by hand here (upgrade response, unmasked frames, split at odd
points) so each test controls exactly what bytes reach the client and when.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    ClientHello,
    Resync,
    WatchProgress,
)
from felix.proto.errors import ProtocolError
from felix.proto.ws_frames import OP_PING, OP_PONG, accept_token, close_frame, server_frame

Script = Callable[[trio.SocketStream], Awaitable[None]]


async def accept_upgrade(stream: trio.SocketStream) -> bytes:
    """Answer the client's upgrade request; returns anything read past it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = accept_token(key)
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    return rest


def unmask(data: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one whole masked client frame (small frames only)."""
    opcode, size = data[0] & 0x0F, data[1] & 0x7F
    assert data[1] & 0x80 and size < 126
    mask, payload = data[2:6], data[6 : 6 + size]
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, host="127.0.0.1"), lambda s: _run(s, script), 0
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def _run(stream: trio.SocketStream, script: Script) -> None:
    async with stream:
        await accept_upgrade(stream)
        await script(stream)


def frame(message: object) -> bytes:
    return server_frame(SERVER_TO_CLIENT.encode(message))


async def test_messages_split_at_every_byte_arrive_whole_and_in_order() -> None:
    wire = b"".join(frame(WatchProgress(v)) for v in range(1, 40))

    async def script(stream: trio.SocketStream) -> None:
        for i in range(len(wire)):
            await stream.send_all(wire[i : i + 1])
        await trio.sleep_forever()

    async with server(script) as port:
        conn = await ClientConnection.open("127.0.0.1", port)
        got: list[int] = []
        while len(got) < 39:
            got += [m.version for m in await conn.receive_batch()]
        assert got == list(range(1, 40))
        await conn.aclose()


async def test_ping_is_answered_and_a_send_reaches_the_server() -> None:
    seen: list[tuple[int, bytes]] = []
    done = trio.Event()

    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(server_frame(b"hi", OP_PING) + frame(WatchProgress(7)))
        buffer = b""
        while len(seen) < 2:
            buffer += await stream.receive_some(4096)
            while len(buffer) >= 6 and len(buffer) >= 6 + (buffer[1] & 0x7F):
                size = 6 + (buffer[1] & 0x7F)
                seen.append(unmask(buffer[:size]))
                buffer = buffer[size:]
        done.set()
        await trio.sleep_forever()

    async with server(script) as port:
        conn = await ClientConnection.open("127.0.0.1", port)
        assert await conn.receive() == WatchProgress(7)
        await conn.send(ClientHello(5, 3, ""))
        with trio.fail_after(5):
            await done.wait()
        assert seen[0] == (OP_PONG, b"hi")
        assert CLIENT_TO_SERVER.decode(seen[1][1]) == ClientHello(5, 3, "")
        await conn.aclose()


async def test_close_frame_after_messages_delivers_them_first() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(frame(Resync("go")) + close_frame(4001, "bye"))

    async with server(script) as port:
        conn = await ClientConnection.open("127.0.0.1", port)
        assert await conn.receive() == Resync("go")
        with pytest.raises(ConnectionClosed) as info:
            await conn.receive()
        assert (info.value.code, info.value.reason) == (4001, "bye")
        await conn.aclose()


async def test_end_of_stream_and_a_closed_connection_raise_connection_closed() -> None:
    async def script(stream: trio.SocketStream) -> None:
        pass  # the server hangs up right after the upgrade

    async with server(script) as port:
        conn = await ClientConnection.open("127.0.0.1", port)
        with pytest.raises(ConnectionClosed, match="end of stream"):
            await conn.receive()
        await conn.aclose()
        with pytest.raises(ConnectionClosed):
            await conn.send(ClientHello(1, None, ""))


async def test_aclose_wakes_a_blocked_receiver() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with server(script) as port:
        conn = await ClientConnection.open("127.0.0.1", port)
        async with trio.open_nursery() as nursery:
            failures: list[BaseException] = []

            async def receiver() -> None:
                try:
                    await conn.receive()
                except ConnectionClosed as exc:
                    failures.append(exc)

            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await conn.aclose()
        assert len(failures) == 1


async def test_a_masked_server_frame_is_a_protocol_error() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await stream.send_all(b"\x82\x81abcd\x00")
        await trio.sleep_forever()

    async with server(script) as port:
        conn = await ClientConnection.open("127.0.0.1", port)
        with pytest.raises(ProtocolError, match="masked"):
            await conn.receive()
        await conn.aclose()


async def test_a_refused_upgrade_and_a_dead_port_fail_clearly() -> None:
    async def refuse(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), refuse, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(ProtocolError, match="403"):
            await ClientConnection.open("127.0.0.1", port)
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError, match="refused"):
        await ClientConnection.open("127.0.0.1", port)
