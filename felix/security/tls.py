"""TLS on the sockets Felix already drives: one `ssl.SSLObject` and two memory BIOs.

Why not `trio.SSLStream`: the watch fan-out writes each delta to hundreds of subscribers
from one loop with non-blocking socket sends, and the peer transport writes a frame
straight to an idle socket (docs/architecture.md §7).  An `SSLStream` send is an await
per connection.  With an `SSLObject` encrypting is a plain call: the fan-out encrypts
per subscriber inside its loop, and the ciphertext goes through the same non-blocking
write and bounded backlog that plaintext used.  Received bytes are fed in with
`TlsSession.decrypt`, which returns whatever plaintext they complete.

A session is driven by one connection's tasks only.  The handshake runs first, over
the stream, bounded by the caller's deadline; after it, `encrypt` and `decrypt` never
touch the socket.  TLS 1.3 only (`felix.security.contexts` builds the contexts).
Used by the peer transport, the client port and the broker library's connection.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any, Final, Protocol

import trio

HANDSHAKE_RECEIVE_BYTES: Final = 16 * 1024
READ_BYTES: Final = 64 * 1024


class TlsClosed(Exception):
    """The peer went away (or sent close_notify) during or after the handshake."""


class ByteStream(Protocol):
    """What the handshake needs of a connection (a `trio.abc.Stream` has it)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


class TlsSession:
    """One connection's TLS state: `handshake`, then `encrypt` / `decrypt` in memory."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.closed = False  # close_notify received: no more plaintext will come

    async def handshake(self, stream: ByteStream) -> None:
        """Run the handshake over ``stream``; raises `ssl.SSLError` (after sending the
        alert that tells the peer why) or `TlsClosed`.  The caller bounds the time."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush(stream)
            except ssl.SSLError:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._flush(stream)
                raise
            else:
                await self._flush(stream)
                return
            data = await stream.receive_some(HANDSHAKE_RECEIVE_BYTES)
            if not data:
                raise TlsClosed("the peer closed the connection during the TLS handshake")
            self._incoming.write(bytes(data))

    async def _flush(self, stream: ByteStream) -> None:
        data = self._outgoing.read()
        if data:
            await stream.send_all(data)

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """The TLS records carrying ``plaintext`` (all of it: the BIO never blocks).

        On the fan-out's path once per subscriber per delta: one ``write`` takes a whole
        frame (a memory BIO is never full), the loop is only the general case."""
        written = self._tls.write(plaintext)
        if written < len(plaintext):
            view = memoryview(plaintext)[written:]
            while view:
                view = view[self._tls.write(view) :]
        return self._outgoing.read()

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Feed bytes read from the socket; return the plaintext they complete (maybe
        b"").  Sets `closed` on close_notify.  Raises `ssl.SSLError` on bad records."""
        self._incoming.write(ciphertext)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._tls.read(READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def buffered(self) -> bytes:
        """Plaintext that arrived with the handshake's last flight (the peer may send
        data right behind its Finished): read it before waiting on the socket."""
        return self.decrypt(b"")

    def pending_output(self) -> bytes:
        """Records TLS itself wants sent after a `decrypt` (a KeyUpdate answer)."""
        return self._outgoing.read()

    def close_notify(self) -> bytes:
        """The close_notify alert to send before closing the socket."""
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        return self._outgoing.read()

    def peer_certificate(self) -> dict[str, Any]:
        """The verified peer certificate (empty if the peer sent none)."""
        return self._tls.getpeercert() or {}

    @property
    def version(self) -> str | None:
        return self._tls.version()
