"""Who is asking, and may they: authentication, then the role rules, in one place.

`Authenticator.authenticate` turns a bearer token into a `Principal`.  The token is
either one of the cluster's own records (`MetadataState.tokens`, replicated through
Raft) or the bootstrap admin token, read from a file given at cluster creation: that
token is not in the table (it is how the first real tokens get made), and `reload`
reads the file again on SIGHUP.  A verified client certificate names a principal too
(`principal_of_certificate`).

The ``authorize_*`` functions are pure: a principal and a request in, a refusal reason
(or None) out.  The caller sends the reason back as ``Error{unauthorized}``, counts it,
and changes nothing (docs/architecture.md §12).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from felix.metadata import commands as cmds
from felix.metadata.tokens import (
    ROLE_ADMIN,
    ROLE_BROKER,
    ROLE_READER,
    TokenFormatError,
    TokenRecord,
    parse_token,
    secret_hash,
    secret_matches,
)
from felix.security.identity import Identity, IdentityError, identity_of

log = logging.getLogger("felix.auth")

BOOTSTRAP_FILE_BYTES_MAX: Final = 4096

# What a broker may do for its own node id (and nothing for another's).
# What a broker may send for its own node (its own health is a fact it reports).
_BROKER_COMMANDS: Final = (
    cmds.RegisterNode,
    cmds.DrainNode,
    cmds.UndrainNode,
    cmds.ReplicaReady,
    cmds.NodeHealth,
)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.  ``node_id`` is set for brokers only; ``token_id`` for
    cluster tokens only (the key revocation and expiry are checked against)."""

    role: str
    node_id: int | None = None
    token_id: str | None = None
    source: str = "token"  # "token", "bootstrap", "certificate", "insecure"

    def describe(self) -> str:
        who = f"broker {self.node_id}" if self.role == ROLE_BROKER else self.role
        if self.token_id is not None:
            return f"{who} (token {self.token_id})"
        return f"{who} ({self.source})"


INSECURE: Final = Principal(ROLE_ADMIN, source="insecure")


class Unauthorized(Exception):
    """Authentication failed; the message says why without echoing the credential."""


class UnknownToken(Unauthorized):
    """The token id is not in this node's applied state: revoked, never made, or made
    so recently that this node has not applied it yet (the caller may wait for a
    linearizable read point and ask again)."""


class BootstrapTokenError(Exception):
    """The bootstrap token file is missing, unreadable or not a token."""


