"""WebSocket keepalive on MockClock, over real loopback sockets and a wsproto client.

The clock drifts: a seeded "stall" task jumps virtual time forward at random moments (a
GC pause, a busy event loop), so the server's wake-ups come late by random amounts, and
the client answers each PING after a random delay -- its PONG lands just after the wake-up
that sent the PING.  Periodic checks that ping only after a whole interval of silence
close such a client (the next check sees 9.99 s, the one after 20.01 s); the keepalive
here must never close a client that answers, must ping a quiet one only once per
interval (each PING is a wake-up and a PONG to parse, per connection), and must close a
silent one with a close frame and a reason (docs/architecture.md §12, "Keepalive").
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
)
from wsproto.utilities import LocalProtocolError

from felix.server.ws_server import (
    CLOSE_KEEPALIVE,
    KEEPALIVE_SLACK,
    ConnectionGone,
    ServeLimits,
    ServeStats,
    WsConnection,
    serve_ws,
)

INTERVAL_S = 10.0
GRID_S = INTERVAL_S * KEEPALIVE_SLACK  # the keepalive's deadlines fall on this grid


@asynccontextmanager
async def server(interval_s: float) -> AsyncIterator[tuple[int, ServeStats]]:
    """`serve_ws` with a handler that only reads, as the client API's reader does for a
    watch-only broker."""
    stats = ServeStats()

    async def handler(conn: WsConnection) -> None:
        try:
            while True:
                await conn.receive()
        except ConnectionGone:
            pass

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_ws(
                handler,
                "127.0.0.1",
                0,
                backlog_bytes_max=1 << 20,
                stats=stats,
                limits=ServeLimits(keepalive_interval_s=interval_s),
                task_status=task_status,
            )
        )
        yield port, stats
        nursery.cancel_scope.cancel()


@dataclass
class Client:
    """A wsproto client over a real socket; answers PINGs after ``pong_delay()`` (None:
    never answers, and sends nothing at all)."""

    rng: random.Random
    pong_delay_max_s: float | None
    pings: list[float] = field(default_factory=list)
    pongs: list[float] = field(default_factory=list)
    close: CloseConnection | None = None
    closed_at: float | None = None
    eof: bool = False
    reset: bool = False  # the server reset the connection instead of closing it

    async def run(self, port: int) -> None:
        ws = WSConnection(ConnectionType.CLIENT)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        lock = trio.Lock()
        async with stream, trio.open_nursery() as nursery:
            await stream.send_all(ws.send(Request(host="localhost", target="/")))
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    self.reset, data = True, b""
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, AcceptConnection | BytesMessage):
                        continue
                    if isinstance(event, Ping):
                        self.pings.append(trio.current_time())
                        if self.pong_delay_max_s is not None:
                            delay = self.rng.uniform(0, self.pong_delay_max_s)
                            nursery.start_soon(self._pong, stream, ws, lock, event, delay)
                    elif isinstance(event, CloseConnection) and self.close is None:
                        self.close, self.closed_at = event, trio.current_time()
                        with contextlib.suppress(trio.BrokenResourceError, LocalProtocolError):
                            async with lock:  # answer it, as a client should
                                await stream.send_all(ws.send(event.response()))
                if not data:
                    self.eof = True
                    nursery.cancel_scope.cancel()
                    return

    async def _pong(
        self, stream: trio.SocketStream, ws: WSConnection, lock: trio.Lock, ping: Ping, delay: float
    ) -> None:
        await trio.sleep(delay)
        async with lock:
            await stream.send_all(ws.send(Pong(ping.payload)))
        self.pongs.append(trio.current_time())


async def stall(clock: trio.testing.MockClock, rng: random.Random, stall_max_s: float) -> None:
    """Jump the clock forward at random moments: every sleeper wakes late by up to
    ``stall_max_s`` (the server's checks and the client's answers alike)."""
    while True:
        await trio.sleep(rng.uniform(0, INTERVAL_S))
        clock.jump(rng.uniform(0, stall_max_s))


async def test_a_client_that_answers_is_never_closed_however_the_checks_drift(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """200 intervals of drift: PONGs land just after the wake-up that pinged (up to 1 s
    later), wake-ups come up to 2 s late at random.  Nothing is ever closed, and the
    quiet client is pinged about once per interval, not once per half interval."""
    for seed in range(5):
        rng = random.Random(seed)
        client = Client(rng, pong_delay_max_s=1.0)
        async with server(INTERVAL_S) as (port, stats), trio.open_nursery() as nursery:
            nursery.start_soon(stall, autojump_clock, rng, 2.0)
            nursery.start_soon(client.run, port)
            await trio.sleep(200 * INTERVAL_S)
            assert stats.keepalive_closes == 0, f"seed {seed}"
            assert client.close is None and not client.eof, f"seed {seed}"
            assert stats.connections == 1
            # the client was quiet between answers: the server kept pinging it
            assert len(client.pings) >= 100 and len(client.pongs) >= len(client.pings) - 1
            assert len(client.pings) <= 201, f"seed {seed}: {len(client.pings)} pings"
            nursery.cancel_scope.cancel()


async def test_a_silent_client_is_closed_with_a_close_frame_and_a_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that never answers is pinged, then closed with 1011 and
    "keepalive: no frame for N s", one and a half intervals (plus two late wake-ups and
    two grid steps) after it was last heard (its upgrade request); the TCP connection
    then ends."""
    for seed in range(5):
        rng = random.Random(100 + seed)
        client = Client(rng, pong_delay_max_s=None)
        async with server(INTERVAL_S) as (port, stats), trio.open_nursery() as nursery:
            nursery.start_soon(stall, autojump_clock, rng, 2.0)
            started = trio.current_time()
            with trio.fail_after(10 * INTERVAL_S):
                await client.run(port)
            nursery.cancel_scope.cancel()
        assert client.eof and not client.reset and client.close is not None, f"seed {seed}"
        assert client.close.code == CLOSE_KEEPALIVE == 1011
        assert client.close.reason.startswith("keepalive: no frame for "), client.close.reason
        assert client.pings, "closed without being pinged first"
        assert client.closed_at is not None
        assert client.closed_at - client.pings[0] >= INTERVAL_S  # a whole interval to answer
        # one and a half intervals, two late wake-ups, two steps of the deadline grid
        assert client.closed_at - started <= 1.5 * INTERVAL_S + 2 * 2.0 + 2 * GRID_S
        assert stats.keepalive_closes == 1


