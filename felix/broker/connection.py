"""A lean WebSocket client connection to a control-plane node.

The receive path is the broker's hot path (hundreds of brokers may share a machine), so
it reads the raw socket and parses unmasked server frames with `ServerFrameParser`
instead of a general WebSocket library.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from felix.proto.client_messages import CLIENT_TO_SERVER, SERVER_TO_CLIENT
from felix.proto.errors import ProtocolError
from felix.proto.ws_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    ServerFrameParser,
    check_handshake_response,
    client_frame,
    client_handshake,
)

RECEIVE_BYTES = 262_144
HANDSHAKE_BYTES_MAX = 16_384


class ConnectionClosed(Exception):
    """The server closed the connection (``code`` and ``reason`` when it said why)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        self.code, self.reason = code, reason
        super().__init__(f"connection closed ({code}: {reason})" if code else "connection closed")


class ClientConnection:
    def __init__(self, stream: trio.SocketStream, parser: ServerFrameParser) -> None:
        self.stream = stream
        self._parser = parser
        self._ready: list[Any] = []
        self._send_lock = trio.Lock()

    @classmethod
    async def open(cls, host: str, port: int, *, timeout_s: float = 5.0) -> ClientConnection:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port)
            try:
                key = os.urandom(16)
                await stream.send_all(client_handshake(f"{host}:{port}", "/", key))
                head, rest = await _read_head(stream)
                check_handshake_response(head, key)
            except BaseException:
                await stream.aclose()
                raise
        parser = ServerFrameParser()
        parser.feed(rest)
        return cls(stream, parser)

    async def send(self, message: Any) -> None:
        frame = client_frame(CLIENT_TO_SERVER.encode(message), os.urandom(4))
        async with self._send_lock:
            try:
                await self.stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionClosed(reason=str(exc)) from None

    async def receive(self) -> Any:
        """The next server message (decoded); answers pings; raises `ConnectionClosed`."""
        while not self._ready:
            await self._fill()
        return self._ready.pop(0)

    async def receive_batch(self) -> list[Any]:
        """Every message that is already here (at least one): the cheapest receive loop."""
        while not self._ready:
            await self._fill()
        batch, self._ready = self._ready, []
        return batch

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionClosed(reason=str(exc)) from None
        if not data:
            raise ConnectionClosed(reason="end of stream")
        self._parser.feed(data)
        for opcode, payload in self._parser.messages():
            if opcode == OP_BINARY:
                self._ready.append(SERVER_TO_CLIENT.decode(payload))
            elif opcode == OP_PING:
                await self.stream.send_all(client_frame(payload, os.urandom(4), OP_PONG))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                if self._ready:
                    return  # deliver what came before the close first
                raise ConnectionClosed(code, payload[2:].decode("utf-8", "replace"))
            elif opcode != OP_PONG:
                raise ProtocolError(f"unexpected WebSocket opcode {opcode:#x}")

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _read_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > HANDSHAKE_BYTES_MAX:
            raise ProtocolError("WebSocket handshake response too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise ConnectionClosed(reason="closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest
