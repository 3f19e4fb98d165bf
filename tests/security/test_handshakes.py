"""Real TLS 1.3 handshakes over loopback: who gets in, and what each side is told.

Every refusal is checked on both sides: the side that verified the certificate names
the defect, the refused side gets it from the alert ("... (reported by the peer)").
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
import trio

from felix.security.certs import issue
from felix.security.contexts import (
    BY_PEER,
    CLOSED,
    EXPIRED,
    NO_CLIENT_CERT,
    NOT_TLS,
    NOT_YET_VALID,
    TIMED_OUT,
    TLS_VERSION,
    UNKNOWN_CA,
    classify_handshake_error,
    client_context,
)
from felix.security.identity import Identity, IdentityError, identity_of, require_identity
from tests.security.sslstream import close_refused, handshake
from tests.security.tls_harness import (
    CLUSTER,
    PING,
    PONG,
    CorruptingProxy,
    Pki,
    Side,
    make_pki,
    raw_client,
    raw_server,
    tls_pair,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def words(side: Side) -> str:
    assert side.error is not None, "the handshake was expected to fail"
    return classify_handshake_error(side.error)


async def test_mutual_handshake_and_identities_on_both_sides(pki: Pki) -> None:
    server, client = await tls_pair(pki.server(pki.node1), pki.client(pki.node2))
    assert server.error is None and client.error is None
    assert (server.received, client.received) == (PING, PONG)
    assert identity_of(server.peercert) == Identity.node(CLUSTER, 2)
    assert identity_of(client.peercert) == Identity.node(CLUSTER, 1)
    require_identity(client.peercert, Identity.node(CLUSTER, 1))


async def test_identity_mismatch_is_caught_by_the_caller(pki: Pki) -> None:
    # The handshake succeeds (a valid member of the cluster) but it is not who we dialed.
    _, client = await tls_pair(pki.server(pki.node1), pki.client(pki.node2))
    with pytest.raises(IdentityError, match="identity mismatch: expected felix://c1/node/3"):
        require_identity(client.peercert, Identity.node(CLUSTER, 3))
    assert identity_of(client.peercert) != Identity.node("other-cluster", 1)


async def test_client_certificate_from_another_ca(pki: Pki) -> None:
    server, client = await tls_pair(pki.server(), pki.client(pki.foreign2))
    assert words(server) == UNKNOWN_CA
    assert words(client) == UNKNOWN_CA + BY_PEER


async def test_server_certificate_from_another_ca(pki: Pki) -> None:
    server, client = await tls_pair(pki.server(pki.foreign2), pki.client(pki.node2))
    assert words(client) == UNKNOWN_CA
    assert words(server) == UNKNOWN_CA + BY_PEER


async def test_expired_client_certificate(pki: Pki) -> None:
    expired = issue(pki.dir, "node", 3, not_before=NOW - dt.timedelta(days=10), days=1)
    server, client = await tls_pair(pki.server(), pki.client(expired))
    assert words(server) == EXPIRED
    assert words(client) == EXPIRED + BY_PEER


async def test_expired_server_certificate(pki: Pki) -> None:
    expired = issue(pki.dir, "node", 3, not_before=NOW - dt.timedelta(days=10), days=1)
    server, client = await tls_pair(pki.server(expired), pki.client(pki.node2))
    assert words(client) == EXPIRED
    assert words(server) == EXPIRED + BY_PEER


async def test_not_yet_valid_certificates(pki: Pki) -> None:
    future = issue(pki.dir, "node", 3, not_before=NOW + dt.timedelta(days=10), days=1)
    # OpenSSL's alert for "not yet valid" is the generic bad_certificate.
    server, client = await tls_pair(pki.server(), pki.client(future))
    assert words(server) == NOT_YET_VALID
    assert words(client) == "bad certificate" + BY_PEER
    server, client = await tls_pair(pki.server(future), pki.client(pki.node2))
    assert words(client) == NOT_YET_VALID
    assert words(server) == "bad certificate" + BY_PEER


async def test_client_without_certificate_when_one_is_required(pki: Pki) -> None:
    server, client = await tls_pair(pki.server(require=True), pki.client(None))
    assert words(server) == NO_CLIENT_CERT
    assert words(client) == NO_CLIENT_CERT + BY_PEER


async def test_client_certificate_optional_but_verified_when_sent(pki: Pki) -> None:
    server, client = await tls_pair(pki.server(require=False), pki.client(None))
    assert server.error is None and client.error is None
    assert server.peercert is None  # no certificate: the token has to authenticate it
    server, client = await tls_pair(
        pki.server(require=False), pki.client(issue(pki.dir, "broker", 7))
    )
    assert identity_of(server.peercert) == Identity.broker(CLUSTER, 7)
    server, client = await tls_pair(pki.server(require=False), pki.client(pki.foreign2))
    assert (words(server), words(client)) == (UNKNOWN_CA, UNKNOWN_CA + BY_PEER)


async def test_tls_12_client_is_refused(pki: Pki) -> None:
    old = client_context(pki.ca, pki.node2.cert, pki.node2.key)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_2
    server, client = await tls_pair(pki.server(), old)
    assert words(server) == TLS_VERSION
    assert words(client) == TLS_VERSION + BY_PEER


@pytest.mark.parametrize(
    "payload",
    [b"\x00\x00\x00\x10" + b"x" * 16, b"GET /metrics HTTP/1.1\r\n\r\n", b"hello plaintext\n"],
    ids=["felix-frame", "http", "text"],
)
async def test_plaintext_client_on_a_tls_port(pki: Pki, payload: bytes) -> None:
    server, got = await raw_client(pki.server(), payload)
    assert words(server) == NOT_TLS
    assert got in (b"", b"\x15\x03\x03\x00\x02\x02\x46")  # nothing, or a TLS alert record


@pytest.mark.parametrize(
    "reply",
    [b"\x00\x00\x00\x10" + b"x" * 16, b"HTTP/1.1 400 Bad Request\r\n\r\n"],
    ids=["felix-frame", "http"],
)
async def test_tls_client_talking_to_a_plaintext_server(pki: Pki, reply: bytes) -> None:
    client, first = await raw_server(pki.client(pki.node2), reply)
    assert first[:1] == b"\x16"  # it did send a ClientHello
    assert words(client) == NOT_TLS


async def test_garbage_handshake_record_from_the_client(pki: Pki) -> None:
    record = b"\x16\x03\x01\x00\x10" + bytes(range(16))
    server, got = await raw_client(pki.server(), record)
    assert words(server) == "unexpected message"
    assert got.startswith(b"\x15\x03\x03")  # the server told the garbage sender (an alert)


async def test_garbage_handshake_record_from_the_server(pki: Pki) -> None:
    client, _ = await raw_server(pki.client(pki.node2), b"\x16\x03\x03\x00\x10" + b"\xff" * 16)
    assert words(client) == "unexpected message"


async def test_garbage_inside_the_encrypted_handshake_on_both_sides(pki: Pki) -> None:
    proxy = CorruptingProxy(offset=400)  # past ServerHello: inside the encrypted flight
    server, client = await proxy.run(pki.server(), pki.client(pki.node2))
    assert proxy.flipped
    assert words(client) == "decryption failed or bad record mac"
    assert words(server) == "bad record mac" + BY_PEER


async def test_peer_that_says_nothing_times_out(pki: Pki, autojump_clock: trio.abc.Clock) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    stream = await listener.accept()
    tls = trio.SSLStream(stream, pki.server(), server_side=True)
    with pytest.raises(trio.TooSlowError) as info:
        await handshake(tls, timeout=5.0)
    assert classify_handshake_error(info.value) == TIMED_OUT
    await close_refused(stream)
    assert await silent.receive_some() == b""  # the silent client sees the close
    await silent.aclose()
    await listener.aclose()


async def test_peer_that_hangs_up_mid_handshake(pki: Pki) -> None:
    server, got = await raw_client(pki.server(), b"\x16\x03\x01\x00", eof=True)
    assert words(server) == CLOSED
    assert got[:1] in (b"", b"\x15")  # nothing, or an alert


async def test_alerts_are_sent_by_the_handshake_helper(pki: Pki) -> None:
    # Guards the private-attribute read in send_pending_alert: without it the refused
    # side sees a bare close, not the reason.
    server, client = await tls_pair(pki.server(), pki.client(None))
    assert words(server) == NO_CLIENT_CERT
    assert words(client) != CLOSED
