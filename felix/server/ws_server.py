"""A lean WebSocket server for the client API: wsproto for the handshake and for what
clients send; pre-built frames and non-blocking socket writes for what the server sends.

Why not trio-websocket for the stream to brokers: its ``send_message`` awaits the socket,
costs ~60 µs per client per message and lets one slow reader stall the sender.  Here a
publisher calls `FrameSender.send` — a synchronous, non-blocking ``socket.send`` of bytes
built once for all subscribers (~7 µs).  Only when the kernel buffer is full does the
rest go to a bounded backlog, drained by that connection's own flusher task; a backlog
over its bound marks the connection overflowed and the owner disconnects it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from felix.proto.ws_frames import OP_PING, close_frame, server_frame
from felix.security.tls import TlsClosed, TlsSession
from felix.transport.tcp import describe_remote

log = logging.getLogger("felix.ws")

RECEIVE_BYTES = 65536
HANDSHAKE_TIMEOUT_S = 10.0
CLIENT_MESSAGE_BYTES_MAX = 1 << 20


class ConnectionGone(Exception):
    """The peer closed, the socket broke, or the connection was closed locally."""


class FrameSender:
    """Writes whole frames to one socket without ever blocking the caller."""

    def __init__(
        self,
        stream: trio.SocketStream,
        backlog_bytes_max: int,
        seal: Callable[[bytes], bytes] | None = None,
    ) -> None:
        # TLS: frames are encrypted here, per connection, before the write; plaintext
        # writes them as they are (no extra call per subscriber per message)
        self._send_now: Callable[[bytes], bool] = self._write
        if seal is not None:
            write = self._write
            self._send_now = lambda frame: write(seal(frame))
        self._fd = stream.socket.fileno()
        self._raw = socket.socket(fileno=socket.dup(self._fd))  # a handle of our own
        self._raw.setblocking(False)
        self.backlog_bytes_max = backlog_bytes_max
        self._backlog: deque[memoryview] = deque()
        self._corked: list[bytes] = []
        self._sent_at_once = False  # a `send_soon` wrote since the flusher last ran
        self.backlog_bytes = 0
        self.broken = False
        self.overflowed = False
        self._wake = trio.Event()
        self._emptied = trio.Event()  # set whenever the backlog drains (or the socket breaks)
        self.frames_sent = 0

    def send_soon(self, frame: bytes) -> bool:
        """Write ``frame`` now if it is the first since the flusher last ran, else
        together with whatever else is sent before the flusher runs: a lone reply (a
        writer's acknowledgement) leaves at once, ahead of anything that runs after its
        task (the watch fan-out), and the rest of the replies made in one scheduler
        batch — e.g. a commit waking many requests — leave in one syscall.  Order with
        `send` is kept."""
        if self.broken or self.overflowed:
            return False
        if not self._corked and not self._sent_at_once:
            self._sent_at_once = True
            self._wake.set()  # the flusher's next pass ends this batch
            return self._send_now(frame)
        self._corked.append(frame)
        self._wake.set()
        return True

    def _uncork(self) -> bool:
        frames, self._corked = self._corked, []
        return self._send_now(frames[0] if len(frames) == 1 else b"".join(frames))

    def send(self, frame: bytes) -> bool:
        """Queue or write ``frame`` now; False if the connection is broken or overflowed."""
        if self.broken or self.overflowed:
            return False
        if self._corked and not self._uncork():
            return False
        return self._send_now(frame)

    def send_wire(self, data: bytes) -> bool:
        """Queue or write bytes that are already what goes on the wire (TLS records
        the session itself produced), in order with everything sent so far."""
        if self.broken:
            return False
        if self._corked and not self._uncork():
            return False
        return self._write(data)

    def _write(self, frame: bytes) -> bool:
        if self._backlog:
            return self._enqueue(memoryview(frame))
        try:
            sent = self._raw.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            self._wake.set()
            return False
        self.frames_sent += 1
        if sent < len(frame):
            return self._enqueue(memoryview(frame)[sent:])
        return True

    def send_final(self, frame: bytes) -> None:
        """A last frame (Resync, close) that may exceed the backlog bound; nothing is
        accepted after it."""
        if self.broken:
            return
        self.overflowed = False
        limit, self.backlog_bytes_max = self.backlog_bytes_max, 1 << 62
        self.send(frame)
        self.backlog_bytes_max = limit
        self.overflowed = True

    def _enqueue(self, rest: memoryview) -> bool:
        if self.backlog_bytes + len(rest) > self.backlog_bytes_max:
            self.overflowed = True
            self._wake.set()
            return False
        self._backlog.append(rest)
        self.backlog_bytes += len(rest)
        self._wake.set()
        return True

    @property
    def backlog_frames(self) -> int:
        return len(self._backlog)

    async def flush_forever(self) -> None:
        """Drain the backlog whenever the socket can take more (the slow path).  The only
        task that waits on the socket: Trio allows one writer-waiter per fd."""
        try:
            while not self.broken:
                if self._corked and not self.overflowed:
                    self._uncork()
                self._sent_at_once = False
                if not self._backlog:
                    self._emptied.set()
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                await trio.lowlevel.wait_writable(self._fd)
                self._drain()
        finally:
            self._emptied.set()

    async def drain(self) -> None:
        """Wait until everything queued so far has been written (catch-up pacing, close)."""
        while self._backlog and not self.broken:
            self._emptied = trio.Event()
            self._wake.set()
            await self._emptied.wait()

    def _drain(self) -> None:
        while self._backlog:
            head = self._backlog[0]
            try:
                sent = self._raw.send(head)
            except BlockingIOError:
                return
            except OSError:
                self.broken = True
                return
            self.backlog_bytes -= sent
            if sent < len(head):
                self._backlog[0] = head[sent:]
                return
            self._backlog.popleft()

    def close(self) -> None:
        self.broken = True
        self._wake.set()
        with contextlib.suppress(OSError):
            self._raw.close()


class WsConnection:
    """One accepted WebSocket connection."""

    def __init__(
        self,
        stream: trio.SocketStream,
        ws: WSConnection,
        sender: FrameSender,
        tls: TlsSession | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.stream = stream
        self.tls = tls
        self.headers = headers or {}  # the upgrade request's (``authorization``, ...)
        self._ws = ws
        self.sender = sender
        self._parts: list[bytes] = []
        self._parts_bytes = 0
        self._pending: deque[bytes] = deque()
        self.closed = False
        self.peer_closed = trio.Event()  # the client sent its close frame, or is gone
        self.last_heard = trio.current_time()

    def send_message(self, payload: bytes) -> bool:
        return self.sender.send(server_frame(payload))

    async def receive(self) -> bytes:
        """The next binary message from the client; handles pings and close."""
        while not self._pending:
            if self.peer_closed.is_set() or self.sender.broken:
                raise ConnectionGone("connection closed")
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.peer_closed.set()
                raise ConnectionGone(str(exc)) from None
            if not data:
                self.peer_closed.set()
                raise ConnectionGone("client closed the connection")
            self.last_heard = trio.current_time()
            if self.tls is not None:
                data = self._decrypt(self.tls, data)
                if not data:
                    continue
            try:
                self._ws.receive_data(data)
                self._handle_events()
            except (RemoteProtocolError, LocalProtocolError) as exc:
                await self.close(1002, "protocol error")
                raise ConnectionGone(f"WebSocket protocol error: {exc}") from None
        return self._pending.popleft()

    def _decrypt(self, tls: TlsSession, data: bytes) -> bytes:
        try:
            plain = tls.decrypt(data)
        except ssl.SSLError as exc:
            raise ConnectionGone(f"bad TLS record: {exc}") from None
        answer = tls.pending_output()
        if answer:
            self.sender.send_wire(answer)
        if tls.closed and not plain:
            raise ConnectionGone("client closed the TLS session")
        return plain

    def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                self._parts.append(bytes(event.data))
                self._parts_bytes += len(event.data)
                if self._parts_bytes > CLIENT_MESSAGE_BYTES_MAX:
                    raise RemoteProtocolError("message too big", event_hint=None)
                if event.message_finished:
                    self._pending.append(b"".join(self._parts))
                    self._parts, self._parts_bytes = [], 0
            elif isinstance(event, Ping):
                self.sender.send(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(LocalProtocolError):
                    self.sender.send(self._ws.send(event.response()))
                self.closed = True
                self.peer_closed.set()
            elif isinstance(event, TextMessage):
                raise RemoteProtocolError("text messages are not accepted", event_hint=None)

    @property
    def remote(self) -> str:
        return describe_remote(self.stream)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (``code``, ``reason``), then wait (bounded) until it and
        everything before it were written."""
        if not self.closed:
            self.closed = True
            self.sender.send_final(self._close_frame(code, reason))
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.sender.drain()

    def _close_frame(self, code: int, reason: str) -> bytes:
        """Through wsproto when it can (its state then knows we closed, and the client's
        answering close is taken as the end of the handshake), else built here."""
        try:
            return self._ws.send(CloseConnection(code, reason))  # reason cut to 123 bytes
        except LocalProtocolError:
            return close_frame(code, reason)


Handler = Callable[[WsConnection], Awaitable[None]]

KEEPALIVE_INTERVAL_S = 10.0
KEEPALIVE_SLACK = 0.1  # deadlines rounded up to a grid of this share of the interval
CLOSE_KEEPALIVE = CloseReason.INTERNAL_ERROR  # 1011, as the `websockets` library does
CLOSE_LINGER_S = 1.0  # how long a closed connection waits for the client's close frame


def coalesced(deadline: float, grid_s: float) -> float:
    """``deadline`` rounded up to the next multiple of ``grid_s`` (never earlier than
    ``deadline``, whatever the float rounding)."""
    return max(deadline, math.ceil(deadline / grid_s) * grid_s)


async def keepalive(
    connection: WsConnection,
    interval_s: float,
    done: trio.CancelScope,
    stats: ServeStats | None = None,
) -> None:
    """Ping a quiet client; close one that leaves a ping unanswered for ``interval_s``
    (a dead peer would otherwise hold its slot until TCP gives up, minutes later).

    Deadline-driven: it sleeps until the client has been quiet for half an interval
    (then it sends a PING), or until a PING has been out for a whole interval (then,
    if not one byte was heard since, it closes the connection; if the client answered,
    it has been quiet since the answer for about half an interval at least, and gets the
    next PING at once).  So a quiet client that answers is pinged once per interval, a
    client that writes more often than every half interval never, and one that answers
    is never closed however late the wake-ups come; a dead peer is closed one and a half
    intervals (and at most two grid steps, below) after the last byte heard, with a
    close frame (1011) giving the reason (docs/architecture.md §12, "Keepalive").

    Every deadline is rounded up to the next multiple of ``interval_s *
    KEEPALIVE_SLACK`` on Trio's clock, so the keepalives of connections opened at
    different moments wake in the same scheduler pass (one event-loop turn for all of
    them, and their PONGs arrive together) instead of one turn each."""
    assert interval_s > 0, interval_s  # the config's bound (`KEEPALIVE_INTERVAL_MS_MIN`)
    quiet_s = interval_s / 2
    grid_s = interval_s * KEEPALIVE_SLACK
    ping_sent: float | None = None
    while True:
        if ping_sent is None:
            await trio.sleep_until(coalesced(connection.last_heard + quiet_s, grid_s))
        else:
            await trio.sleep_until(coalesced(ping_sent + interval_s, grid_s))
        now, heard = trio.current_time(), connection.last_heard
        if ping_sent is not None and heard >= ping_sent:
            ping_sent = None  # answered (any frame counts)
        if ping_sent is None:
            if now >= heard + quiet_s:  # the deadline's own sum: no rounding gap
                ping_sent = now
                connection.sender.send(server_frame(b"felix", OP_PING))
            continue
        # woken a whole interval after a PING, and not one byte heard since
        reason = f"keepalive: no frame for {now - heard:.0f} s"
        log.info("closing the client connection from %s: %s", connection.remote, reason)
        if stats is not None:
            stats.keepalive_closes += 1
        await connection.close(CLOSE_KEEPALIVE, reason)
        # The closing handshake: the client answers with its own close frame, which
        # ends the reader (and the connection).  Closing the socket before that
        # answer is read would reset it, and the client could lose our reason.
        with trio.move_on_after(CLOSE_LINGER_S):
            await connection.peer_closed.wait()
        done.cancel()
        return


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS for the client port: the current context (asked for at every connection, so
    reloaded certificates apply to new ones) and how to word a failed handshake."""

    context: Callable[[], ssl.SSLContext]
    describe: Callable[[BaseException], str] = str


@dataclass(slots=True)
class ServeStats:
    tls_handshakes_failed: int = 0
    upgrades_failed: int = 0
    refused_busy: int = 0  # closed at once: too many connections, or handshakes at once
    connections: int = 0  # open now
    handshaking: int = 0  # in the TLS handshake or the upgrade now
    keepalive_closes: int = 0  # closed for leaving a ping unanswered


@dataclass(frozen=True, slots=True)
class ServeLimits:
    """Bounds before anyone is authenticated (what a flood of connections can hold), and
    the keepalive of every connection (`keepalive`; ``watch.keepalive_interval_ms``)."""

    connections_max: int = 10_000
    handshakes_max: int = 256  # at once; each bounded by HANDSHAKE_TIMEOUT_S
    keepalive_interval_s: float = KEEPALIVE_INTERVAL_S


async def serve_ws(
    handler: Handler,
    host: str,
    port: int,
    *,
    backlog_bytes_max: int,
    tls: ServerTls | None = None,
    stats: ServeStats | None = None,
    limits: ServeLimits = ServeLimits(),
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket connections (``wss://`` with ``tls``) and run ``handler`` for
    each, in its own nursery.  Past ``limits`` a new connection is closed at once."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    counts = stats if stats is not None else ServeStats()

    async def on_connection(stream: trio.SocketStream) -> None:
        if counts.connections >= limits.connections_max or (
            counts.handshaking >= limits.handshakes_max
        ):
            counts.refused_busy += 1
            await trio.aclose_forcefully(stream)
            return
        counts.connections += 1
        try:
            await _connection(stream, handler, backlog_bytes_max, tls, counts, limits)
        finally:
            counts.connections -= 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, on_connection, listeners)
        task_status.started(bound)


async def _open(
    stream: trio.SocketStream, tls: ServerTls | None, stats: ServeStats
) -> tuple[WSConnection, TlsSession | None, dict[str, str]] | None:
    """TLS handshake (if any), then the WebSocket upgrade, within HANDSHAKE_TIMEOUT_S;
    None (counted, and logged when it was TLS) if either fails."""
    stats.handshaking += 1
    try:
        return await _open_bounded(stream, tls, stats)
    finally:
        stats.handshaking -= 1


async def _open_bounded(
    stream: trio.SocketStream, tls: ServerTls | None, stats: ServeStats
) -> tuple[WSConnection, TlsSession | None, dict[str, str]] | None:
    ws = WSConnection(ConnectionType.SERVER)
    session = TlsSession(tls.context(), server_side=True) if tls is not None else None
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            if session is not None:
                try:
                    await session.handshake(stream)
                except (ssl.SSLError, TlsClosed) as exc:
                    assert tls is not None
                    stats.tls_handshakes_failed += 1
                    log.info(
                        "refused a client TLS handshake from %s: %s",
                        describe_remote(stream),
                        tls.describe(exc),
                    )
                    return None
            headers = await _handshake(stream, ws, session)
    except (
        trio.TooSlowError,
        ConnectionGone,
        RemoteProtocolError,
        LocalProtocolError,
        OSError,
        trio.BrokenResourceError,
    ):
        stats.upgrades_failed += 1
        return None
    return ws, session, headers


async def _connection(
    stream: trio.SocketStream,
    handler: Handler,
    backlog_bytes_max: int,
    tls: ServerTls | None,
    stats: ServeStats,
    limits: ServeLimits,
) -> None:
    async with stream:
        opened = await _open(stream, tls, stats)
        if opened is None:
            return
        ws, session, headers = opened
        sender = FrameSender(stream, backlog_bytes_max, session.encrypt if session else None)
        connection = WsConnection(stream, ws, sender, session, headers)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender.flush_forever)
                nursery.start_soon(
                    keepalive, connection, limits.keepalive_interval_s, nursery.cancel_scope, stats
                )
                connection._handle_events()  # frames that came with the upgrade
                try:
                    await handler(connection)
                finally:
                    nursery.cancel_scope.cancel()
        except* ConnectionGone:
            pass
        except* Exception:  # one connection's bug must never take the server down
            log.exception("client connection handler failed")
        finally:
            sender.close()


async def _handshake(
    stream: trio.SocketStream, ws: WSConnection, tls: TlsSession | None
) -> dict[str, str]:
    """Run the HTTP upgrade; returns the request's headers (names in lower case)."""

    async def send(data: bytes) -> None:
        await stream.send_all(tls.encrypt(data) if tls is not None else data)

    pending = tls.buffered() if tls is not None else b""
    while True:
        data = pending or await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise ConnectionGone("closed during the handshake")
        if tls is not None and not pending:
            try:
                data = tls.decrypt(data)
            except ssl.SSLError as exc:
                raise ConnectionGone(f"bad TLS record: {exc}") from None
            if tls.closed:
                raise ConnectionGone("closed during the handshake")
        pending = b""
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await send(ws.send(AcceptConnection()))
                return {
                    bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
                    for name, value in event.extra_headers
                }
            await send(ws.send(RejectConnection(status_code=400)))
            raise ConnectionGone("not a WebSocket upgrade")
