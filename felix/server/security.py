"""A node's TLS and authentication, built once from its config (docs/architecture.md §12).

`NodeSecurity.from_config` loads everything up front, so a bad certificate, key or
token file stops the node at start with a message naming the file, never at the first
connection.  The transport, the client API and the ops server get what they need from
it (`peer_tls`, `client_tls`, `ops_tls`, `authenticator`); `reload` (SIGHUP) rebuilds the contexts
and rereads the bootstrap token, keeping the old ones if the new files do not load:
connections already made keep theirs, new ones use the new material.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from felix.config import NodeConfig
from felix.security.certs import CertError, describe, load_cert
from felix.security.contexts import (
    ReloadableContext,
    TlsConfigError,
    TlsFiles,
    classify_handshake_error,
)
from felix.security.identity import Identity, IdentityError, identity_of
from felix.server.auth import Authenticator, BootstrapTokenError, read_bootstrap_token
from felix.server.metadata_sm import MetadataStore
from felix.server.ws_server import ServerTls
from felix.transport.tcp import PeerTls

log = logging.getLogger("felix.security")


class SecurityConfigError(Exception):
    """TLS or auth material that cannot be used; the message names the file and why."""


@dataclass
class NodeSecurity:
    cluster_id: str
    peer_server: ReloadableContext | None = None
    peer_client: ReloadableContext | None = None
    client_server: ReloadableContext | None = None
    bootstrap_file: Path | None = None
    _authenticators: list[Authenticator] = field(default_factory=list)

    @property
    def insecure(self) -> bool:
        return self.peer_server is None

    @classmethod
    def from_config(cls, config: NodeConfig) -> NodeSecurity:
        """Everything loaded now; `SecurityConfigError` if anything does not load.
        With ``config.insecure`` nothing is loaded (plaintext, no authentication)."""
        if config.insecure:
            return cls(config.cluster_id)
        problem = config.security_problem()
        if problem is not None:
            raise SecurityConfigError(problem)
        tls = config.tls
        node = TlsFiles(Path(tls.ca), Path(tls.cert), Path(tls.key))
        clients = TlsFiles(Path(tls.client_ca or tls.ca), Path(tls.cert), Path(tls.key))
        bootstrap = Path(config.auth.bootstrap_token_file)
        try:
            security = cls(
                config.cluster_id,
                peer_server=ReloadableContext.server(node, require_client_cert=True),
                peer_client=ReloadableContext.client(node),
                client_server=ReloadableContext.server(clients, require_client_cert=False),
                bootstrap_file=bootstrap,
            )
            read_bootstrap_token(bootstrap)
        except (TlsConfigError, BootstrapTokenError) as exc:
            raise SecurityConfigError(str(exc)) from None
        security._check_own_identity(config.node_id)
        return security

    def _check_own_identity(self, node_id: int) -> None:
        """A node must present the identity it is: a certificate for another node or
        cluster would be refused by every peer, so refuse it here, clearly, at start."""
        assert self.peer_server is not None
        path = self.peer_server.files.cert
        try:
            shown = describe(load_cert(str(path)))["identity"]
            found = Identity.parse(shown)
        except (CertError, IdentityError) as exc:
            raise SecurityConfigError(f"{path}: no usable felix:// identity ({exc})") from None
        if found != Identity.node(self.cluster_id, node_id):
            raise SecurityConfigError(
                f"{path} names {found.uri()}, but this is node {node_id}"
                f" of cluster {self.cluster_id!r}"
            )

    def node_of(self, peercert: dict[str, Any]) -> int:
        """The node id a verified peer certificate names in this cluster (ValueError
        saying why it names none)."""
        found = identity_of(peercert)
        if found.cluster_id != self.cluster_id or found.kind != "node":
            raise IdentityError(f"{found.uri()} is not a node of cluster {self.cluster_id!r}")
        assert isinstance(found.ident, int)
        return found.ident

    def peer_tls(self) -> PeerTls | None:
        if self.peer_server is None or self.peer_client is None:
            return None
        server, client = self.peer_server, self.peer_client
        return PeerTls(
            server_context=lambda: server.current,
            client_context=lambda: client.current,
            node_of=self.node_of,
            describe=classify_handshake_error,
        )

    def ops_tls(self, enabled: bool) -> Callable[[], ssl.SSLContext] | None:
        """The ops port's context (the client port's: the node's certificate, client
        certificates optional); None when insecure or ``tls.ops`` is off."""
        if self.client_server is None or not enabled:
            return None
        server = self.client_server
        return lambda: server.current

    def client_tls(self) -> ServerTls | None:
        if self.client_server is None:
            return None
        server = self.client_server
        return ServerTls(context=lambda: server.current, describe=classify_handshake_error)

    def authenticator(self, store: MetadataStore) -> Authenticator | None:
        if self.bootstrap_file is None:
            return None
        auth = Authenticator(store.tokens, self.bootstrap_file, cluster_id=self.cluster_id)
        self._authenticators.append(auth)
        return auth

    def reload(self) -> list[str]:
        """Reread every file (SIGHUP); returns the problems (the old material stays in
        use for each one that failed)."""
        problems: list[str] = []
        for context in (self.peer_server, self.peer_client, self.client_server):
            if context is None:
                continue
            try:
                context.reload()
            except TlsConfigError as exc:
                problems.append(str(exc))
        for auth in self._authenticators:
            try:
                auth.reload()
            except BootstrapTokenError as exc:
                problems.append(str(exc))
        return problems
