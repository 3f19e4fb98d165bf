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
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from felix.gc_pause import decode_paused
from felix.metadata.commands import command_from_request, encode_command
from felix.metadata.errors import CommandError
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    ClientHello,
    Error,
    ErrorCode,
    GetSnapshot,
    ReportHealth,
    WriteRequest,
    WriteResult,
)
from felix.proto.errors import ProtocolError
from felix.proto.raft_messages import ForwardKind
from felix.proto.ws_frames import server_frame
from felix.server.forwarding import Forwarder
from felix.server.metadata_sm import MetadataStore
from felix.server.outcome import Outcome
from felix.server.raft_node import RaftNode
from felix.server.requests import NodeError
from felix.server.sessions import encode_report
from felix.server.watch_hub import HubLimits, WatchHub, send_snapshot
from felix.server.ws_server import ConnectionGone, WsConnection, serve_ws

log = logging.getLogger("felix.client_api")

REQUESTS_IN_FLIGHT_MAX = 256
BACKLOG_BYTES_MAX = 4 * 1024 * 1024


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
    ) -> None:
        self.node = node
        self.forwarder = forwarder
        self.store = store
        self.hub = hub
        self.limits = limits or (hub.limits if hub else HubLimits())
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
                    task_status=task_status,
                )
            )
            if self.hub is not None:
                nursery.start_soon(self.hub.run)
            task_status.started(self.port)

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

    async def _read_requests(self, conn: WsConnection, nursery: trio.Nursery) -> None:
        limit = trio.Semaphore(self.requests_in_flight_max)
        watching = False
        identity: int | None = None  # the broker id this connection said hello as
        while True:
            try:
                message = decode_paused(CLIENT_TO_SERVER.decode, await conn.receive())
            except ProtocolError as exc:
                self._send(conn, Error(ErrorCode.BAD_REQUEST, str(exc), None))
                await conn.close(1002, "protocol error")
                return
            if isinstance(message, ClientHello):
                if watching or self.hub is None:
                    self._send(conn, Error(ErrorCode.BAD_REQUEST, "already watching", None))
                    continue
                watching = True
                identity = message.node_id
                nursery.start_soon(self._watch, conn, message.from_version, nursery)
                continue
            if isinstance(message, ReportHealth) and identity not in (None, message.node_id):
                detail = (
                    f"this connection is broker {identity}; it may not report for {message.node_id}"
                )
                self._send(conn, Error(ErrorCode.UNAUTHORIZED, detail, None))
                continue
            await limit.acquire()
            nursery.start_soon(self._answer_one, conn, message, limit)

    async def _watch(
        self, conn: WsConnection, from_version: int | None, nursery: trio.Nursery
    ) -> None:
        assert self.hub is not None
        reason = await self.hub.watch(conn, from_version)
        await conn.close(4001, reason[:100])
        nursery.cancel_scope.cancel()

    async def _answer_one(self, conn: WsConnection, message: Any, limit: trio.Semaphore) -> None:
        try:
            reply = await self._answer(conn, message)
            if reply is not None:
                self._send(conn, reply)
        except Exception as exc:  # never let one request take the connection down
            log.exception("request failed")
            self._send(conn, Error(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", None))
        finally:
            limit.release()

    async def _answer(self, conn: WsConnection, message: Any) -> Any:
        if isinstance(message, WriteRequest):
            return await self._write(message)
        if isinstance(message, GetSnapshot):
            return await self._snapshot(conn, message)
        if isinstance(message, ReportHealth):
            if not self.forwarder.serves(ForwardKind.HEALTH):
                return Error(ErrorCode.BAD_REQUEST, "health reports are not served here", None)
            outcome = await self.forwarder.submit(ForwardKind.HEALTH, encode_report(message))
            return _error(outcome, None)
        return Error(ErrorCode.BAD_REQUEST, f"unexpected {type(message).__name__}", None)

    async def _snapshot(self, conn: WsConnection, request: GetSnapshot) -> Any:
        store = self.store
        if store is None:
            return Error(ErrorCode.BAD_REQUEST, "this node serves no metadata", request.request_id)
        if request.linearizable:
            try:
                await self.node.read_index()
            except NodeError as exc:
                return Error(exc.code, str(exc), request.request_id)
        version, digest, records = store.view()
        await send_snapshot(conn, version, digest, records, request.request_id, self.limits)
        return None

    async def _write(self, request: WriteRequest) -> Any:
        try:
            data = self._encode_write(request)
        except CommandError as exc:
            return Error(exc.code, exc.detail, request.request_id)
        outcome = await self.forwarder.submit(ForwardKind.WRITE, data)
        return _error(outcome, request.request_id) or WriteResult(request.request_id, outcome.index)

    def _encode_write(self, request: WriteRequest) -> bytes:
        command = command_from_request(request.command, request.args, request.expected_version)
        return encode_command(command)

    def _send(self, conn: WsConnection, message: Any) -> None:
        conn.sender.send_soon(server_frame(SERVER_TO_CLIENT.encode(message)))


def _error(outcome: Outcome, request_id: int | None) -> Error | None:
    if outcome.error is None:
        return None
    return Error(outcome.error, outcome.detail, request_id)
