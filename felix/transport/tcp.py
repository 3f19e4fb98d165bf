"""Raft messages over TCP: length-prefixed CBOR frames, one connection per direction.

Theory of operation
-------------------
Node A sends to node B only over a connection A dialed; B's messages to A travel over the
connection B dialed (like etcd's per-direction peer streams).  So past its handshake
(one `HelloAck` back) each connection has one writer and one reader, and neither side
ever waits on the other's replies.

* **Dialer** (one task per peer): connect, send `PeerHello` with the protocol versions
  this node speaks, read the listener's `HelloAck` (the version this connection uses;
  see *Versions*), then pump the peer's bounded send queue into the socket, coalescing
  whatever is queued into one ``send_all`` (pipelined AppendEntries: nothing waits for a
  reply).  On any failure it reconnects with jittered exponential back-off.  A message
  taken from the queue when a connection breaks is lost, which Raft tolerates: it
  retransmits.
* **Direct send**: while the pump is idle (connected, its queue empty, nothing half
  sent), `send_nowait` writes the frame to the socket itself, non-blocking.  An
  AppendEntries then leaves before the leader's fsync starts and an ack as soon as the
  follower's fsync returns, instead of after a pass of the scheduler (and, on the
  leader, after the WAL thread's start-up): each hop of a commit is that much shorter.
  Whatever the socket does not take goes to the queue (as bytes, ahead of anything
  else), and the pump sends it: order per peer is kept.
* **Listener**: for each inbound connection, read `PeerHello` within a timeout, refuse a
  wrong cluster id or a version range with nothing in common with one clear log line
  (and a `HelloRefused` saying so, which the dialer logs too; with TLS, a certificate
  that names another node or cluster too), else answer `HelloAck`, then decode frames
  and hand them to the node.  A node of the cluster that is not a peer here (one about
  to join, or one removed) may only send a `JoinRequest`; its other messages are dropped
  and counted.  Any `ProtocolError` closes that connection only; the node keeps serving
  everyone else.

Versions (docs/architecture.md, "Protocol versions")
----------------------------------------------------
Each connection speaks one protocol version, chosen by the listener from both ranges
(the highest version both speak) and sent back in the one frame a listener ever writes,
`HelloAck`.  The dialer waits for it before sending anything, then encodes every frame at
that version; the listener decodes at it.  This was preferred over learning a peer's
range from its own inbound Hello (the connections are one-way): that Hello may come
later than the first message to send, or from an older process than the one now
listening, while the answer on the same connection is always about exactly the process
that will read the frames.  It costs one round trip per connection, not per message.
A message type newer than the link's version is never sent: it is dropped (Raft
retransmits, or the sender times out) with a log line (once per peer and type), counted
in ``stats.dropped_by_version``.  The range defaults from the environment
(`felix.proto.versions.supported_versions`) and is injectable for tests.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from felix.gc_pause import decode_paused
from felix.proto.errors import MessageTooNew, ProtocolError
from felix.proto.frames import CLOSED, FRAME_BYTES_MAX_DEFAULT, FrameDecoder, encode_frame
from felix.proto.raft_messages import (
    PEER,
    HelloAck,
    HelloRefused,
    JoinRequest,
    PeerHello,
    PeerMessage,
)
from felix.proto.versions import (
    BASELINE,
    VersionRange,
    VersionRefused,
    negotiate,
    supported_versions,
)
from felix.security.tls import TlsClosed, TlsSession
from felix.transport.base import Deliver, PeerPayload, PeerQueues, QueueItem, TransportStats

log = logging.getLogger("felix.transport")

# ``recv(n)`` allocates n bytes up front; from 128 KiB glibc does that with mmap + munmap
# (~12 µs per receive), so reads stay below it.
RECEIVE_BYTES_MAX = 64 * 1024
SEND_BATCH_BYTES_MAX = 1 << 20


@dataclass(frozen=True, slots=True)
class PeerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TcpTransportConfig:
    node_id: int
    cluster_id: str
    listen_host: str
    listen_port: int  # 0 picks a free port; see `TcpTransport.listen_port`
    peers: Mapping[int, PeerAddress]
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    send_queue_max: int = 1024  # messages per peer; overflow drops
    backoff_s_min: float = 0.02
    backoff_s_max: float = 1.0
    connect_timeout_s: float = 2.0
    handshake_timeout_s: float = 5.0  # TLS handshake and Hello together
    tls: PeerTls | None = None  # None: plaintext (only with an explicit --insecure)
    versions: VersionRange = field(default_factory=lambda: supported_versions(os.environ))


@dataclass(frozen=True, slots=True)
class PeerTls:
    """Mutual TLS for peer links, from the server's certificate files.

    The contexts are asked for at every connection, so reloaded certificates apply to
    new connections while existing ones keep theirs.  ``node_of`` returns the node id
    a verified peer certificate names (raising `ValueError` saying why it names none
    of this cluster's nodes); ``describe`` turns a failed handshake into operator
    words (unknown CA, expired, ...)."""

    server_context: Callable[[], ssl.SSLContext]
    client_context: Callable[[], ssl.SSLContext]
    node_of: Callable[[dict[str, Any]], int]
    describe: Callable[[BaseException], str] = str


class HandshakeRefused(ProtocolError):
    """The peer's Hello does not belong in this cluster."""


class _Link:
    """The socket of one live outbound connection, for direct sends while ``idle``."""

    __slots__ = ("idle", "sock", "tls", "version")

    def __init__(self, sock: socket.socket, tls: TlsSession | None, version: int) -> None:
        self.sock = sock  # a dup of the stream's socket: same connection, own fd
        self.tls = tls  # the connection's TLS state: frames are encrypted before a send
        self.version = version  # the protocol version the listener chose (`HelloAck`)
        self.idle = False  # the pump waits on an empty queue, nothing half sent


def _cancel_pending() -> bool:
    """This task's scope is cancelled, the cancel not delivered yet (no checkpoint)."""
    return trio.current_effective_deadline() == -math.inf


class TcpTransport:
    def __init__(self, config: TcpTransportConfig, deliver: Deliver, rng: random.Random) -> None:
        if config.node_id in config.peers:
            raise ValueError(f"node {config.node_id} lists itself among its peers")
        self.config = config
        self.node_id = config.node_id
        self.stats = TransportStats()
        self.listen_port = config.listen_port
        self._deliver = deliver
        self._rng = rng
        self._addresses = dict(config.peers)
        self._listeners: list[trio.SocketListener] = []
        self._nursery: trio.Nursery | None = None
        self._queues = PeerQueues(config.peers, config.send_queue_max, self.stats)
        self._links: dict[int, _Link] = {}
        self._dialers: dict[int, trio.CancelScope] = {}
        self._drops_logged: set[tuple[int, str]] = set()  # (peer, type) said once each
        versions = config.versions
        self._redial: dict[int, trio.Event] = {}  # set: dial that peer now (it is back)
        self._hello = encode_frame(
            PEER.encode(PeerHello(config.cluster_id, config.node_id, versions.min, versions.max))
        )

    def peer_version(self, peer: int) -> int | None:
        """The protocol version of the live connection to ``peer`` (None: none now)."""
        link = self._links.get(peer)
        return None if link is None else link.version

    def send_nowait(self, to: int, message: PeerPayload) -> None:
        """See `PeerTransport.send_nowait`: queued, or written to an idle link at once."""
        link = self._links.get(to)
        if link is None or not link.idle:
            self._queues.offer(to, message)
            return
        frame = self._frame(message, link.version, to)
        if frame is None:
            return
        if link.tls is not None:
            frame = link.tls.encrypt(frame)  # what is left unsent is ciphertext: queued as is
        try:
            sent = link.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            link.idle = False  # the pump finds out too, and reconnects
            self._queues.offer(to, frame)
            return
        if sent == len(frame):
            self.stats.sent += 1
            self.stats.sent_direct += 1
            return
        link.idle = False  # the rest must go before anything else: the pump sends it
        self.stats.direct_cut_short += 1
        self._queues.offer(to, frame[sent:])  # fits: the queue was empty (``idle``)

    def set_peer_address(self, peer: int, address: PeerAddress) -> None:
        """Where to dial ``peer`` from the next connection attempt on."""
        if peer not in self._addresses:
            raise KeyError(f"node {peer} is not a configured peer")
        self._addresses[peer] = address

    def add_peer(self, peer: int, address: str) -> None:
        """Dial a node that joined the cluster (a learner being added)."""
        if peer == self.node_id:
            return
        host, _, port = address.rpartition(":")
        parsed = PeerAddress(host.strip("[]"), int(port))
        if peer in self._addresses:
            self._addresses[peer] = parsed
            return
        self._addresses[peer] = parsed
        if peer not in self._queues.senders:
            self._queues.add(peer)
        if self._nursery is not None:
            self._nursery.start_soon(self._dial_loop, peer)

    def peer_ids(self) -> frozenset[int]:
        return frozenset(self._addresses)

    def link_versions(self) -> dict[int, int]:
        """The protocol version of each live outbound link (docs/architecture.md §16)."""
        return {peer: link.version for peer, link in self._links.items()}

    def remove_peer(self, peer: int) -> None:
        """See `PeerTransport.remove_peer`."""
        self._addresses.pop(peer, None)
        self._redial.pop(peer, None)
        dialer = self._dialers.pop(peer, None)
        if dialer is not None:
            dialer.cancel()
        self._queues.remove(peer)

    def _known_peer(self, node_id: int) -> bool:
        return node_id in self._addresses

    async def bind(self) -> int:
        """Open the listening socket now (so port 0 can be learned before `run`)."""
        if not self._listeners:
            self._listeners = await trio.open_tcp_listeners(
                self.config.listen_port, host=self.config.listen_host
            )
            self.listen_port = self._listeners[0].socket.getsockname()[1]
        return self.listen_port

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.bind()
        listeners, self._listeners = self._listeners, []
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._serve_inbound, listeners)
            for peer in list(self._addresses):
                nursery.start_soon(self._dial_loop, peer)
            task_status.started()

    # --- outbound ------------------------------------------------------------------

    async def _dial_loop(self, peer: int) -> None:
        if peer in self._dialers or peer not in self._addresses:
            return  # already dialed, or removed before this task started
        with trio.CancelScope() as scope:
            self._dialers[peer] = scope
            try:
                await self._dial_forever(peer)
            finally:
                if self._dialers.get(peer) is scope:
                    del self._dialers[peer]

    async def _dial_forever(self, peer: int) -> None:
        """Dial ``peer`` and pump its queue, again and again, until it is removed.

        `remove_peer` cancels this task, but a cancel arrives only at the task's next
        checkpoint: a task whose connect or handshake had already finished when the
        peer was removed runs on until then, so every step that needs the peer's
        address or queue checks that it is still there."""
        backoff = self.config.backoff_s_min
        failures = 0
        while True:
            address = self._addresses.get(peer)
            if address is None:
                return  # removed
            try:
                with trio.fail_after(self.config.connect_timeout_s):
                    stream = await trio.open_tcp_stream(address.host, address.port)
            except (OSError, trio.TooSlowError) as exc:
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.info("peer %d at %s unreachable (%s); retrying", peer, address, exc)
            else:
                try:
                    tls = await self._secure_outbound(peer, stream)
                    version = await self._hello_outbound(peer, stream, tls)
                except HandshakeRefused as exc:
                    self.stats.handshakes_refused += 1
                    log.warning("refused the link to peer %d at %s: %s", peer, address, exc)
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.info("connection to peer %d lost in its handshake: %s", peer, exc)
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.aclose()
                else:
                    failures = 0
                    backoff = self.config.backoff_s_min
                    self.stats.connects += 1
                    await self._pump(peer, stream, tls, version)
            if _cancel_pending() or not self._known_peer(peer):
                return  # removed while connected or connecting
            # Full jitter keeps restarted nodes from reconnecting in lockstep.  A peer
            # that dials us is back: dial it at once, so a restarted follower hears
            # from the leader before its election timeout (no needless pre-vote).
            wake = self._redial[peer] = trio.Event()
            with trio.move_on_after(backoff * (0.5 + self._rng.random() / 2)):
                await wake.wait()
            backoff = self.config.backoff_s_min if wake.is_set() else backoff
            backoff = min(backoff * 2, self.config.backoff_s_max)

    async def _secure_outbound(self, peer: int, stream: trio.SocketStream) -> TlsSession | None:
        """The TLS session of a new outbound connection (None for plaintext); raises
        `HandshakeRefused` if the handshake fails or the server is not ``peer``."""
        tls = self.config.tls
        if tls is None:
            return None
        session = TlsSession(tls.client_context(), server_side=False)
        try:
            with trio.fail_after(self.config.handshake_timeout_s):
                await session.handshake(stream)
        except trio.TooSlowError:
            raise HandshakeRefused("no TLS handshake in time") from None
        except (ssl.SSLError, TlsClosed, OSError, trio.BrokenResourceError) as exc:
            raise HandshakeRefused(tls.describe(exc)) from None
        try:
            named = tls.node_of(session.peer_certificate())
        except ValueError as exc:
            raise HandshakeRefused(str(exc)) from None
        if named != peer:
            raise HandshakeRefused(f"its certificate names node {named}")
        return session

    async def _hello_outbound(
        self, peer: int, stream: trio.SocketStream, tls: TlsSession | None
    ) -> int:
        """Send `PeerHello`, and return the version of the listener's `HelloAck`; raises
        `HandshakeRefused` on a `HelloRefused`, no answer in time, or a bad answer."""
        source: _Source = stream if tls is None else _Decrypting(stream, tls)
        try:
            with trio.fail_after(self.config.handshake_timeout_s):
                await stream.send_all(self._hello if tls is None else tls.encrypt(self._hello))
                reply = await _read_message(source, FrameDecoder(self.config.frame_bytes_max))
        except trio.TooSlowError:
            raise HandshakeRefused("no answer to its Hello in time") from None
        except ProtocolError as exc:
            raise HandshakeRefused(f"bad answer to its Hello: {exc}") from None
        if isinstance(reply, HelloRefused):
            raise HandshakeRefused(f"it refused the connection: {reply.reason}")
        if not isinstance(reply, HelloAck):
            what = "end of stream" if reply is None else type(reply).__name__
            raise HandshakeRefused(f"expected HelloAck, got {what}")
        if reply.protocol_version not in self.config.versions:
            raise HandshakeRefused(
                f"it chose protocol version {reply.protocol_version},"
                f" this node speaks {self.config.versions}"
            )
        return reply.protocol_version

    async def _pump(
        self, peer: int, stream: trio.SocketStream, tls: TlsSession | None, version: int
    ) -> None:
        receiver = self._queues.receivers.get(peer)
        if receiver is None or _cancel_pending():
            # Removed (`remove_peer`: its queue is gone, this task's cancel pending)
            # after the handshake finished: close the connection, take over nothing.
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await stream.aclose()
            return
        link: _Link | None = None
        seal = tls.encrypt if tls is not None else _plain
        try:
            async with stream:
                link = self._links[peer] = _Link(
                    socket.socket(fileno=os.dup(stream.socket.fileno())), tls, version
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._until_closed, peer, stream, nursery.cancel_scope)
                    await self._send_loop(peer, stream, receiver, link, seal, version)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("connection to peer %d lost: %s", peer, exc or type(exc).__name__)
        finally:
            if link is not None:
                link.idle = False
                if self._links.get(peer) is link:
                    del self._links[peer]
                link.sock.close()

    async def _until_closed(
        self, peer: int, stream: trio.SocketStream, pump: trio.CancelScope
    ) -> None:
        """The listener writes nothing after its `HelloAck`, so the end of the stream
        means the peer went away (a restart): end the link now rather than at the next
        send, so the redial -- and its version negotiation -- happen at once."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while await stream.receive_some(4096):
                pass  # at most TLS records after the handshake; nothing to act on
        log.info("connection to peer %d closed by the peer", peer)
        pump.cancel()

    async def _send_loop(
        self,
        peer: int,
        stream: trio.SocketStream,
        receiver: trio.MemoryReceiveChannel[QueueItem],
        link: _Link,
        seal: Callable[[bytes], bytes],
        version: int,
    ) -> None:
        while True:
            try:
                first = receiver.receive_nowait()
            except trio.WouldBlock:
                link.idle = True  # send_nowait may write directly until it queues
                first = await receiver.receive()
                link.idle = False
            # The unsent rest of a direct send (ciphertext already, with TLS)
            # goes first, as it is; the messages after it are framed and sealed.
            rest = first if isinstance(first, bytes) else b""
            head = None if rest else self._frame(first, version, peer)
            batch = [] if head is None else [head]
            size = len(rest) + sum(map(len, batch))
            while size < SEND_BATCH_BYTES_MAX:
                try:
                    frame = self._frame(receiver.receive_nowait(), version, peer)
                except trio.WouldBlock:
                    break
                if frame is not None:
                    batch.append(frame)
                    size += len(frame)
            if not rest and not batch:
                continue  # everything taken was too new for this link: dropped
            await stream.send_all(rest + seal(b"".join(batch)) if batch else rest)
            self.stats.sent += len(batch) + bool(rest)

    def _frame(self, item: QueueItem, version: int, peer: int) -> bytes | None:
        """``item`` framed at the link's ``version``; None (dropped, logged) if that
        version has no such message type."""
        if isinstance(item, bytes):
            # Only ever at a queue's head (the rest of a direct send goes to an empty
            # queue), where the pump sends it before framing anything.
            raise AssertionError("wire bytes behind a queued message")
        try:
            payload = PEER.encode(item, version)
        except MessageTooNew as exc:
            self.stats.dropped_by_version += 1
            if (peer, exc.type_name) not in self._drops_logged:  # a retransmit: not again
                self._drops_logged.add((peer, exc.type_name))
                log.warning("not sending to peer %d: %s; dropped (logged once)", peer, exc)
            return None
        return encode_frame(payload, self.config.frame_bytes_max)

    # --- inbound -------------------------------------------------------------------

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(self.config.frame_bytes_max)
        remote = describe_remote(stream)
        self.stats.inbound_connections += 1
        async with stream:  # closed only after the reason is counted and logged
            try:
                await self._receive_loop(stream, decoder, remote)
            except HandshakeRefused as exc:
                self.stats.handshakes_refused += 1
                log.warning("refused peer connection from %s: %s", remote, exc)
            except ProtocolError as exc:
                self.stats.protocol_errors += 1
                log.warning("closing peer connection from %s: protocol error: %s", remote, exc)
            except trio.TooSlowError:
                log.warning(
                    "closing peer connection from %s: no handshake and Hello within %.1f s",
                    remote,
                    self.config.handshake_timeout_s,
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _receive_loop(
        self, stream: trio.SocketStream, decoder: FrameDecoder, remote: str
    ) -> None:
        source: _Source = stream
        certified: int | None = None
        session: TlsSession | None = None
        with trio.fail_after(self.config.handshake_timeout_s):
            if self.config.tls is not None:
                session, certified = await self._secure_inbound(stream)
                source = _Decrypting(stream, session)
            hello = await _read_message(source, decoder)
            try:
                sender, version = self._check_hello(hello, remote)
                if certified is not None and certified != sender:
                    raise HandshakeRefused(
                        f"Hello says node {sender}, its certificate names {certified}"
                    )
            except HandshakeRefused as exc:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await _send_handshake(stream, session, HelloRefused(str(exc)[:1000]))
                raise
            await _send_handshake(stream, session, HelloAck(version))
        decode = functools.partial(PEER.decode, version=version)
        warned = False
        if sender in self._redial:
            self._redial[sender].set()
        while True:
            message = await _read_message(source, decoder, decode)
            if message is None:
                return
            if isinstance(message, PeerHello):
                raise ProtocolError("second Hello on one connection")
            if isinstance(message, (HelloAck, HelloRefused)):
                raise ProtocolError(f"{type(message).__name__} from the dialer")
            self.stats.received += 1
            if not isinstance(message, JoinRequest) and not self._known_peer(sender):
                # A node of this cluster that is not a member (yet, or any more): it may
                # only ask to join; its Raft messages must not disturb the members.
                self.stats.dropped_not_member += 1
                if not warned:
                    warned = True
                    log.warning(
                        "peer connection from %s: node %d is not a member here; dropping"
                        " its %s (only a JoinRequest is accepted from a non-member)",
                        remote,
                        sender,
                        type(message).__name__,
                    )
                continue
            await self._deliver(sender, message)

    async def _secure_inbound(self, stream: trio.SocketStream) -> tuple[TlsSession, int]:
        """The TLS session of an inbound connection and the node its verified client
        certificate names; raises `HandshakeRefused` saying why not."""
        tls = self.config.tls
        assert tls is not None
        session = TlsSession(tls.server_context(), server_side=True)
        try:
            await session.handshake(stream)
        except (ssl.SSLError, TlsClosed) as exc:
            raise HandshakeRefused(f"TLS handshake failed: {tls.describe(exc)}") from None
        try:
            return session, tls.node_of(session.peer_certificate())
        except ValueError as exc:
            raise HandshakeRefused(f"TLS identity refused: {exc}") from None

    def _check_hello(self, hello: object, remote: str) -> tuple[int, int]:
        """The sender and the protocol version of an acceptable Hello."""
        if not isinstance(hello, PeerHello):
            what = "end of stream" if hello is None else type(hello).__name__
            raise HandshakeRefused(f"expected Hello first, got {what}")
        if hello.cluster_id != self.config.cluster_id:
            raise HandshakeRefused(
                f"node {hello.node_id} belongs to cluster {hello.cluster_id!r},"
                f" this is {self.config.cluster_id!r}"
            )
        them = f"node {hello.node_id}"
        try:
            theirs = VersionRange(hello.version_min, hello.version_max)
            version = negotiate(self.config.versions, theirs, us=f"node {self.node_id}", them=them)
        except VersionRefused as exc:
            raise HandshakeRefused(str(exc)) from None
        except ValueError as exc:
            raise HandshakeRefused(f"{them} sent {exc}") from None
        return hello.node_id, version


class _Source(Protocol):
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


class _Decrypting:
    """The plaintext side of an inbound TLS connection (b"" at the end of the stream)."""

    def __init__(self, stream: trio.SocketStream, session: TlsSession) -> None:
        self._stream = stream
        self._session = session
        self._pending = session.buffered()  # the Hello may have come with the Finished

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            pending, self._pending = self._pending, b""
            return pending
        while True:
            if self._session.closed:
                return b""
            data = await self._stream.receive_some(max_bytes)
            if not data:
                return b""
            try:
                plain = self._session.decrypt(data)
            except ssl.SSLError as exc:
                raise ProtocolError(f"bad TLS record: {exc}") from None
            if plain:
                return plain


def _plain(data: bytes) -> bytes:
    return data


async def _send_handshake(
    stream: trio.SocketStream, session: TlsSession | None, message: HelloAck | HelloRefused
) -> None:
    """The listener's one frame on a connection (handshake messages are baseline)."""
    frame = encode_frame(PEER.encode(message, BASELINE))
    await stream.send_all(frame if session is None else session.encrypt(frame))


async def _read_message(
    source: _Source,
    decoder: FrameDecoder,
    decode: Callable[[bytes | bytearray | memoryview], Any] = PEER.decode,
) -> PeerMessage | None:
    """The next message (``decode``: at the connection's version; the baseline for the
    handshake), or None on a clean end of stream."""
    while True:
        frame = decoder.next_frame()
        if isinstance(frame, bytes):
            message: PeerMessage = decode_paused(decode, frame)
            return message
        if frame is CLOSED:
            return None
        decoder.feed(await source.receive_some(RECEIVE_BYTES_MAX))


def describe_remote(stream: trio.SocketStream) -> str:
    """``host:port`` of the other end, for log lines ("?" once the socket is gone)."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
