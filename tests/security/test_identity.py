"""Identity URIs: one spelling per identity, malformed ones refused with the reason, and
exactly one felix URI per certificate."""

from __future__ import annotations

from typing import Any

import pytest

from felix.security.identity import (
    ID_MAX,
    Identity,
    IdentityError,
    identity_of,
    require_identity,
)


@pytest.mark.parametrize(
    ("identity", "uri"),
    [
        (Identity.node("felix", 1), "felix://felix/node/1"),
        (Identity.broker("prod-eu.1", ID_MAX), f"felix://prod-eu.1/broker/{ID_MAX}"),
        (Identity.admin("c_1", "alice.ops-2"), "felix://c_1/admin/alice.ops-2"),
    ],
)
def test_uri_round_trip(identity: Identity, uri: str) -> None:
    assert identity.uri() == str(identity) == uri
    assert Identity.parse(uri) == identity


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("https://c/node/1", "must start with 'felix://'"),
        ("FELIX://c/node/1", "must start with 'felix://'"),
        ("felix://c/node", "<cluster>/<kind>/<id>"),
        ("felix://c/node/1/", "<cluster>/<kind>/<id>"),
        ("felix://c/node/1?x=1", "decimal integer"),
        ("felix://c/peer/1", "unknown identity kind 'peer'"),
        ("felix://c/node/0", "decimal integer >= 1"),
        ("felix://c/node/01", "decimal integer >= 1"),
        ("felix://c/node/-1", "decimal integer >= 1"),
        ("felix://c/node/+1", "decimal integer >= 1"),
        ("felix://c/broker/ 1", "decimal integer >= 1"),
        ("felix://c/node/١", "decimal integer >= 1"),  # a non-ASCII digit
        (f"felix://c/node/{ID_MAX + 1}", r"in \[1, 2\*\*63\)"),
        ("felix://c/admin/", "admin name must be 1-64"),
        ("felix://c/admin/bad name", "admin name must be 1-64"),
        ("felix://c/admin/" + "a" * 65, "admin name must be 1-64"),
        ("felix:///node/1", "cluster id must be 1-64"),
        ("felix://c:1/node/1", "cluster id must be 1-64"),
        ("felix://c/node/1" + "0" * 300, "longer than 256"),
    ],
)
def test_malformed_uris_are_refused(uri: str, why: str) -> None:
    with pytest.raises(IdentityError, match=why):
        Identity.parse(uri)


def test_constructor_checks_too() -> None:
    with pytest.raises(IdentityError, match="node id"):
        Identity.node("c", True)  # a bool is not an id
    with pytest.raises(IdentityError, match="kind must be one of"):
        Identity("c", "root", 1)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="admin name"):
        Identity("c", "admin", 3)
    with pytest.raises(IdentityError):
        Identity.parse(b"felix://c/node/1")  # type: ignore[arg-type]


def _cert(*sans: tuple[str, str]) -> dict[str, Any]:
    return {"subject": ((("commonName", "x"),),), "subjectAltName": sans}


def test_identity_of_takes_the_one_felix_uri() -> None:
    cert = _cert(
        ("DNS", "node-1.felix"),
        ("URI", "spiffe://example/ns/x"),
        ("IP Address", "127.0.0.1"),
        ("URI", "felix://c/node/1"),
    )
    assert identity_of(cert) == Identity.node("c", 1)
    assert require_identity(cert, Identity.node("c", 1)) == Identity.node("c", 1)


@pytest.mark.parametrize(
    ("cert", "why"),
    [
        (None, "no peer certificate"),
        ({}, "no peer certificate"),
        (_cert(), "no felix:// URI"),
        (_cert(("DNS", "felix://c/node/1")), "no felix:// URI"),  # a DNS entry is no URI
        (_cert(("URI", "felix://c/node/1"), ("URI", "felix://c/node/2")), "has 2 felix:// URIs"),
        (_cert(("URI", "felix://c/node/1"), ("URI", "FELIX://c/node/1")), "has 2 felix:// URIs"),
        (_cert(("URI", "felix://c/node/x")), "decimal integer"),
    ],
)
def test_identity_of_refuses(cert: dict[str, Any] | None, why: str) -> None:
    with pytest.raises(IdentityError, match=why):
        identity_of(cert)


def test_require_identity_names_both_on_a_mismatch() -> None:
    cert = _cert(("URI", "felix://c/broker/7"))
    for expected in (Identity.node("c", 7), Identity.broker("c", 8), Identity.broker("d", 7)):
        with pytest.raises(
            IdentityError, match=f"expected {expected.uri()}, got felix://c/broker/7"
        ):
            require_identity(cert, expected)
