"""Who the broker agent is and how it proves it: its node id (given, or taken from its
StatefulSet pod name) and its credentials (a CA, then a client certificate or a token).

On Kubernetes a StatefulSet pod is ``<set>-<ordinal>`` (ordinal from 0); node ids start
at 1, so ``felix-broker-4`` is node 5.  The name comes from ``POD_NAME`` (the downward
API), else the hostname, which a StatefulSet sets to the pod name.  Paths may contain
``{node_id}`` so one flag serves every pod (one Secret with a file per broker).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from felix.broker.client import broker_ssl_context

_ORDINAL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-(?P<ordinal>0|[1-9][0-9]{0,8})$")


class IdentityError(ValueError):
    """A flag, a pod name or a credential file that cannot be used; the message says why."""


def node_id_from_pod(env: Mapping[str, str], hostname: str | None = None) -> int:
    """Ordinal + 1 from ``POD_NAME``, else the hostname (its first label)."""
    name = env.get("POD_NAME") or (hostname if hostname is not None else socket.gethostname())
    source = "POD_NAME" if env.get("POD_NAME") else "the hostname"
    name = name.strip()
    if source != "POD_NAME":
        name = name.split(".", 1)[0]
    match = _ORDINAL.match(name)
    if match is None:
        raise IdentityError(
            f"--pod-identity: {source} is {name!r}, not a StatefulSet pod name"
            " <name>-<ordinal> (e.g. felix-broker-4, which is node 5)"
        )
    return int(match["ordinal"]) + 1


def expand(path: str, node_id: int) -> Path:
    """``{node_id}`` in a path is this broker's id; any other brace is an error."""
    try:
        return Path(path.format(node_id=node_id))
    except (KeyError, IndexError, ValueError) as exc:
        raise IdentityError(f"{path!r}: only {{node_id}} may be substituted ({exc})") from None


@dataclass(frozen=True, slots=True)
class Credentials:
    token: str
    ssl_context: ssl.SSLContext | None


def credentials(
    node_id: int,
    *,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token: str | None,
) -> Credentials:
    """A TLS context (``wss://``) when there is a CA, presenting the client certificate
    if given; a token, from ``@FILE`` or literal.  A certificate and a token are
    alternatives; a certificate needs its key and a CA."""
    if (cert is None) != (key is None):
        raise IdentityError("--cert and --key go together")
    if cert is not None and token is not None:
        raise IdentityError("--cert/--key and --token are alternatives: give one")
    if cert is not None and ca is None:
        raise IdentityError("a client certificate needs --ca (the cluster CA)")
    text = ""
    if token is not None:
        if token.startswith("@"):
            token_path = expand(token[1:], node_id)
            try:
                text = token_path.read_text(encoding="ascii").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise IdentityError(f"--token: cannot read {token_path}: {exc}") from None
        else:
            text = token.strip()
        if not text:
            raise IdentityError("--token is empty")
    if ca is None:
        return Credentials(text, None)
    paths = [expand(p, node_id) for p in (ca, cert, key) if p is not None]
    for path in paths:
        if not path.is_file():
            raise IdentityError(f"{path}: no such file")
    try:
        context = broker_ssl_context(*paths)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise IdentityError(
            f"cannot load the TLS material {', '.join(map(str, paths))}: {exc}"
        ) from None
    return Credentials(text, context)
