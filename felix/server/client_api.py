"""The client API over WebSockets: WatchUpdates, GetSnapshot, ReportHealth and writes.

Each connection runs in its own nursery: a reader task takes client messages and runs
each request as its own task (bounded by ``requests_in_flight_max``), so one client can
pipeline many writes; a ``Hello`` starts the watch stream on the same connection.
Replies and deltas share one `FrameSender`, so they leave in the order they were made.
Every handler is wrapped: a bad message gets an `Error` reply (a malformed frame closes
the connection), never an exception that would take the server down.

Writes and health reports reaching a follower are forwarded to the leader over the peer
link (`felix.server.forwarding.Forwarder`), so a client may use any node.  Outcomes
arrive typed (`felix.server.outcome.Outcome`) and become `WriteResult` or `Error` here.

With an `Authenticator`, a connection acts as one `Principal`: a bearer token in the
upgrade request's ``Authorization`` header, or else in the first message, a ``Hello``,
within ``AUTH_TIMEOUT_S``.  Every request and every stream is then checked against the
role rules (`felix.server.auth`); a refusal is ``Error{unauthorized}`` and changes
nothing.  Every ``RECHECK_INTERVAL_S`` the open sessions are checked again, so a revoked
or expired token's streams close within a second (docs/architecture.md §12).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import trio

from felix.gc_pause import decode_paused
from felix.metadata.commands import command_from_request, encode_command
from felix.metadata.errors import CommandError
from felix.proto.client_messages import (
    BACKUP_CHUNK_BYTES_MAX,
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    BackupChunk,
    ClientHello,
    Error,
    ErrorCode,
    GetBackup,
    GetSnapshot,
    HelloAck,
    ListTokens,
    PlannerRan,
    ReportHealth,
    RunPlanner,
    TokenInfo,
    TokenList,
    WriteRequest,
    WriteResult,
)
from felix.proto.errors import ProtocolError
from felix.proto.raft_messages import ForwardKind
from felix.proto.versions import (
    BASELINE,
    VersionRange,
    VersionRefused,
    negotiate,
    supported_versions,
)
from felix.proto.ws_frames import close_frame, server_frame
from felix.server.auth import (
    INSECURE,
    Authenticator,
    Principal,
    Unauthorized,
    UnknownToken,
    authorize_admin,
    authorize_health,
    authorize_watch,
    authorize_write,
)
from felix.server.forwarding import Forwarder
from felix.server.metadata_sm import MetadataStore
from felix.server.outcome import Outcome
from felix.server.raft_node import RaftNode
from felix.server.requests import NodeError
from felix.server.sessions import encode_report
from felix.server.snapshot_cache import SnapshotCache, send_snapshot
from felix.server.watch_hub import HubLimits, WatchHub
from felix.server.ws_server import (
    ConnectionGone,
    ServeLimits,
    ServerTls,
    ServeStats,
    WsConnection,
    serve_ws,
)

log = logging.getLogger("felix.client_api")

REQUESTS_IN_FLIGHT_MAX = 256
BACKLOG_BYTES_MAX = 4 * 1024 * 1024
AUTH_TIMEOUT_S = 5.0  # a connection without credentials in its upgrade must send Hello
RECHECK_INTERVAL_S = 0.25
CLOSE_UNAUTHORIZED = 4003
LINGER_S = 1.0  # how long a refused connection's last bytes are read and dropped
UNAUTHENTICATED_MAX = 256  # connections waiting for credentials at once; more: refused


@dataclass(slots=True)
class _Session:
    principal: Principal
    scope: trio.CancelScope
    protocol_version: int = BASELINE  # until a Hello with a range negotiates another


@dataclass(slots=True)
class AuthStats:
    refused: dict[str, int] = field(default_factory=dict)  # by operation
    closed_revoked: int = 0


class ClientApi:
    def __init__(
        self,
        node: RaftNode,
        forwarder: Forwarder,
        store: MetadataStore | None = None,
        hub: WatchHub | None = None,
        *,
        requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX,
        limits: HubLimits | None = None,
        auth: Authenticator | None = None,
        tls: ServerTls | None = None,
        serve_limits: ServeLimits | None = None,
        cluster_id: str = "",
        versions: VersionRange | None = None,
    ) -> None:
        self.node = node
        # The protocol versions offered to clients (default: this build's, from the env).
        self.versions = versions or supported_versions(os.environ)
        self.cluster_id = cluster_id
        self.auth = auth  # None: every connection is admin (``--insecure`` only)
        self.tls = tls
        self.serve_limits = serve_limits or ServeLimits()
        self.serve_stats = ServeStats()
        self.auth_stats = AuthStats()
        self._sessions: dict[WsConnection, _Session] = {}
        self.unauthenticated = 0  # connections waiting for their credentials now
        self.forwarder = forwarder
        self.store = store
        self.hub = hub
        self.limits = limits or (hub.limits if hub else HubLimits())
        # One encode per version, shared with the watch hub's snapshots (one per node).
        self.snapshots = hub.snapshots if hub else SnapshotCache(self.limits.snapshot_limits())
        self.requests_in_flight_max = requests_in_flight_max
        self.connections = 0
        self.port = 0

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(
                lambda task_status: serve_ws(
                    self.handle,
                    host,
                    port,
                    backlog_bytes_max=BACKLOG_BYTES_MAX,
                    tls=self.tls,
                    stats=self.serve_stats,
                    limits=self.serve_limits,
                    task_status=task_status,
                )
            )
            if self.hub is not None:
                nursery.start_soon(self.hub.run)
            if self.auth is not None:
                nursery.start_soon(self._recheck_sessions, self.auth)
            task_status.started(self.port)

    async def _recheck_sessions(self, auth: Authenticator) -> None:
        """Close the sessions whose credentials no longer hold (revoked, expired)."""
        while True:
            await trio.sleep(RECHECK_INTERVAL_S)
            for conn, session in list(self._sessions.items()):
                why = auth.still_valid(session.principal)
                if why is not None:
                    self.auth_stats.closed_revoked += 1
                    log.info("closing the session of %s: %s", session.principal.describe(), why)
                    self._send(conn, Error(ErrorCode.UNAUTHORIZED, why, None))
                    conn.sender.send_final(close_frame(CLOSE_UNAUTHORIZED, why[:100]))
                    session.scope.cancel()
                    del self._sessions[conn]

    async def handle(self, conn: WsConnection) -> None:
        self.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                await self._read_requests(conn, nursery)
                nursery.cancel_scope.cancel()
        except* ConnectionGone:
            pass
        finally:
            self.connections -= 1

    async def _receive(self, conn: WsConnection, version: int = BASELINE) -> Any:
        """The next client message (at protocol ``version``); None (after answering and
        closing) if malformed."""
        try:
            payload = await conn.receive()
            if version == BASELINE:
                return decode_paused(CLIENT_TO_SERVER.decode, payload)
            return decode_paused(lambda data: CLIENT_TO_SERVER.decode(data, version), payload)
        except ProtocolError as exc:
            self._send(conn, Error(ErrorCode.BAD_REQUEST, str(exc), None))
            await conn.close(1002, "protocol error")
            return None

    async def _read_requests(self, conn: WsConnection, nursery: trio.Nursery) -> None:
        opened = await self._authenticate(conn)
        if opened is None:
            return
        principal, message = opened
        session = self._sessions[conn] = _Session(principal, nursery.cancel_scope)
        try:
            await self._serve_session(conn, nursery, session, message)
        finally:
            self._sessions.pop(conn, None)

    async def _serve_session(
        self, conn: WsConnection, nursery: trio.Nursery, session: _Session, message: Any
    ) -> None:
        limit = trio.Semaphore(self.requests_in_flight_max)
        principal = session.principal
        watching = False
        while True:
            if message is None:
                message = await self._receive(conn, session.protocol_version)
                if message is None:
                    return
            refusal = self._refusal(principal, message)
            if refusal is not None:
                self._refuse(conn, type(message).__name__, refusal, _request_id(message))
            elif isinstance(message, ClientHello):
                if watching or self.hub is None:
                    self._send(conn, Error(ErrorCode.BAD_REQUEST, "already watching", None))
                elif not await self._negotiate(conn, session, message):
                    return
                else:
                    watching = True
                    resume = self._resume_point(message)
                    nursery.start_soon(self._watch, conn, resume, session.protocol_version, nursery)
            else:
                await limit.acquire()
                nursery.start_soon(self._answer_one, conn, message, principal, limit)
            message = None

    async def _authenticate(self, conn: WsConnection) -> tuple[Principal, Any] | None:
        """Who this connection acts as, and the first message if it had to be read to
        find out; None once a connection without valid credentials is answered."""
        auth = self.auth
        if auth is None:
            return INSECURE, None
        if self.unauthenticated >= UNAUTHENTICATED_MAX:
            self._refuse(conn, "authenticate", "too many connections still authenticating", None)
            conn.sender.send_final(close_frame(CLOSE_UNAUTHORIZED, "busy"))
            return None
        self.unauthenticated += 1
        try:
            return await self._authenticate_one(conn, auth)
        finally:
            self.unauthenticated -= 1

    async def _authenticate_one(
        self, conn: WsConnection, auth: Authenticator
    ) -> tuple[Principal, Any] | None:
        header = conn.headers.get("authorization")
        message: Any = None
        try:
            if header is not None:
                scheme, _, token = header.partition(" ")
                if scheme.lower() != "bearer":
                    raise Unauthorized("the Authorization header must be 'Bearer <token>'")
                return await self._token_principal(auth, token.strip()), None
            certificate = conn.tls.peer_certificate() if conn.tls is not None else {}
            if certificate:  # verified against the client CA in the handshake
                return auth.certificate(certificate), None
            with trio.move_on_after(AUTH_TIMEOUT_S) as timer:
                message = await self._receive(conn)
            if timer.cancelled_caught:
                raise Unauthorized(f"no credentials within {AUTH_TIMEOUT_S:.0f} s")
            if message is None:
                return None
            if not isinstance(message, ClientHello):
                raise Unauthorized(
                    f"{type(message).__name__} before authentication: send a bearer token"
                    " in the upgrade request or a Hello with a token first"
                )
            return await self._token_principal(auth, message.token), message
        except Unauthorized as exc:
            self._refuse(conn, "authenticate", str(exc), _request_id(message))
            conn.sender.send_final(close_frame(CLOSE_UNAUTHORIZED, "unauthorized"))
            await _discard_until_closed(conn)
            return None

    async def _token_principal(self, auth: Authenticator, token: str) -> Principal:
        """`Authenticator.authenticate`, linearizable for unknown tokens: a token minted
        on the leader an instant ago may not be applied here yet, so an unknown id waits
        for a ReadIndex point (thesis §6.4), bounded by `AUTH_TIMEOUT_S`, then is
        checked once more.  Only tokens that parse and are unknown pay this, bounded by
        the connections allowed to be authenticating at once."""
        try:
            return auth.authenticate(token)
        except UnknownToken:
            await self._caught_up_to_leader(AUTH_TIMEOUT_S)
            return auth.authenticate(token)

    async def _caught_up_to_leader(self, timeout_s: float) -> None:
        """Return once this node has applied the leader's ReadIndex point (asked over the
        peer link from a follower), or after ``timeout_s`` (then the local view stands)."""
        with trio.move_on_after(timeout_s):
            point = await self.forwarder.submit(ForwardKind.READ, b"", timeout_s=timeout_s)
            while point.error is None and self.node.applied_index < point.index:
                await self.node.wait_changed()

    async def _negotiate(self, conn: WsConnection, session: _Session, hello: ClientHello) -> bool:
        """The protocol version of the session from the Hello's range, announced in a
        `HelloAck` ahead of anything the watch sends; a Hello without a range (an older
        client) keeps the baseline and gets no `HelloAck`.  False (after an `Error`
        naming both ranges, and closing) if the ranges have no version in common."""
        if hello.version_min is None and hello.version_max is None:
            return True
        try:
            low = hello.version_min or BASELINE
            theirs = VersionRange(low, hello.version_max or low)
            version = negotiate(self.versions, theirs, them="the client")
        except ValueError as exc:  # VersionRefused, or an empty range
            why = str(exc) if isinstance(exc, VersionRefused) else f"the client sent {exc}"
            log.info("refused a watch: %s", why)
            self._send(conn, Error(ErrorCode.BAD_REQUEST, why, None))
            await conn.close(1002, "no common protocol version")
            return False
        session.protocol_version = version
        self._send(conn, HelloAck(version))
        return True

    def _resume_point(self, hello: ClientHello) -> int | None:
        """``from_version``, unless the view it is in has another lineage than ours (a
        restored cluster, docs/architecture.md §14): then a snapshot, never deltas
        joined to another history."""
        if self.store is not None and hello.history != self.store.history():
            if hello.from_version is not None:
                log.info(
                    "watcher at version %d of lineage %r, ours is %r: sending a snapshot",
                    hello.from_version, hello.history, self.store.history(),
                )  # fmt: skip
            return None
        return hello.from_version

    def _refusal(self, principal: Principal, message: Any) -> str | None:
        """Why ``principal`` may not send ``message`` (None: it may; writes are checked
        once their command is parsed, in `_write`)."""
        if isinstance(message, ClientHello):
            if self.auth is not None and message.token:
                try:
                    again = self.auth.authenticate(message.token)
                except Unauthorized as exc:
                    return str(exc)
                if again != principal:
                    return (
                        f"the Hello's token is {again.describe()},"
                        f" the session's {principal.describe()}"
                    )
            return authorize_watch(principal, message.node_id)
        if isinstance(message, ReportHealth):
            return authorize_health(principal, message.node_id)
        if isinstance(message, ListTokens):
            return authorize_admin(principal, "list tokens")
        if isinstance(message, RunPlanner):
            return authorize_admin(principal, "run the replica planner")
        if isinstance(message, GetBackup):
            return authorize_admin(principal, "take a backup")
        return None

    def _refuse(self, conn: WsConnection, operation: str, why: str, request_id: int | None) -> None:
        refused = self.auth_stats.refused
        refused[operation] = refused.get(operation, 0) + 1
        log.info("refused %s: %s", operation, why)
        self._send(conn, Error(ErrorCode.UNAUTHORIZED, why, request_id))

    async def _watch(
        self, conn: WsConnection, from_version: int | None, version: int, nursery: trio.Nursery
    ) -> None:
        assert self.hub is not None
        reason = await self.hub.watch(conn, from_version, version)
        await conn.close(4001, reason[:100])
        nursery.cancel_scope.cancel()

    async def _answer_one(
        self, conn: WsConnection, message: Any, principal: Principal, limit: trio.Semaphore
    ) -> None:
        try:
            reply = await self._answer(conn, message, principal)
            if reply is not None:
                self._send(conn, reply)
        except Exception as exc:  # never let one request take the connection down
            log.exception("request failed")
            self._send(conn, Error(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", None))
        finally:
            limit.release()

    async def _answer(self, conn: WsConnection, message: Any, principal: Principal) -> Any:
        if isinstance(message, WriteRequest):
            return await self._write(conn, message, principal)
        if isinstance(message, GetSnapshot):
            return await self._snapshot(conn, message)
        if isinstance(message, ListTokens):
            return self._tokens(message.request_id)
        if isinstance(message, GetBackup):
            return await self._backup(conn, message.request_id)
        if isinstance(message, RunPlanner):
            if not self.forwarder.serves(ForwardKind.REBALANCE):
                return Error(ErrorCode.BAD_REQUEST, "no replica planner here", message.request_id)
            outcome = await self.forwarder.submit(ForwardKind.REBALANCE, b"")
            return _error(outcome, message.request_id) or PlannerRan(
                message.request_id, outcome.index, outcome.detail
            )
        if isinstance(message, ReportHealth):
            if not self.forwarder.serves(ForwardKind.HEALTH):
                return Error(ErrorCode.BAD_REQUEST, "health reports are not served here", None)
            outcome = await self.forwarder.submit(ForwardKind.HEALTH, encode_report(message))
            return _error(outcome, None)
        return Error(ErrorCode.BAD_REQUEST, f"unexpected {type(message).__name__}", None)

    def _tokens(self, request_id: int) -> Any:
        if self.store is None:
            return Error(ErrorCode.BAD_REQUEST, "this node serves no metadata", request_id)
        tokens = self.store.tokens()
        listed = tuple(
            TokenInfo(t.id, t.role, t.node_id, t.expires_at_ms, t.description)
            for t in (tokens[k] for k in sorted(tokens))
        )
        return TokenList(request_id, self.store.version, listed)

    async def _snapshot(self, conn: WsConnection, request: GetSnapshot) -> Any:
        store = self.store
        if store is None:
            return Error(ErrorCode.BAD_REQUEST, "this node serves no metadata", request.request_id)
        if request.linearizable:
            try:
                await self.node.read_index()
            except NodeError as exc:
                return Error(exc.code, str(exc), request.request_id)
        session = self._sessions.get(conn)
        protocol_version = BASELINE if session is None else session.protocol_version
        async with self.snapshots.send_slot():  # the current view: at or past the read point
            snapshot = await self.snapshots.get(
                store.version, store.history(), store.view, protocol_version, request.request_id
            )
            await send_snapshot(conn, snapshot, request.request_id)
        return None

    async def _backup(self, conn: WsConnection, request_id: int) -> Any:
        """The control plane's own snapshot bytes (records, token hashes, lineage) at a
        linearizable version, in `BackupChunk`s (docs/architecture.md §14).  Encoded
        off the event loop: at 100,000 shards that takes a good part of a second."""
        store = self.store
        if store is None:
            return Error(ErrorCode.BAD_REQUEST, "this node serves no metadata", request_id)
        try:
            await self.node.read_index()
        except NodeError as exc:
            return Error(exc.code, str(exc), request_id)
        version, encode = store.version, store.state.snapshot_encoder()
        data = await trio.to_thread.run_sync(encode)
        size = min(BACKUP_CHUNK_BYTES_MAX, self.limits.message_bytes_max)
        chunks = max(1, -(-len(data) // size))
        sender = conn.sender
        for seq in range(chunks):
            part = data[seq * size : (seq + 1) * size]
            chunk = BackupChunk(request_id, self.cluster_id, version, seq, part, seq == chunks - 1)
            if not sender.send(server_frame(SERVER_TO_CLIENT.encode(chunk))):
                return None  # too slow a reader: the connection is being closed
            await sender.drain()
        return None

    async def _write(self, conn: WsConnection, request: WriteRequest, principal: Principal) -> Any:
        try:
            command = command_from_request(request.command, request.args, request.expected_version)
        except CommandError as exc:
            return Error(exc.code, exc.detail, request.request_id)
        refusal = authorize_write(principal, command)
        if refusal is not None:
            self._refuse(conn, command.NAME, refusal, request.request_id)
            return None
        outcome = await self.forwarder.submit(ForwardKind.WRITE, encode_command(command))
        return _error(outcome, request.request_id) or WriteResult(request.request_id, outcome.index)

    def _send(self, conn: WsConnection, message: Any) -> None:
        session = self._sessions.get(conn)
        version = BASELINE if session is None else session.protocol_version
        conn.sender.send_soon(server_frame(SERVER_TO_CLIENT.encode(message, version)))


async def _discard_until_closed(conn: WsConnection) -> None:
    """Read and drop what the refused client still sends, for at most LINGER_S: closing
    a socket with unread bytes resets it, and the client would lose our answer."""
    with trio.move_on_after(LINGER_S):
        try:
            while True:
                await conn.receive()
        except ConnectionGone:
            pass


def _request_id(message: Any) -> int | None:
    request_id = getattr(message, "request_id", None)
    return request_id if isinstance(request_id, int) else None


def _error(outcome: Outcome, request_id: int | None) -> Error | None:
    if outcome.error is None:
        return None
    return Error(outcome.error, outcome.detail, request_id)
