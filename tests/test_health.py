"""Operations endpoints: status codes, named checks, verbose/exclude, bad requests."""

from __future__ import annotations

import trio
import trio.testing

from felix.server.health import OpsServer
from felix.server.metrics import NodeMetrics


def make_server(ready: list[bool]) -> OpsServer:
    metrics = NodeMetrics(1)
    metrics.term.set(7)
    return OpsServer(
        livez={"loop": lambda: (True, "event loop answers")},
        readyz={
            "leader": lambda: (ready[0], "leader is 2" if ready[0] else "no leader known"),
            "applied_lag": lambda: (True, "applied 10 of commit 10"),
            "broken": lambda: (_ for _ in ()).throw(RuntimeError("boom")),
        },
        metrics=metrics.exposition,
    )


async def get(server: OpsServer, raw: bytes) -> tuple[int, str]:
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, server_side)
        await client.send_all(raw)
        await client.send_eof()
        data = b""
        while chunk := await client.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


def req(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def test_livez_ok() -> None:
    assert await get(make_server([True]), req("/livez")) == (200, "ok\n")


async def test_readyz_fails_with_details_when_a_check_fails() -> None:
    status, body = await get(make_server([False]), req("/readyz"))
    assert status == 503
    assert "[-]leader failed: no leader known" in body
    assert "[-]broken failed: check raised RuntimeError: boom" in body
    assert body.endswith("readyz check failed\n")


async def test_named_check_exclude_and_verbose() -> None:
    server = make_server([True])
    assert await get(server, req("/readyz/leader")) == (200, "ok\n")
    status, body = await get(server, req("/readyz?exclude=broken&verbose"))
    assert status == 200
    assert "[+]leader ok: leader is 2" in body and "broken" not in body
    assert (await get(server, req("/readyz/nope")))[0] == 404


async def test_metrics_and_health() -> None:
    server = make_server([True])
    status, body = await get(server, req("/metrics"))
    assert status == 200 and "felix_raft_term 7.0" in body
    status, body = await get(server, req("/health?"))
    assert status == 503  # the broken check fails readiness
    assert body == '{"health":"false"}\n'


async def test_bad_requests_get_400_or_405() -> None:
    server = make_server([True])
    assert (await get(server, b"garbage\r\n\r\n"))[0] == 400
    assert (await get(server, b"PUT /livez HTTP/1.1\r\n\r\n"))[0] == 405
    assert (await get(server, b"POST /livez HTTP/1.1\r\n\r\n"))[0] == 404
    assert (await get(server, b"GET /" + b"a" * 10000))[0] == 400
    status, body = await get(server, b"GET /livez HTTP/1.1\r\n")  # closed early
    assert status == 400 and "closed before" in body
