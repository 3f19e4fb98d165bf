"""ReloadableContext: a renewed certificate is used for new handshakes, connections made
before keep working, and files that do not build leave the old context in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from felix.security.certs import issue, load_cert
from felix.security.contexts import ReloadableContext, TlsConfigError, TlsFiles
from tests.security.tls_harness import EchoServer, Pki, echo, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _files(pki: Pki) -> TlsFiles:
    return TlsFiles(ca=pki.ca, cert=pki.node1.cert, key=pki.node1.key)


def _serial(path: Path) -> int:
    return load_cert(path).serial_number


async def test_renewed_certificate_for_new_connections_old_ones_keep_working(pki: Pki) -> None:
    reloadable = ReloadableContext.server(_files(pki), require_client_cert=True)
    server = EchoServer(lambda: reloadable.current)
    old_serial = _serial(pki.node1.cert)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        before = await server.connect(pki.client(pki.node2))
        assert int(before.getpeercert()["serialNumber"], 16) == old_serial
        assert await echo(before, b"one") == b"one"

        issue(pki.dir, "node", 1, overwrite=True)
        new_serial = _serial(pki.node1.cert)
        assert new_serial != old_serial
        old_context = reloadable.current
        assert reloadable.reload() is reloadable.current is not old_context

        after = await server.connect(pki.client(pki.node2))
        assert int(after.getpeercert()["serialNumber"], 16) == new_serial
        assert await echo(after, b"two") == b"two"
        assert await echo(before, b"still here") == b"still here"
        await before.aclose()
        await after.aclose()
        nursery.cancel_scope.cancel()
    assert server.errors == []


@pytest.mark.parametrize("broken", ["garbage", "missing", "mismatched-key"])
async def test_broken_files_keep_the_old_context(pki: Pki, broken: str) -> None:
    reloadable = ReloadableContext.server(_files(pki), require_client_cert=True)
    old_context = reloadable.current
    if broken == "garbage":
        pki.node1.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    elif broken == "missing":
        pki.node1.key.unlink()
    else:
        pki.node1.key.write_bytes(pki.node2.key.read_bytes())
    with pytest.raises(
        TlsConfigError,
        match=r"cannot load TLS files: certificate .*node-1\.crt with key .*node-1\.key: ",
    ):
        reloadable.reload()
    assert reloadable.current is old_context
    server = EchoServer(lambda: reloadable.current)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        conn = await server.connect(pki.client(pki.node2))
        assert await echo(conn, b"ok") == b"ok"
        await conn.aclose()
        nursery.cancel_scope.cancel()


def test_reason_words_for_broken_files(pki: Pki) -> None:
    pki.node1.key.write_bytes(pki.node2.key.read_bytes())
    with pytest.raises(TlsConfigError, match="key values mismatch"):
        ReloadableContext.server(_files(pki), require_client_cert=True)
    with pytest.raises(TlsConfigError, match="No such file or directory"):
        ReloadableContext.client(TlsFiles(ca=pki.dir / "nope.crt"))
    with pytest.raises(TlsConfigError, match="needs a certificate and a key"):
        ReloadableContext.server(TlsFiles(ca=pki.ca), require_client_cert=False)


async def test_reloadable_client_context(pki: Pki) -> None:
    client = ReloadableContext.client(TlsFiles(pki.ca, pki.node2.cert, pki.node2.key))
    reloadable = ReloadableContext.server(_files(pki), require_client_cert=True)
    server = EchoServer(lambda: reloadable.current)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        conn = await server.connect(client.current)
        assert await echo(conn, b"x") == b"x"
        await conn.aclose()
        nursery.cancel_scope.cancel()
