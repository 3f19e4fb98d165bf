"""Authentication and roles on the client API and the ops port, over real sockets:
every client call and admin endpoint with every kind of credential is allowed or
refused exactly as docs/architecture.md §12 says, a refusal (``Error{unauthorized}``,
401, 403) changes nothing, and a revoked token's open watch stream is closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.metadata.tokens import format_token, parse_token, secret_hash
from felix.proto.client_messages import (
    ClientHello,
    Deltas,
    Error,
    ErrorCode,
    GetSnapshot,
    PlannerRan,
    ReportHealth,
    RunPlanner,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.server.auth import Principal
from felix.server.client_api import (
    CLOSE_UNAUTHORIZED,
    RECHECK_INTERVAL_S,
    ClientApi,
    _Session,
)
from felix.server.graph import MetadataServices
from felix.server.health import OpsServer, Response
from felix.server.raft_node import NodeSettings
from felix.testing.cluster import TrioCluster
from felix.transport.memory import LinkFaults

BOOTSTRAP = format_token("b0075700b0075700", bytes(32))
NOW_MS = 1_000_000


def token(n: int) -> str:
    return format_token(f"{n:016x}", n.to_bytes(32, "big"))


ADMIN2, READER, BROKER7, BROKER8, EXPIRED, REVOKED = (token(n) for n in range(1, 7))
TOKENS: dict[str, tuple[str, int | None, int | None]] = {  # token: (role, node, expiry)
    ADMIN2: ("admin", None, None),
    READER: ("reader", None, None),
    BROKER7: ("broker", 7, None),
    BROKER8: ("broker", 8, None),
    EXPIRED: ("reader", None, NOW_MS - 1),
    REVOKED: ("admin", None, None),
}


@dataclass
class Api:
    port: int
    services: MetadataServices

    @property
    def version(self) -> int:
        return self.services.store.version

    async def call(self, message: Any, credential: str = "", *, header: bool = True) -> Any:
        """Send ``message`` on a fresh connection with ``credential`` in the upgrade
        request (or, ``header=False``, a Hello carrying it first); the first reply."""
        conn = await ClientConnection.open(
            "127.0.0.1", self.port, token=credential if header else ""
        )
        try:
            if not header:
                await conn.send(ClientHello(None, 0, credential))
            await conn.send(message)
            if isinstance(message, ReportHealth):  # no reply on success: ask something after
                await conn.send(GetSnapshot(99, False))
            return await conn.receive()
        except ConnectionClosed as exc:
            return exc
        finally:
            await conn.aclose()


def write(command: str, args: dict[str, Any], request_id: int = 1) -> WriteRequest:
    return WriteRequest(request_id, command, args, None)


def create_token(text: str, role: str, node_id: int | None, expires: int | None) -> WriteRequest:
    parsed = parse_token(text)
    args: dict[str, Any] = {
        "token_id": parsed.id,
        "role": role,
        "secret_sha256": secret_hash(parsed.secret),
        "node_id": node_id,
        "expires_at_ms": expires,
    }
    return write("create_token", args)


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Api]:
    path = tmp_path / "bootstrap-token"
    path.write_text(BOOTSTRAP + "\n")
    settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1], settings=settings)
        _, services = await cluster.start_metadata(
            1, bootstrap_token_file=path, now_ms=lambda: NOW_MS
        )
        port = await nursery.start(services.run, "127.0.0.1", 0)
        await cluster.wait_for_leader()
        api = Api(port, services)
        for request in (
            write("set_tenant", {"name": "acme"}),
            write("register_node", {"node_id": 7, "address": "10.0.0.7:9"}),
            write("register_node", {"node_id": 8, "address": "10.0.0.8:9"}),
            *(create_token(t, *spec) for t, spec in TOKENS.items()),
        ):
            assert isinstance(await api.call(request, BOOTSTRAP), WriteResult), request
        assert isinstance(
            await api.call(write("revoke_token", {"token_id": parse_token(REVOKED).id}), ADMIN2),
            WriteResult,
        )
        yield api
        nursery.cancel_scope.cancel()


NO_TOKEN, MALFORMED = "", "not-a-token"
WRONG_SECRET = format_token(parse_token(ADMIN2).id, b"\xff" * 32)
CREDENTIALS = {
    "none": NO_TOKEN,
    "malformed": MALFORMED,
    "wrong secret": WRONG_SECRET,
    "expired": EXPIRED,
    "revoked": REVOKED,
    "reader": READER,
    "broker 7": BROKER7,
    "broker 8": BROKER8,
    "admin": ADMIN2,
    "bootstrap": BOOTSTRAP,
}
OPERATIONS: dict[str, Any] = {
    "snapshot": GetSnapshot(9, False),
    "health 7": ReportHealth(7, "up", 0),
    "register 7": write("register_node", {"node_id": 7, "address": "10.0.0.7:9"}),
    "drain 7": write("drain_node", {"node_id": 7}),
    "undrain 7": write("undrain_node", {"node_id": 7}),
    "node_health 7": write("node_health", {"node_id": 7, "status": "up"}),
    "operator down 7": write("node_health", {"node_id": 7, "status": "down", "operator": True}),
    "force drain 7": write("drain_node", {"node_id": 7, "force": True}),
    "set_tenant": write("set_tenant", {"name": "other"}),
    "create_token": create_token(token(99), "admin", None, None),
    "run planner": RunPlanner(9),
}
# Which operations each credential may perform (everything else: unauthorized).
ALLOWED = {
    "reader": {"snapshot"},
    "broker 7": {"snapshot", "health 7", "register 7", "drain 7", "undrain 7", "node_health 7"},
    "broker 8": {"snapshot"},
    "admin": set(OPERATIONS),
    "bootstrap": set(OPERATIONS),
}


def outcome(reply: Any) -> str:
    if isinstance(reply, (WriteResult, SnapshotChunk, PlannerRan)):
        return "allowed"
    if isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHORIZED:
        return "unauthorized"
    if isinstance(reply, ConnectionClosed):
        return "closed"
    if isinstance(reply, Error):
        return "allowed"  # authorized, then refused on its merits (e.g. stale epoch)
    return f"unexpected {reply!r}"


async def test_the_role_matrix(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        table: dict[tuple[str, str], str] = {}
        for who, credential in CREDENTIALS.items():
            for what, message in OPERATIONS.items():
                before = api.version
                reply = await api.call(message, credential)
                table[who, what] = outcome(reply)
                if table[who, what] != "allowed":
                    assert api.version == before, f"{who} {what} wrote something"
                    assert isinstance(reply, Error) and reply.detail, (who, what, reply)
        expected = {
            (who, what): "allowed" if what in ALLOWED.get(who, set()) else "unauthorized"
            for who in CREDENTIALS
            for what in OPERATIONS
        }
        assert table == expected
        refused = api.services.api.auth_stats.refused
        assert refused["authenticate"] == 5 * len(OPERATIONS)  # the five without a valid token


async def test_refusals_say_why(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        cases = {
            NO_TOKEN: "before authentication",
            MALFORMED: "not a Felix token",
            WRONG_SECRET: "wrong secret",
            EXPIRED: "has expired",
            REVOKED: "unknown or revoked",
        }
        for credential, why in cases.items():
            reply = await api.call(GetSnapshot(1, False), credential)
            assert isinstance(reply, Error) and why in reply.detail, (credential, reply)
            assert not credential or credential[-20:] not in reply.detail  # never echoed
        reply = await api.call(write("drain_node", {"node_id": 8}), BROKER7)
        assert isinstance(reply, Error) and "broker 7" in reply.detail and "node 8" in reply.detail
        reply = await api.call(write("set_tenant", {"name": "x"}), READER)
        assert isinstance(reply, Error) and "read-only" in reply.detail


async def test_a_hello_token_authenticates_and_a_broker_watches_only_as_itself(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as api:
        reply = await api.call(GetSnapshot(1, False), BROKER7, header=False)
        assert isinstance(reply, (Deltas, SnapshotChunk)), reply  # the watch, or the snapshot
        conn = await ClientConnection.open("127.0.0.1", api.port, token=BROKER7)
        try:
            await conn.send(ClientHello(8, 0, ""))
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHORIZED
            assert "may not watch as broker 8" in reply.detail
            await conn.send(ClientHello(7, 0, ADMIN2))  # another principal's token
            reply = await conn.receive()
            assert isinstance(reply, Error) and "session's broker 7" in reply.detail
            await conn.send(ClientHello(7, None, ""))
            assert isinstance(await conn.receive(), SnapshotChunk)
        finally:
            await conn.aclose()


async def test_revoking_a_token_closes_its_open_watch(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        watcher = await ClientConnection.open("127.0.0.1", api.port, token=READER)
        other = await ClientConnection.open("127.0.0.1", api.port, token=BROKER7)
        try:
            for conn in (watcher, other):
                await conn.send(ClientHello(None, None, ""))
                assert isinstance(await conn.receive(), SnapshotChunk)
            revoke = write("revoke_token", {"token_id": parse_token(READER).id})
            assert isinstance(await api.call(revoke, BOOTSTRAP), WriteResult)
            seen: list[Any] = []
            with trio.fail_after(10):  # a bound, not the claim: see the MockClock test
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        seen.append(await watcher.receive())
            assert closed.value.code == CLOSE_UNAUTHORIZED
            errors = [m for m in seen if isinstance(m, Error)]
            assert errors and "was revoked" in errors[-1].detail
            # The other session is untouched and still gets deltas.
            assert isinstance(
                await api.call(write("set_tenant", {"name": "z"}), ADMIN2), WriteResult
            )
            with trio.fail_after(10):
                while True:
                    message = await other.receive()
                    if not isinstance(message, SnapshotChunk):
                        break
            assert not isinstance(message, Error)
            assert api.services.api.auth_stats.closed_revoked == 1
        finally:
            await watcher.aclose()
            await other.aclose()


class _Sender:
    def __init__(self) -> None:
        self.final: list[bytes] = []
        self.soon: list[bytes] = []

    def send_soon(self, frame: bytes) -> bool:
        self.soon.append(frame)
        return True

    def send_final(self, frame: bytes) -> None:
        self.final.append(frame)


class _Conn:
    def __init__(self) -> None:
        self.sender = _Sender()


class _Auth:
    def __init__(self) -> None:
        self.revoked: set[str] = set()

    def still_valid(self, principal: Principal) -> str | None:
        return "revoked" if principal.token_id in self.revoked else None


async def test_a_revoked_session_closes_at_the_next_recheck_within_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The bound of the revocation claim, on MockClock: sessions are rechecked every
    RECHECK_INTERVAL_S (0.25 s), so a revocation applied at any moment closes the
    session at most that long after."""
    api = ClientApi(None, None)  # type: ignore[arg-type]  # only the session table is used
    auth = _Auth()
    conn, scope = _Conn(), trio.CancelScope()
    api._sessions[conn] = _Session(Principal("reader", token_id="t1"), scope)  # type: ignore[index]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(api._recheck_sessions, auth)
        await trio.sleep(3.0)
        assert not scope.cancel_called  # valid sessions stay
        revoked_at = trio.current_time()
        auth.revoked.add("t1")
        while not scope.cancel_called:
            await trio.sleep(0.01)
        assert trio.current_time() - revoked_at <= RECHECK_INTERVAL_S + 0.01
        assert conn.sender.final and api.auth_stats.closed_revoked == 1
        nursery.cancel_scope.cancel()


