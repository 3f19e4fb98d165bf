"""Who is on the other end of a TLS link: the ``felix://`` URI in a certificate's SAN.

A peer, broker or admin is named by exactly one URI in its certificate's
subjectAltName::

    felix://<cluster_id>/node/<id>      control-plane nodes (ids >= 1)
    felix://<cluster_id>/broker/<id>    broker client certificates (ids >= 1)
    felix://<cluster_id>/admin/<name>   admin client certificates

The URI, not a DNS name, is what the transports compare with the node id a peer states
in its ``Hello``: pod DNS names and IPs change, the identity does not.  Parsing is
strict (one spelling per identity, bounded length) because its result decides access.
Stdlib only: the hot path imports this module, not ``cryptography``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

Kind = Literal["node", "broker", "admin"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)
SCHEME: Final = "felix"
URI_CHARS_MAX: Final = 256
ID_MAX: Final = 2**63 - 1  # the wire's node id range (felix.proto.raft_messages)
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ID = re.compile(r"[1-9][0-9]{0,18}")  # canonical decimal: no sign, no leading zeros


class IdentityError(ValueError):
    """A malformed identity URI, or a certificate without exactly one."""


def check_name(value: object, what: str) -> str:
    """``value`` if it is a valid cluster id or admin name, else IdentityError."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise IdentityError(f"{what} must be 1-64 characters of [A-Za-z0-9._-], got {value!r}")
    return value


def _check_id(value: object, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ID_MAX:
        raise IdentityError(f"{kind} id must be an integer in [1, 2**63), got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Identity:
    """One cluster member or client: ``ident`` is an int for node/broker, a name for admin."""

    cluster_id: str
    kind: Kind
    ident: int | str

    def __post_init__(self) -> None:
        check_name(self.cluster_id, "cluster id")
        if self.kind not in KINDS:
            raise IdentityError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "admin":
            check_name(self.ident, "admin name")
        else:
            _check_id(self.ident, self.kind)

    @classmethod
    def node(cls, cluster_id: str, node_id: int) -> Identity:
        return cls(cluster_id, "node", node_id)

    @classmethod
    def broker(cls, cluster_id: str, broker_id: int) -> Identity:
        return cls(cluster_id, "broker", broker_id)

    @classmethod
    def admin(cls, cluster_id: str, name: str) -> Identity:
        return cls(cluster_id, "admin", name)

    def uri(self) -> str:
        return f"{SCHEME}://{self.cluster_id}/{self.kind}/{self.ident}"

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """The identity a URI names; IdentityError saying what is wrong with it."""
        if not isinstance(uri, str):
            raise IdentityError(f"identity URI must be a string, got {type(uri).__name__}")
        if len(uri) > URI_CHARS_MAX:
            raise IdentityError(f"identity URI longer than {URI_CHARS_MAX} characters")
        prefix = f"{SCHEME}://"
        if not uri.startswith(prefix):
            raise IdentityError(f"identity URI must start with {prefix!r}: {uri!r}")
        parts = uri[len(prefix) :].split("/")
        if len(parts) != 3:
            raise IdentityError(f"identity URI must be {prefix}<cluster>/<kind>/<id>: {uri!r}")
        cluster_id, kind, ident = parts
        if kind not in KINDS:
            raise IdentityError(f"unknown identity kind {kind!r} in {uri!r}")
        if kind == "admin":
            return cls(cluster_id, "admin", ident)
        if not _ID.fullmatch(ident):
            raise IdentityError(f"{kind} id must be a decimal integer >= 1 in {uri!r}")
        return cls(cluster_id, cast(Kind, kind), int(ident))

    def __str__(self) -> str:
        return self.uri()


def felix_uris(peercert: Mapping[str, Any] | None) -> list[str]:
    """The URI SAN entries of ``getpeercert()``'s dict whose scheme is felix (any case)."""
    if not peercert:
        return []
    return [
        value
        for entry in peercert.get("subjectAltName", ())
        if len(entry) == 2
        for kind, value in [entry]
        if kind == "URI" and isinstance(value, str) and value.lower().startswith(SCHEME + ":")
    ]


def identity_of(peercert: Mapping[str, Any] | None) -> Identity:
    """The one felix identity in a verified peer certificate (``SSLObject.getpeercert()``).

    No certificate, no felix URI, or several are all refusals: a certificate naming two
    members would let one holder act as either.  Other URIs (e.g. SPIFFE) are ignored.
    """
    if not peercert:
        raise IdentityError("no peer certificate (or it was not verified)")
    uris = felix_uris(peercert)
    if not uris:
        raise IdentityError("peer certificate has no felix:// URI in its subjectAltName")
    if len(uris) > 1:
        raise IdentityError(f"peer certificate has {len(uris)} felix:// URIs: {', '.join(uris)}")
    return Identity.parse(uris[0])


def require_identity(peercert: Mapping[str, Any] | None, expected: Identity) -> Identity:
    """The peer's identity if it is ``expected``, else IdentityError naming both."""
    found = identity_of(peercert)
    if found != expected:
        raise IdentityError(f"identity mismatch: expected {expected.uri()}, got {found.uri()}")
    return found
