"""A lean WebSocket client connection to a control-plane node.

The receive path is the broker's hot path (hundreds of brokers may share a machine), so
it owns a plain non-blocking socket and parses unmasked server frames with
`ServerFrameParser` instead of going through a general WebSocket library or trio's
socket wrappers.  Per delta message that leaves one schedule point (`wait_readable`: the
epoll wake-up) and one ``recv``: trio's ``receive_some`` first tries a ``recv`` that
fails with EAGAIN (a raised exception) and adds a scheduler pass after the one that
succeeds, which together cost about as much as decoding and applying the delta.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from typing import Any

import trio

from felix.gc_pause import GC_PAUSE_BYTES, gc_paused
from felix.proto.client_messages import CLIENT_TO_SERVER, SERVER_TO_CLIENT, ClientHello, HelloAck
from felix.proto.errors import ProtocolError
from felix.proto.versions import BASELINE, VersionRange
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
from felix.security.contexts import classify_handshake_error
from felix.security.identity import IdentityError, identity_of
from felix.security.tls import TlsClosed, TlsSession

# Not larger: ``recv(n)`` allocates n bytes first, and from 128 KiB up glibc serves that
# with mmap + munmap, which made every small delta cost ~12 µs more.
RECEIVE_BYTES = 65_536
HANDSHAKE_BYTES_MAX = 16_384


class ConnectionClosed(Exception):
    """The server closed the connection (``code`` and ``reason`` when it said why)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        self.code, self.reason = code, reason
        if code:
            super().__init__(f"connection closed ({code}: {reason})")
        else:
            super().__init__(f"connection closed: {reason}" if reason else "connection closed")


class _Socket:
    """The connected socket as the TLS handshake's byte stream."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await _send_all(self._sock, bytes(data))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await _recv(self._sock, max_bytes or RECEIVE_BYTES)


class ClientConnection:
    def __init__(
        self, sock: socket.socket, parser: ServerFrameParser, tls: TlsSession | None = None
    ) -> None:
        self._sock = sock
        self._tls = tls  # wss://: frames are encrypted here, read bytes decrypted
        self._parser = parser
        self._ready: list[Any] = []
        self._send_lock = trio.Lock()
        self._closed = False
        self._unparsed = True  # bytes that came with the handshake response may hold frames
        self._closing: ConnectionClosed | None = None  # a close frame behind unread messages
        # Every message both ways is this protocol version: the baseline until the
        # server's `HelloAck` answers a `ClientHello` that offered ``_offered``.
        self.protocol_version = BASELINE
        self._offered: VersionRange | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout_s: float = 5.0,
        token: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> ClientConnection:
        """Connect and upgrade; ``token`` (if any) authenticates the connection
        (``Authorization: Bearer`` in the upgrade request).  With ``ssl_context``
        (``wss://``) the server must present a verified certificate naming a
        control-plane node (``felix://<cluster>/node/<id>``); else `TlsRefused`."""
        with trio.fail_after(timeout_s):
            sock = await _connect(host, port)
            try:
                tls = await _secure(sock, ssl_context) if ssl_context is not None else None
                key = os.urandom(16)
                request = client_handshake(f"{host}:{port}", "/", key, token)
                await _send_all(sock, tls.encrypt(request) if tls else request)
                head, rest = await _read_head(sock, tls)
                check_handshake_response(head, key)
            except BaseException:
                _close(sock)
                raise
        parser = ServerFrameParser()
        parser.feed(rest)
        return cls(sock, parser, tls)

    @property
    def server_certificate(self) -> dict[str, Any]:
        """The server's verified certificate (``getpeercert()`` form; empty: plaintext)."""
        return self._tls.peer_certificate() if self._tls is not None else {}

    async def send(self, message: Any) -> None:
        """Send one message at the connection's protocol version.  After a `ClientHello`
        with a version range, send nothing more until its `HelloAck` is received: that
        switches the version (docs/architecture.md, "Protocol versions")."""
        if type(message) is ClientHello and (message.version_min or message.version_max):
            low = message.version_min or BASELINE  # read as the server reads it
            self._offered = VersionRange(low, message.version_max or low)
        payload = CLIENT_TO_SERVER.encode(message, self.protocol_version)
        await self.send_raw(client_frame(payload, os.urandom(4)))

    async def send_raw(self, data: bytes) -> None:
        """Send already-framed bytes (client frames, e.g. several coalesced)."""
        async with self._send_lock:
            try:
                await _send_all(self._sock, self._tls.encrypt(data) if self._tls else data)
            except (trio.ClosedResourceError, OSError) as exc:
                raise ConnectionClosed(reason=str(exc) or type(exc).__name__) from None

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
        if self._closing is not None:
            raise self._closing
        if self._unparsed:
            self._unparsed = False
            await self._parse()
            if self._ready:
                return
        sock = self._sock
        data = b""
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)  # the schedule point of a receive
                data = sock.recv(RECEIVE_BYTES)
                break
            except BlockingIOError:
                continue  # a spurious wake-up
            except (trio.ClosedResourceError, OSError) as exc:
                raise ConnectionClosed(reason=str(exc) or type(exc).__name__) from None
        if not data:
            raise ConnectionClosed(reason="end of stream")
        if self._tls is not None:
            data = await self._decrypt(self._tls, data)
        self._parser.feed(data)
        pongs = self._parse_now()
        if pongs:
            await self._answer(pongs)

    async def _decrypt(self, tls: TlsSession, data: bytes) -> bytes:
        try:
            plain = tls.decrypt(data)
        except ssl.SSLError as exc:
            raise ConnectionClosed(reason=f"bad TLS record: {exc}") from None
        answer = tls.pending_output()  # e.g. a KeyUpdate reply: sent before anything else
        if answer:
            async with self._send_lock:
                try:
                    await _send_all(self._sock, answer)
                except (trio.ClosedResourceError, OSError) as exc:
                    raise ConnectionClosed(reason=str(exc) or type(exc).__name__) from None
        if tls.closed and not plain:
            raise ConnectionClosed(reason="the server closed the TLS session")
        return plain

    def _acknowledged(self, ack: HelloAck) -> None:
        """The server chose a version: every later message is decoded at it."""
        if self._offered is None or ack.protocol_version not in self._offered:
            raise ProtocolError(
                f"the server chose protocol version {ack.protocol_version},"
                f" this client offered {self._offered or 'none'}"
            )
        self.protocol_version = ack.protocol_version

    async def _parse(self) -> None:
        """Decode what the parser holds; answer its pings."""
        pongs = self._parse_now()
        if pongs:
            await self._answer(pongs)

    async def _answer(self, pongs: list[bytes]) -> None:
        for payload in pongs:
            await self.send_raw(client_frame(payload, os.urandom(4), OP_PONG))

    def _parse_now(self) -> list[bytes] | None:
        """Decode every whole message the parser holds into ``_ready`` (no schedule
        point: a delta costs no coroutine of its own); returns the pings' payloads to
        answer, in order (None: none)."""
        pongs: list[bytes] | None = None
        for opcode, payload in self._parser.messages():
            if opcode == OP_BINARY:
                if len(payload) < GC_PAUSE_BYTES:
                    message = SERVER_TO_CLIENT.decode(payload, self.protocol_version)
                else:  # a big chunk or delta: a bulk build of long-lived objects
                    with gc_paused():
                        message = SERVER_TO_CLIENT.decode(payload, self.protocol_version)
                if type(message) is HelloAck:
                    self._acknowledged(message)  # before the messages behind it decode
                self._ready.append(message)
            elif opcode == OP_PING:
                if pongs is None:
                    pongs = []
                pongs.append(payload)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                closed = ConnectionClosed(code, payload[2:].decode("utf-8", "replace"))
                if self._ready:
                    self._closing = closed  # deliver what came before the close first
                    return pongs
                raise closed
            elif opcode != OP_PONG:
                raise ProtocolError(f"unexpected WebSocket opcode {opcode:#x}")
        return pongs

    async def aclose(self) -> None:
        """Close the socket; a task blocked in a receive or send gets `ConnectionClosed`."""
        if not self._closed:
            self._closed = True
            _close(self._sock)
        await trio.lowlevel.checkpoint()


def _close(sock: socket.socket) -> None:
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)  # wakes waiters with ClosedResourceError
        sock.close()


