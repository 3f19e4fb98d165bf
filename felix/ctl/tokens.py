"""``felix ctl token create|list|revoke``: API tokens, kept by the cluster itself.

``create`` makes the secret here, prints the token once, and proposes only its SHA-256
(`felix.metadata.tokens`), so no secret ever travels to, or is stored by, the cluster.
An expiry (``--ttl``) is turned into an absolute time from this machine's clock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import secrets
import time
from typing import Any, Final

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.ctl.errors import CtlError, core, server_error
from felix.ctl.render import table
from felix.ctl.session import REQUEST_ID, Retry, Tries, on_some_endpoint
from felix.ctl.writes import write
from felix.metadata.tokens import ROLE_BROKER, ROLES, format_token, parse_token, secret_hash
from felix.proto.client_messages import Error, ErrorCode, ListTokens, TokenList
from felix.proto.errors import ProtocolError

_TTL: Final = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds in ``30d``, ``12h``, ``15m`` or ``90s``; CtlError (exit 2) otherwise."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise CtlError(f"--ttl {text!r}: expected a number and s, m, h or d (30d)", exit_code=2)
    return int(match.group(1)) * _UNIT_S[match.group(2)]


@core
async def cmd_token_create(args: argparse.Namespace) -> str:
    if args.role not in ROLES:
        raise CtlError(f"--role must be one of {', '.join(ROLES)}", exit_code=2)
    if (args.role == ROLE_BROKER) != (args.node is not None):
        raise CtlError("a broker token needs --node N, and only a broker token", exit_code=2)
    expires_at_ms = None
    if args.ttl is not None:
        expires_at_ms = int(time.time() * 1000) + parse_ttl(args.ttl) * 1000
    token = format_token(secrets.token_hex(8), secrets.token_bytes(32))
    parsed = parse_token(token)
    command_args: dict[str, Any] = {
        "token_id": parsed.id,
        "role": args.role,
        "secret_sha256": secret_hash(parsed.secret),
        "node_id": args.node,
        "expires_at_ms": expires_at_ms,
        "description": args.description,
    }
    version = await write(args, "create_token", command_args)
    if args.output == "json":
        payload = {"token": token, "id": parsed.id, "role": args.role, "version": version}
        return json.dumps(payload | {"node_id": args.node, "expires_at_ms": expires_at_ms})
    return f"{token}\n(token {parsed.id}, {args.role}, at version {version}; shown only once)"


@core
async def cmd_token_revoke(args: argparse.Namespace) -> str:
    version = await write(args, "revoke_token", {"token_id": args.id})
    return f"revoked token {args.id} at version {version}"


@core
async def cmd_token_list(args: argparse.Namespace) -> str:
    listed = await fetch_tokens(args)
    if args.output == "json":
        rows = [
            {"id": t.id, "role": t.role, "node_id": t.node_id,
             "expires_at_ms": t.expires_at_ms, "description": t.description}
            for t in listed.tokens
        ]  # fmt: skip
        return json.dumps({"version": listed.version, "tokens": rows})
    return table(
        ["ID", "ROLE", "NODE", "EXPIRES", "DESCRIPTION"],
        [
            [t.id, t.role, str(t.node_id or "-"), _when(t.expires_at_ms), t.description or "-"]
            for t in listed.tokens
        ],
    )


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def fetch_tokens(args: argparse.Namespace) -> TokenList:
    async def attempt(conn: ClientConnection, name: str, tries: Tries) -> TokenList:
        try:
            await conn.send(ListTokens(REQUEST_ID))
            while True:
                reply = await conn.receive()
                if isinstance(reply, TokenList) and reply.request_id == REQUEST_ID:
                    return reply
                if isinstance(reply, Error) and reply.request_id in (REQUEST_ID, None):
                    if reply.code is ErrorCode.UNAVAILABLE:
                        raise Retry(reply.detail)
                    raise server_error(reply)
        except (ConnectionClosed, ProtocolError) as exc:
            raise Retry(f"connection lost: {exc}") from None

    return await on_some_endpoint(args, attempt)
