"""API tokens, kept by the cluster itself: roles, and the hash of each secret.

A token is ``fx1.<id>.<secret>``: ``id`` is 16 hex digits, public, the key of its
record; ``secret`` is 32 random bytes (URL-safe base64) that only its holder knows.  The
cluster stores the SHA-256 of the secret, never the secret (`felix ctl token create`
makes the token, prints it once, and proposes only the hash).  A 256-bit random secret
needs no slow password hash: guessing it is as hard as finding a SHA-256 preimage.

Token records are replicated through Raft like every other command's effect, so every
node enforces the same set within one commit of a change (docs/architecture.md §12).
They are *private*: not records of the brokers' view, not in deltas, not in the digest,
only in the control plane's own snapshots.

Roles (docs/architecture.md §12):

* ``admin``: every request, membership and leadership operations, tokens.
* ``reader``: watch and snapshots (monitoring, read-only ctl).
* ``broker``: bound to one node id; watch, snapshots, and for that node only:
  register, report health, drain and undrain.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Annotated, Final

from felix.proto.cbor import IntRange, MaxLen, wire_array
from felix.proto.client_messages import TOKENS_LISTED_MAX

ROLE_ADMIN: Final = "admin"
ROLE_READER: Final = "reader"
ROLE_BROKER: Final = "broker"
ROLES: Final = (ROLE_ADMIN, ROLE_READER, ROLE_BROKER)

TOKEN_PREFIX: Final = "fx1"
TOKEN_ID_PATTERN: Final = re.compile(r"[0-9a-f]{16}")
SECRET_HASH_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
_SECRET_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{43}")
TOKEN_BYTES_MAX: Final = 128  # what a client may send; a real token is 64 characters
TOKENS_MAX: Final = TOKENS_LISTED_MAX  # records in the cluster: one `TokenList` holds them all


@wire_array
@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One token as the cluster keeps it.  ``expires_at_ms`` is wall-clock Unix time
    (None: never), checked by each node against its own clock."""

    id: Annotated[str, MaxLen(16)]
    role: Annotated[str, MaxLen(16)]
    node_id: Annotated[int, IntRange(1, 2**63 - 1)] | None
    secret_sha256: Annotated[str, MaxLen(64)]
    expires_at_ms: Annotated[int, IntRange(0, 2**62)] | None
    description: Annotated[str, MaxLen(200)]


@dataclass(frozen=True, slots=True)
class ParsedToken:
    id: str
    secret: str


class TokenFormatError(ValueError):
    """The text is not a Felix token (wrong shape; says what, never echoes the secret)."""


def parse_token(text: str) -> ParsedToken:
    """Split a presented token; raises `TokenFormatError`."""
    if len(text) > TOKEN_BYTES_MAX:
        raise TokenFormatError(f"a token is at most {TOKEN_BYTES_MAX} characters")
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise TokenFormatError(f"a token looks like {TOKEN_PREFIX}.<id>.<secret>")
    _, token_id, secret = parts
    if not TOKEN_ID_PATTERN.fullmatch(token_id) or not _SECRET_PATTERN.fullmatch(secret):
        raise TokenFormatError("malformed token id or secret")
    return ParsedToken(token_id, secret)


def format_token(token_id: str, secret_bytes: bytes) -> str:
    """The token text for ``token_id`` and 32 random bytes (the caller draws them)."""
    if not TOKEN_ID_PATTERN.fullmatch(token_id) or len(secret_bytes) != 32:
        raise ValueError("a token needs a 16-hex-digit id and 32 secret bytes")
    secret = base64.urlsafe_b64encode(secret_bytes).rstrip(b"=").decode()
    return f"{TOKEN_PREFIX}.{token_id}.{secret}"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(record: TokenRecord, secret: str) -> bool:
    """Constant-time comparison of the presented secret with the stored hash."""
    return hmac.compare_digest(secret_hash(secret), record.secret_sha256)


def check_record(record: TokenRecord) -> str | None:
    """Why ``record`` cannot be stored (None if it can): the state-independent rules."""
    if not TOKEN_ID_PATTERN.fullmatch(record.id):
        return "token id must be 16 lowercase hex digits"
    if record.role not in ROLES:
        return f"role must be one of {', '.join(ROLES)}"
    if (record.role == ROLE_BROKER) != (record.node_id is not None):
        return "a broker token names exactly one node id; other roles name none"
    if not SECRET_HASH_PATTERN.fullmatch(record.secret_sha256):
        return "secret_sha256 must be 64 lowercase hex digits"
    return None
