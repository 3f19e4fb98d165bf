"""Real TLS handshakes over loopback sockets with Trio, for the security tests.

`tls_pair` runs one server and one client connection and reports what each side saw;
`raw_client` / `raw_server` stand in for a side that does not speak TLS; `CorruptingProxy`
flips one byte of the server's handshake flight on its way to the client; `EchoServer`
keeps serving (with the context current at each accept) for the reload tests.  Every wait
is on a socket or an event: no sleeps.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from felix.security.certs import IssuedFiles, init_ca, issue
from felix.security.contexts import client_context, server_context
from tests.security.sslstream import close_refused, handshake

CLUSTER = "c1"
PING = b"ping"
PONG = b"pong"


@dataclass
class Pki:
    """A CA in ``dir`` with node 1 and node 2 certificates, and a foreign CA with node 2."""

    dir: Path
    other_dir: Path
    node1: IssuedFiles
    node2: IssuedFiles
    foreign2: IssuedFiles

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def server(self, files: IssuedFiles | None = None, *, require: bool = True) -> ssl.SSLContext:
        files = files or self.node1
        return server_context(files.cert, files.key, self.ca, require_client_cert=require)

    def client(self, files: IssuedFiles | None = None) -> ssl.SSLContext:
        if files is None:
            return client_context(self.ca)
        return client_context(self.ca, files.cert, files.key)


def make_pki(tmp: Path) -> Pki:
    main, other = tmp / "pki", tmp / "other"
    main.mkdir()
    other.mkdir()
    init_ca(main, CLUSTER)
    init_ca(other, CLUSTER)  # same cluster id, same CA name: only the key differs
    return Pki(main, other, issue(main, "node", 1), issue(main, "node", 2), issue(other, "node", 2))


@dataclass
class Side:
    error: BaseException | None = None
    peercert: dict[str, Any] | None = None
    received: bytes = b""


async def _listener() -> tuple[trio.SocketListener, int]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    return listener, listener.socket.getsockname()[1]


async def _tls_server(stream: trio.SocketStream, context: ssl.SSLContext, side: Side) -> None:
    tls = trio.SSLStream(stream, context, server_side=True)
    try:
        await handshake(tls)
        side.peercert = tls.getpeercert()
        side.received = bytes(await tls.receive_some())
        await tls.send_all(PONG)
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        side.error = exc
        await close_refused(stream)
        return
    await tls.aclose()


async def _tls_client(stream: trio.SocketStream, context: ssl.SSLContext, side: Side) -> None:
    tls = trio.SSLStream(stream, context, server_hostname=None)
    try:
        await handshake(tls)
        side.peercert = tls.getpeercert()
        await tls.send_all(PING)
        # A TLS 1.3 client hears of the refusal of its own certificate only here.
        side.received = bytes(await tls.receive_some())
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        side.error = exc
        await close_refused(stream)
        return
    await tls.aclose()


async def tls_pair(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[Side, Side]:
    """One connection between a TLS server and a TLS client: (server side, client side)."""
    listener, port = await _listener()
    server_side, client_side = Side(), Side()

    async def serve() -> None:
        await _tls_server(await listener.accept(), server, server_side)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await _tls_client(await trio.open_tcp_stream("127.0.0.1", port), client, client_side)
    await listener.aclose()
    return server_side, client_side


async def raw_client(
    server: ssl.SSLContext, payload: bytes, *, eof: bool = False
) -> tuple[Side, bytes]:
    """A TLS server receiving ``payload`` (then EOF, if ``eof``) from a client that does
    not speak TLS; returns the server's side and every byte the raw client got back."""
    listener, port = await _listener()
    server_side = Side()
    got = bytearray()

    async def serve() -> None:
        await _tls_server(await listener.accept(), server, server_side)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(payload)
        if eof:
            await stream.send_eof()
        while data := await stream.receive_some():
            got += data
        await stream.aclose()
    await listener.aclose()
    return server_side, bytes(got)


async def raw_server(client: ssl.SSLContext, reply: bytes) -> tuple[Side, bytes]:
    """A TLS client whose server answers the ClientHello with ``reply`` (not TLS);
    returns the client's side and the first bytes the raw server received."""
    listener, port = await _listener()
    client_side = Side()
    first = bytearray()

    async def serve() -> None:
        stream = await listener.accept()
        first.extend(await stream.receive_some())
        await stream.send_all(reply)
        await close_refused(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await _tls_client(await trio.open_tcp_stream("127.0.0.1", port), client, client_side)
    await listener.aclose()
    return client_side, bytes(first)


class CorruptingProxy:
    """Forwards one connection both ways, flipping the byte at ``offset`` of what the
    server sends (inside its encrypted handshake flight when offset is past ServerHello)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.flipped = False

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, *, corrupt: bool) -> None:
        seen = 0
        try:
            while data := await src.receive_some():
                if corrupt and seen <= self.offset < seen + len(data):
                    buf = bytearray(data)
                    buf[self.offset - seen] ^= 0xFF
                    data, self.flipped = bytes(buf), True
                seen += len(data)
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def run(self, server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[Side, Side]:
        listener, server_port = await _listener()
        proxy_listener, proxy_port = await _listener()
        server_side, client_side = Side(), Side()

        async def serve() -> None:
            await _tls_server(await listener.accept(), server, server_side)

        async def proxy() -> None:
            downstream = await proxy_listener.accept()
            upstream = await trio.open_tcp_stream("127.0.0.1", server_port)
            async with trio.open_nursery() as pumps:
                pumps.start_soon(lambda: self._pump(downstream, upstream, corrupt=False))
                pumps.start_soon(lambda: self._pump(upstream, downstream, corrupt=True))
            await downstream.aclose()
            await upstream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(proxy)
            stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
            await _tls_client(stream, client, client_side)
        await listener.aclose()
        await proxy_listener.aclose()
        return server_side, client_side


@dataclass
class EchoServer:
    """Accepts TLS connections with ``context()`` as it is at each accept; echoes."""

    context: Callable[[], ssl.SSLContext]
    port: int = 0
    errors: list[BaseException] = field(default_factory=list)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener, self.port = await _listener()
        task_status.started()
        async with listener, trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(
                    self._echo, trio.SSLStream(stream, self.context(), server_side=True)
                )

    async def _echo(self, tls: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await handshake(tls)
            while data := await tls.receive_some():
                await tls.send_all(data)
        except trio.BrokenResourceError as exc:
            self.errors.append(exc)
        await trio.aclose_forcefully(tls)

    async def connect(self, client: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
        tls = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", self.port), client, server_hostname=None
        )
        await handshake(tls)
        return tls


async def echo(tls: trio.SSLStream[trio.SocketStream], data: bytes) -> bytes:
    await tls.send_all(data)
    got = bytearray()
    while len(got) < len(data):
        chunk = await tls.receive_some()
        assert chunk, "connection closed"
        got += chunk
    return bytes(got)