def read_bootstrap_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace ignored); raises
    `BootstrapTokenError`."""
    try:
        with path.open("rb") as f:
            raw = f.read(BOOTSTRAP_FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise BootstrapTokenError(f"cannot read bootstrap token file {path}: {exc}") from None
    if len(raw) > BOOTSTRAP_FILE_BYTES_MAX:
        raise BootstrapTokenError(f"bootstrap token file {path} is too large for a token")
    try:
        text = raw.decode("ascii").strip()
        parse_token(text)
    except (UnicodeDecodeError, TokenFormatError) as exc:
        raise BootstrapTokenError(
            f"bootstrap token file {path}: not a Felix token ({exc})"
        ) from None
    return text


class Authenticator:
    """Checks tokens against the replicated table and the bootstrap token.  Called by
    the Trio tasks of one node; ``tokens`` reads the node's applied state."""

    def __init__(
        self,
        tokens: Callable[[], Mapping[str, TokenRecord]],
        bootstrap_file: Path | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        cluster_id: str = "",
    ) -> None:
        self._tokens = tokens
        self.cluster_id = cluster_id  # client certificates must name this cluster
        self.bootstrap_file = bootstrap_file
        self._now_ms = now_ms
        self._bootstrap: tuple[str, str] | None = None  # (id, secret hash)
        if bootstrap_file is not None:
            self.reload()

    def reload(self) -> None:
        """Read the bootstrap token file again; a bad file keeps the token in use and
        raises `BootstrapTokenError` (logged by the caller)."""
        if self.bootstrap_file is None:
            return
        parsed = parse_token(read_bootstrap_token(self.bootstrap_file))
        self._bootstrap = (parsed.id, secret_hash(parsed.secret))

    def authenticate(self, token: str) -> Principal:
        if not token:
            raise Unauthorized("no credentials: send a bearer token (or a client certificate)")
        try:
            parsed = parse_token(token)
        except TokenFormatError as exc:
            raise Unauthorized(f"not a Felix token: {exc}") from None
        bootstrap = self._bootstrap
        if bootstrap is not None and parsed.id == bootstrap[0]:
            if hmac.compare_digest(secret_hash(parsed.secret), bootstrap[1]):
                return Principal(ROLE_ADMIN, source="bootstrap")
            raise Unauthorized(f"wrong secret for token {parsed.id}")
        record = self._tokens().get(parsed.id)
        if record is None:
            raise UnknownToken(f"unknown or revoked token {parsed.id}")
        if not secret_matches(record, parsed.secret):
            raise Unauthorized(f"wrong secret for token {parsed.id}")
        if self._expired(record):
            raise Unauthorized(f"token {parsed.id} has expired")
        return Principal(record.role, record.node_id, record.id)

    def certificate(self, peercert: Mapping[str, Any]) -> Principal:
        """The principal of a verified client certificate (`Unauthorized` if it names
        no client of this cluster)."""
        try:
            return principal_of_certificate(self.cluster_id, identity_of(peercert))
        except IdentityError as exc:
            raise Unauthorized(f"client certificate: {exc}") from None

    def still_valid(self, principal: Principal) -> str | None:
        """Why ``principal`` may no longer act (revoked, expired, bootstrap token
        replaced), or None.  Asked for every open session when tokens change."""
        if principal.source == "bootstrap":
            return None if self._bootstrap is not None else "the bootstrap token was removed"
        if principal.token_id is None:
            return None
        record = self._tokens().get(principal.token_id)
        if record is None:
            return f"token {principal.token_id} was revoked"
        if self._expired(record):
            return f"token {principal.token_id} has expired"
        return None

    def _expired(self, record: TokenRecord) -> bool:
        return record.expires_at_ms is not None and self._now_ms() >= record.expires_at_ms


# --- authorization (pure) ---------------------------------------------------------------


def authorize_watch(principal: Principal, node_id: int | None) -> str | None:
    """Watching and snapshots are for every role; a broker watches as itself only."""
    if principal.role == ROLE_BROKER and node_id not in (None, principal.node_id):
        return f"{principal.describe()} may not watch as broker {node_id}"
    return None


def authorize_health(principal: Principal, node_id: int) -> str | None:
    if principal.role == ROLE_ADMIN:
        return None
    if principal.role == ROLE_BROKER and principal.node_id == node_id:
        return None
    return f"{principal.describe()} may not report health for node {node_id}"


def authorize_write(principal: Principal, command: cmds.Command) -> str | None:
    if principal.role == ROLE_ADMIN:
        return None
    overrides = getattr(command, "force", False) or getattr(command, "operator", False)
    if principal.role == ROLE_BROKER and overrides:  # an operator's decisions
        return f"{principal.describe()} may not send {command.NAME} with force or operator"
    if principal.role == ROLE_BROKER and isinstance(command, _BROKER_COMMANDS):
        if command.node_id == principal.node_id:
            return None
        return f"{principal.describe()} may not {command.NAME} for node {command.node_id}"
    if principal.role == ROLE_READER:
        return f"{principal.describe()} is read-only: {command.NAME} needs the admin role"
    return f"{principal.describe()} may not {command.NAME}: it needs the admin role"


def authorize_admin(principal: Principal, operation: str) -> str | None:
    """Membership, leadership and other ops-port administration."""
    if principal.role == ROLE_ADMIN:
        return None
    return f"{principal.describe()} may not {operation}: it needs the admin role"


def principal_of_certificate(cluster_id: str, identity: Identity) -> Principal:
    """The principal a verified client certificate names: ``broker/<id>`` a broker bound
    to that id, ``admin/<name>`` an admin; anything else (a node's, another cluster's)
    authenticates no client."""
    if identity.cluster_id != cluster_id:
        raise Unauthorized(f"the client certificate is for cluster {identity.cluster_id!r}")
    if identity.kind == "broker":
        assert isinstance(identity.ident, int)
        return Principal(ROLE_BROKER, identity.ident, source="certificate")
    if identity.kind == "admin":
        return Principal(ROLE_ADMIN, source="certificate")
    raise Unauthorized(f"a {identity.kind} certificate names no client role")
