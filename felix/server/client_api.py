"""The client API over WebSockets: writes today; snapshots and watches build on it.

Each connection is one task with its own nursery; requests on a connection run
concurrently (bounded by ``requests_in_flight_max``), so one client can pipeline many
writes over one socket.  Every handler is wrapped: a bad message gets an `Error` reply
(and a protocol error closes the connection), never an exception that would take the
whole server down (trio-websocket propagates handler exceptions out of
``serve_websocket``).

Writes that reach a follower are refused with the leader's id (``not_leader``); the
client retries there.  Forwarding to the leader comes with the broker API.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    Error,
    ErrorCode,
    WriteRequest,
    WriteResult,
)
from felix.proto.errors import ProtocolError
from felix.server.kv import encode_put
from felix.server.raft_node import (
    NodeError,
    NotLeader,
    Overloaded,
    ProposalTimeout,
    RaftNode,
    ShuttingDown,
)

log = logging.getLogger("felix.client_api")

MESSAGE_BYTES_MAX = 1 << 20
REQUESTS_IN_FLIGHT_MAX = 256
SEND_TIMEOUT_S = 10.0


class ClientApi:
    def __init__(self, node: RaftNode, *, requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX):
        self.node = node
        self.requests_in_flight_max = requests_in_flight_max
        self.connections = 0
        self.port = 0

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    self.handle,
                    host,
                    port,
                    None,
                    handler_nursery=nursery,
                    max_message_size=MESSAGE_BYTES_MAX,
                    message_queue_size=16,
                    task_status=task_status,
                )
            )
            self.port = server.port
            task_status.started(self.port)

    async def handle(self, request: WebSocketRequest) -> None:
        try:
            ws = await request.accept()
        except (ConnectionClosed, OSError, trio.BrokenResourceError):
            return
        self.connections += 1
        try:
            await self._serve(ws)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # never let one connection kill the server
            log.exception("client connection failed")
        finally:
            self.connections -= 1
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await ws.aclose()

    async def _serve(self, ws: WebSocketConnection) -> None:
        limit = trio.Semaphore(self.requests_in_flight_max)
        async with trio.open_nursery() as nursery:
            while True:
                data = await ws.get_message()
                if isinstance(data, str):
                    await self._reply(ws, Error(ErrorCode.BAD_REQUEST, "send binary CBOR", None))
                    return
                try:
                    message = CLIENT_TO_SERVER.decode(data)
                except ProtocolError as exc:
                    await self._reply(ws, Error(ErrorCode.BAD_REQUEST, str(exc), None))
                    return
                await limit.acquire()
                nursery.start_soon(self._handle_one, ws, message, limit)

    async def _handle_one(
        self, ws: WebSocketConnection, message: Any, limit: trio.Semaphore
    ) -> None:
        try:
            await self._reply(ws, await self._answer(message))
        finally:
            limit.release()

    async def _answer(self, message: Any) -> Any:
        if not isinstance(message, WriteRequest):
            kind = type(message).__name__
            return Error(ErrorCode.BAD_REQUEST, f"{kind} is not served by this node version", None)
        if message.command != "kv.put":
            return Error(
                ErrorCode.BAD_REQUEST, f"unknown command {message.command!r}", message.request_id
            )
        key, value = message.args.get("key"), message.args.get("value")
        if not isinstance(key, str) or not isinstance(value, (bytes, type(None))):
            detail = "kv.put needs args key (text) and value (bytes or null)"
            return Error(ErrorCode.BAD_REQUEST, detail, message.request_id)
        try:
            index, _ = await self.node.propose(encode_put(key, value))
        except NodeError as exc:
            return Error(_code_for(exc), str(exc), message.request_id)
        return WriteResult(message.request_id, index)

    async def _reply(self, ws: WebSocketConnection, message: Any) -> None:
        with trio.move_on_after(SEND_TIMEOUT_S):
            await ws.send_message(SERVER_TO_CLIENT.encode(message))


def _code_for(exc: NodeError) -> ErrorCode:
    if isinstance(exc, NotLeader):
        return ErrorCode.NOT_LEADER
    if isinstance(exc, ProposalTimeout):
        return ErrorCode.TIMEOUT
    if isinstance(exc, (Overloaded, ShuttingDown)):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.INTERNAL