OPS_OPERATIONS = {  # (method, path): who may (None: everyone, open for probes/scrapers)
    ("GET", "/livez"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("GET", "/v1/status"): {"reader", "broker 7", "broker 8", "admin", "bootstrap"},
    ("POST", "/v1/transfer-leader"): {"admin", "bootstrap"},
    ("POST", "/v1/members/add"): {"admin", "bootstrap"},
    ("POST", "/v1/members/promote"): {"admin", "bootstrap"},
    ("POST", "/v1/members/remove"): {"admin", "bootstrap"},
}
VALID_CREDENTIALS = {"reader", "broker 7", "broker 8", "admin", "bootstrap"}


async def _ops_status(port: int, method: str, path: str, credential: str) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    auth = f"Authorization: Bearer {credential}\r\n" if credential else ""
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"
    async with stream:
        await stream.send_all(request.encode())
        answer = b""
        with trio.fail_after(10):
            while b"\r\n" not in answer:
                chunk = await stream.receive_some(4096)
                assert chunk, "closed without a status line"
                answer += chunk
    return int(answer.split(b" ", 2)[1])


async def test_the_ops_port_role_matrix(tmp_path: Path) -> None:
    """Every admin endpoint with every credential, over a real socket, against the
    cluster's own token store: open paths for anyone; status for any valid credential;
    membership and leadership for admins only.  401 without a valid credential, 403 for
    a valid one without the role, and a refused route is never called."""
    async with serving(tmp_path) as api:
        called: list[tuple[str, str]] = []

        def route(method: str, path: str) -> Any:
            async def handler(query: Any) -> Response:
                called.append((method, path))
                return Response(200, b"{}\n", "application/json")

            return handler

        ops = OpsServer(
            livez={"loop": lambda: (True, "ok")},
            readyz={"leader": lambda: (True, "ok")},
            metrics=lambda: b"m 1\n",
            get_routes={p: route(m, p) for m, p in OPS_OPERATIONS if m == "GET" and "v1" in p},
            post_routes={p: route(m, p) for m, p in OPS_OPERATIONS if m == "POST"},
            auth=api.services.api.auth,
        )
        async with trio.open_nursery() as nursery:
            port = await nursery.start(ops.run, "127.0.0.1", 0)
            got: dict[tuple[str, str, str], int] = {}
            expected: dict[tuple[str, str, str], int] = {}
            for name, credential in CREDENTIALS.items():
                for (method, path), allowed in OPS_OPERATIONS.items():
                    called.clear()
                    status = await _ops_status(port, method, path, credential)
                    got[name, method, path] = status
                    if allowed is None or name in allowed:
                        expected[name, method, path] = 200
                    else:
                        expected[name, method, path] = 403 if name in VALID_CREDENTIALS else 401
                    if status != 200:
                        assert not called, (name, method, path)  # nothing was done
            assert got == expected
            assert ops.refused == sum(1 for s in expected.values() if s != 200)
            nursery.cancel_scope.cancel()


async def test_a_revocation_closes_watches_on_every_node(tmp_path: Path) -> None:
    """Three nodes, a reader watching on each: one revoke_token through the leader closes
    all three streams with 4003 (each node rechecks its sessions against what it has
    applied; the MockClock test above bounds that at RECHECK_INTERVAL_S)."""
    path = tmp_path / "bootstrap-token"
    path.write_text(BOOTSTRAP + "\n")
    settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], settings=settings)
        ports: dict[int, int] = {}
        for node_id in (1, 2, 3):
            _, services = await cluster.start_metadata(node_id, bootstrap_token_file=path)
            ports[node_id] = await nursery.start(services.run, "127.0.0.1", 0)
        leader = (await cluster.wait_for_leader()).node_id
        api = Api(ports[leader], services)
        assert isinstance(await api.call(create_token(READER, "reader", None, None), BOOTSTRAP),
                          WriteResult)  # fmt: skip
        await cluster.wait_converged()
        watchers = [
            await ClientConnection.open("127.0.0.1", ports[n], token=READER) for n in (1, 2, 3)
        ]
        try:
            for conn in watchers:
                await conn.send(ClientHello(None, None, ""))
                assert isinstance(await conn.receive(), SnapshotChunk)
            revoke = write("revoke_token", {"token_id": parse_token(READER).id})
            assert isinstance(await api.call(revoke, BOOTSTRAP), WriteResult)
            with trio.fail_after(10):  # a bound, not the claim
                for conn in watchers:
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            await conn.receive()
                    assert closed.value.code == CLOSE_UNAUTHORIZED
        finally:
            for conn in watchers:
                await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_a_token_made_an_instant_ago_works_on_a_follower_that_has_not_applied_it(
    tmp_path: Path,
) -> None:
    """The leader commits a broker token while everything it sends one follower arrives
    80 ms late (under the election timeout: it stays a follower); a broker presenting
    the token to that follower at once is not refused as unknown: the follower waits
    for a ReadIndex point, applies the token and lets the broker in.  Before, this
    refused the token for good (a flake of the real-process suites: a token minted on
    the leader, used on a follower)."""
    path = tmp_path / "bootstrap-token"
    path.write_text(BOOTSTRAP + "\n")
    settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], settings=settings)
        apis: dict[int, Api] = {}
        for node_id in (1, 2, 3):
            _, services = await cluster.start_metadata(node_id, bootstrap_token_file=path)
            apis[node_id] = Api(await nursery.start(services.run, "127.0.0.1", 0), services)
        leader = (await cluster.wait_for_leader()).node_id
        await cluster.wait_converged()
        lagging = next(n for n in (1, 2, 3) if n != leader)
        cluster.network.set_link_faults(leader, lagging, LinkFaults(delay_s_min=0.08,
                                                                     delay_s_max=0.08))  # fmt: skip
        made = await apis[leader].call(create_token(BROKER7, "broker", 7, None), BOOTSTRAP)
        assert isinstance(made, WriteResult)
        assert apis[lagging].version < made.version  # it has not applied the token
        reply = await apis[lagging].call(ClientHello(7, None, ""), BROKER7)
        assert isinstance(reply, SnapshotChunk), reply
        assert apis[lagging].version >= made.version
        nursery.cancel_scope.cancel()
