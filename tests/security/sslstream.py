"""A bounded TLS handshake on a ``trio.SSLStream`` that tells the peer why it was refused
(test side: production connections use `felix.security.tls.TlsSession`, which flushes
the alert itself).

``trio.SSLStream`` (0.35) raises when OpenSSL refuses the other side but drops the
alert OpenSSL queued for it, so the refused peer sees only a closed connection and its
operator cannot tell an expired certificate from a crash.  `handshake` sends that alert
before raising.  It reads the stream's outgoing memory BIO, a private attribute: if a
trio release renames it the alert is simply not sent (the tests notice).  `close_refused`
then closes such a connection without a reset that would destroy the alert in flight.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

import trio

HANDSHAKE_TIMEOUT: Final = 5.0  # seconds: an unauthenticated peer holds a slot this long
_ALERT_SEND_TIMEOUT: Final = 1.0


async def handshake(stream: trio.SSLStream[Any], *, timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """``stream.do_handshake()`` within ``timeout`` (trio.TooSlowError past it).

    On a refusal (trio.BrokenResourceError from an ssl error) the alert goes out first.
    A TLS 1.3 client finishes its handshake before the server has checked the client's
    certificate, so a client learns of that refusal on its first receive instead;
    `felix.security.contexts.classify_handshake_error` reads both.
    """
    try:
        with trio.fail_after(timeout):
            await stream.do_handshake()
    except trio.BrokenResourceError:
        await send_pending_alert(stream)
        raise


async def send_pending_alert(stream: trio.SSLStream[Any]) -> bool:
    """Write what OpenSSL left in the stream's outgoing BIO (an alert) to the transport;
    True if anything was sent.  Never raises for a peer that is already gone."""
    outgoing = getattr(stream, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO) or not outgoing.pending:
        return False
    data = outgoing.read()
    with trio.move_on_after(_ALERT_SEND_TIMEOUT):
        try:
            await stream.transport_stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            return False
        return True
    return False


LINGER: Final = 1.0  # seconds a refused connection waits for the peer's EOF
_LINGER_BYTES_MAX: Final = 64 * 1024


async def close_refused(transport: trio.abc.Stream, *, linger: float = LINGER) -> None:
    """Close a connection whose handshake was refused so the alert reaches the peer.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    the alert before the peer reads it.  So: send EOF, read and drop what the peer still
    sends (bounded in bytes and time) until its EOF, then close.
    """
    with trio.move_on_after(linger):
        try:
            if isinstance(transport, trio.abc.HalfCloseableStream):
                await transport.send_eof()
            dropped = 0
            while dropped <= _LINGER_BYTES_MAX:
                data = await transport.receive_some(16 * 1024)
                if not data:
                    break
                dropped += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(transport)