async def _connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket: each resolved address in turn."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host}: no address")
    failure: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, f"connect to {host}:{port}: {os.strerror(code)}")
            return sock
        except BaseException as exc:
            _close(sock)
            if not isinstance(exc, OSError):
                raise
            failure = exc
    assert failure is not None
    raise failure


async def _send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data``; one schedule point (more only if the socket buffer fills)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            try:
                await trio.lowlevel.wait_writable(sock)
            except BaseException:
                if len(view) < len(data):
                    _close(sock)  # half a frame went out: the stream is unusable now
                raise
            continue
        view = view[sent:]
    await trio.lowlevel.cancel_shielded_checkpoint()


async def _recv(sock: socket.socket, max_bytes: int) -> bytes:
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return sock.recv(max_bytes)
        except BlockingIOError:
            continue


async def _read_head(sock: socket.socket, tls: TlsSession | None) -> tuple[bytes, bytes]:
    data = tls.buffered() if tls is not None else b""
    while b"\r\n\r\n" not in data:
        if len(data) > HANDSHAKE_BYTES_MAX:
            raise ProtocolError("WebSocket handshake response too large")
        chunk = await _recv(sock, 4096)
        if not chunk:
            raise ConnectionClosed(reason="closed during the handshake")
        if tls is not None:
            try:
                chunk = tls.decrypt(chunk)
            except ssl.SSLError as exc:
                raise TlsRefused(reason=f"TLS: {classify_handshake_error(exc)}") from None
            if tls.closed and not chunk:
                raise ConnectionClosed(reason="the server closed the TLS session")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


class TlsRefused(ConnectionClosed):
    """The TLS handshake failed or the server is not a control-plane node (the reason
    in operator words: unknown CA, certificate expired, ...)."""


async def _secure(sock: socket.socket, context: ssl.SSLContext) -> TlsSession:
    tls = TlsSession(context, server_side=False)
    try:
        await tls.handshake(_Socket(sock))
    except (ssl.SSLError, TlsClosed) as exc:
        raise TlsRefused(reason=f"TLS: {classify_handshake_error(exc)}") from None
    try:
        server = identity_of(tls.peer_certificate())
    except IdentityError as exc:
        raise TlsRefused(reason=f"TLS: {exc}") from None
    if server.kind != "node":
        raise TlsRefused(reason=f"TLS: the server presents {server.uri()}, not a node's identity")
    return tls
