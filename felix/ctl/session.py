"""Talking to the cluster: the ``--endpoints`` are tried in order, round after round with
back-off, until one serves the request or ``--timeout`` runs out.  A node that cannot
serve it (not the leader, say) makes the attempt raise `Retry`; the ctl never maps node
ids to addresses.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import trio

from felix.broker.connection import ClientConnection, ConnectionClosed, TlsRefused
from felix.config import ConfigError, client_credentials, parse_endpoint
from felix.ctl.errors import CtlError
from felix.proto.errors import ProtocolError
from felix.security.contexts import TlsConfigError, client_context

CONNECT_TIMEOUT_S: Final = 2.0
RETRY_DELAY_S: Final = (0.05, 1.0)  # first and largest pause between rounds of endpoints
REQUEST_ID: Final = 1  # one request per connection

T = TypeVar("T")


class Retry(Exception):
    """This endpoint cannot serve the request now; try the next one."""


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    endpoints = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            endpoint = parse_endpoint(item)
        except ValueError as exc:
            raise CtlError(f"--endpoints: {item!r}: {exc}", exit_code=2) from None
        endpoints.append((endpoint.host, endpoint.port))
    if not endpoints:
        raise CtlError("--endpoints: no endpoint given", exit_code=2)
    return endpoints


@dataclass(frozen=True, slots=True)
class Link:
    """How the ctl reaches a node: token and TLS (from `felix.config.client_credentials`)."""

    token: str = ""
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Link:
        try:
            creds = client_credentials(getattr(args, "token", None), getattr(args, "ca", None))
            context = client_context(creds.ca) if creds.ca is not None else None
        except (ConfigError, TlsConfigError) as exc:
            raise CtlError(str(exc), exit_code=2) from None
        return cls(creds.token, context)


async def connect(host: str, port: int, link: Link | None = None) -> ClientConnection:
    link = link or Link()
    try:
        return await ClientConnection.open(
            host,
            port,
            timeout_s=CONNECT_TIMEOUT_S,
            token=link.token,
            ssl_context=link.ssl_context,
        )
    except TlsRefused as exc:
        raise Retry(str(exc)) from None
    except trio.TooSlowError:
        raise Retry(f"no WebSocket handshake within {CONNECT_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise Retry(_os_reason(exc)) from None
    except (ConnectionClosed, ProtocolError) as exc:
        raise Retry(f"handshake failed: {exc}") from None


def _os_reason(exc: OSError) -> str:
    """Say "connection refused" rather than trio's "all attempts to connect ... failed"."""
    causes: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        causes = list(exc.__cause__.exceptions)
    reasons = {
        c.strerror.rsplit(": ", 1)[-1].lower()
        for c in causes
        if isinstance(c, OSError) and c.strerror
    }
    return ", ".join(sorted(reasons)) or str(exc)


@dataclass
class Tries:
    """What the endpoints said so far, for the error message when none would do."""

    problems: dict[str, str] = field(default_factory=dict)
    in_doubt: str | None = None  # the endpoint holding a write with no outcome yet

    def summary(self) -> str:
        return "; ".join(f"{name}: {problem}" for name, problem in self.problems.items())


async def on_some_endpoint(
    args: argparse.Namespace, attempt: Callable[[ClientConnection, str, Tries], Awaitable[T]]
) -> T:
    """Run ``attempt`` on the endpoints in order, round after round (with back-off),
    until one does not raise `Retry`.  A round in which nothing was even reachable ends
    the command, as does ``--timeout``."""
    endpoints = parse_endpoints(args.endpoints)
    link = Link.from_args(args)
    tries = Tries()
    delay = RETRY_DELAY_S[0]
    with trio.move_on_after(args.timeout):
        while True:
            reachable = False
            for host, port in endpoints:
                name = f"{host}:{port}"
                try:
                    conn = await connect(host, port, link)
                except Retry as exc:
                    tries.problems[name] = f"unreachable ({exc})"
                    continue
                reachable = True
                try:
                    return await attempt(conn, name, tries)
                except Retry as exc:
                    tries.problems[name] = str(exc)
                finally:
                    with trio.CancelScope(shield=True):
                        await conn.aclose()
            if not reachable:
                raise CtlError(
                    f"no endpoint reachable ({tries.summary()}); "
                    "is the cluster running? (see --endpoints)"
                )
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_DELAY_S[1])
    if tries.in_doubt is not None:
        raise CtlError(
            f"timeout: no outcome from {tries.in_doubt} within {args.timeout:g} s; "
            "the write may still be applied"
        )
    raise CtlError(
        f"timeout: no endpoint served the request within {args.timeout:g} s"
        + (f" ({tries.summary()})" if tries.problems else "")
    )