async def test_a_client_that_keeps_sending_is_not_pinged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Traffic counts as a sign of life: a client writing more often than every half
    interval is never pinged (nor closed)."""
    rng = random.Random(7)
    pinged: list[float] = []

    async def chatter(port: int) -> None:
        ws = WSConnection(ConnectionType.CLIENT)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(ws.send(Request(host="localhost", target="/")))
            while not any(isinstance(e, AcceptConnection) for e in ws.events()):
                ws.receive_data(await stream.receive_some(65536))
            while True:
                await trio.sleep(rng.uniform(0, INTERVAL_S / 2 - 0.01))
                await stream.send_all(ws.send(Ping(b"client")))
                # drain what the server sent (its PONGs) so its socket never fills
                ws.receive_data(await stream.receive_some(65536))
                pinged.extend(trio.current_time() for e in ws.events() if isinstance(e, Ping))

    async with server(INTERVAL_S) as (port, stats), trio.open_nursery() as nursery:
        nursery.start_soon(chatter, port)
        await trio.sleep(100 * INTERVAL_S)
        assert stats.keepalive_closes == 0 and stats.connections == 1
        nursery.cancel_scope.cancel()
    assert pinged == []


async def test_quiet_clients_opened_at_different_moments_are_pinged_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Twenty quiet clients connect at random moments (no stalls): every PING leaves on
    the keepalive's deadline grid, so the twenty share a handful of wake-up moments
    instead of one each; and each is still pinged about once per interval."""
    rng = random.Random(11)
    clients = [Client(rng, pong_delay_max_s=0.0) for _ in range(20)]
    async with server(INTERVAL_S) as (port, stats), trio.open_nursery() as nursery:
        for client in clients:
            await trio.sleep(rng.uniform(0, GRID_S / 5))  # all twenty within 4 grid steps
            nursery.start_soon(client.run, port)
        await trio.sleep(20 * INTERVAL_S)
        nursery.cancel_scope.cancel()
    assert stats.keepalive_closes == 0
    pings = [at for client in clients for at in client.pings]
    off_grid = [at for at in pings if abs(at / GRID_S - round(at / GRID_S)) > 1e-6]
    assert off_grid == []
    assert all(19 <= len(client.pings) <= 21 for client in clients)
    # opened over ~4 grid steps, the twenty share ~5 moments per interval, not twenty
    assert len({round(at / GRID_S) for at in pings}) <= 6 * 21 < len(pings) // 3
