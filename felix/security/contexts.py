"""TLS contexts for peer, broker and admin links, and what a failed handshake means.

Stdlib ``ssl`` only: this is the hot path's side of security (`felix.security.certs`
makes the files, with ``cryptography``, and is never imported here).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

StrPath = str | os.PathLike[str]


class TlsConfigError(ValueError):
    """TLS files that do not make a context; the message names the file and the reason."""


def _base(protocol: int, ca_path: StrPath) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # Only the given CA: no system store, so a public certificate is never a member.
    try:
        context.load_verify_locations(cafile=os.fspath(ca_path))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"CA file {ca_path}: {_load_reason(exc)}") from exc
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def server_context(
    cert_path: StrPath, key_path: StrPath, ca_path: StrPath, *, require_client_cert: bool
) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting ``cert_path``.

    With ``require_client_cert`` (peer links) a client without a certificate from the CA
    is refused in the handshake.  Without it (the client port, where a token may stand
    in) a client certificate is still asked for and, if one is sent, verified against
    the CA, so a broker may authenticate either way but never with a foreign CA.
    """
    context = _base(ssl.PROTOCOL_TLS_SERVER, ca_path)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load_chain(context, cert_path, key_path)
    return context


def _load_chain(context: ssl.SSLContext, cert_path: StrPath, key_path: StrPath | None) -> None:
    try:
        context.load_cert_chain(os.fspath(cert_path), os.fspath(key_path) if key_path else None)
    except (OSError, ssl.SSLError) as exc:
        what = f"certificate {cert_path}" + (f" with key {key_path}" if key_path else "")
        raise TlsConfigError(f"{what}: {_load_reason(exc)}") from exc


def client_context(
    ca_path: StrPath, cert_path: StrPath | None = None, key_path: StrPath | None = None
) -> ssl.SSLContext:
    """A TLS 1.3 client context trusting only ``ca_path``, presenting a certificate if given.

    Host name checking is off: peers and brokers dial addresses from the membership,
    which may be IPs or names that change, so a DNS or IP SAN proves little.  Instead
    the caller checks the server's identity URI against the node id it meant to reach
    (`felix.security.identity.require_identity` on ``getpeercert()``), which the chain
    verification (CERT_REQUIRED) makes trustworthy.
    """
    context = _base(ssl.PROTOCOL_TLS_CLIENT, ca_path)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_path is not None:
        _load_chain(context, cert_path, key_path)
    elif key_path is not None:
        raise TlsConfigError("a key without a certificate")
    return context


# --- reloading ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a node's or client's TLS material lives (certificate and key optional for
    clients that authenticate by token)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


class ReloadableContext:
    """The active SSLContext, replaced on ``reload()`` only by one that builds.

    Each connection keeps the context it was made with, so a reload (on SIGHUP or a file
    change) affects new handshakes only and never drops a healthy connection.
    """

    def __init__(self, files: TlsFiles, build: Callable[[TlsFiles], ssl.SSLContext]) -> None:
        self.files = files
        self._build = build
        self._current = self._load()

    @classmethod
    def server(cls, files: TlsFiles, *, require_client_cert: bool) -> ReloadableContext:
        if files.cert is None or files.key is None:
            raise TlsConfigError("a server needs a certificate and a key")

        def build(f: TlsFiles) -> ssl.SSLContext:
            assert f.cert is not None and f.key is not None
            return server_context(f.cert, f.key, f.ca, require_client_cert=require_client_cert)

        return cls(files, build)

    @classmethod
    def client(cls, files: TlsFiles) -> ReloadableContext:
        return cls(files, lambda f: client_context(f.ca, f.cert, f.key))

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def reload(self) -> ssl.SSLContext:
        """Build from the files again and swap in the result; TlsConfigError keeps the old."""
        self._current = self._load()
        return self._current

    def _load(self) -> ssl.SSLContext:
        try:
            return self._build(self.files)
        except TlsConfigError as exc:
            raise TlsConfigError(f"cannot load TLS files: {exc}") from exc


def _load_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        if exc.reason:
            return _words(exc.reason)
        if "PEM lib" in str(exc):
            return "not a valid PEM certificate and private key"
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# --- handshake errors --------------------------------------------------------------------

UNKNOWN_CA: Final = "unknown CA"
EXPIRED: Final = "certificate expired"
NOT_YET_VALID: Final = "certificate not yet valid"
NO_CLIENT_CERT: Final = "no client certificate"
NOT_TLS: Final = "not TLS (plaintext on a TLS port?)"
TIMED_OUT: Final = "handshake timed out"
CLOSED: Final = "connection closed during the handshake"
TLS_VERSION: Final = "TLS version not supported (TLS 1.3 only)"
BY_PEER: Final = " (reported by the peer)"

# X509_V_ERR_* codes from our own verification of the other side's chain.
_VERIFY_CODES: Final[dict[int, str]] = {
    2: UNKNOWN_CA,  # unable to get issuer certificate
    18: UNKNOWN_CA,  # self-signed leaf
    19: UNKNOWN_CA,  # self-signed certificate in chain
    20: UNKNOWN_CA,  # unable to get local issuer certificate
    21: UNKNOWN_CA,  # unable to verify the first certificate
    9: NOT_YET_VALID,
    10: EXPIRED,
}
# OpenSSL reasons seen locally.
_REASONS: Final[dict[str, str]] = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": NO_CLIENT_CERT,
    "WRONG_VERSION_NUMBER": NOT_TLS,
    "HTTP_REQUEST": NOT_TLS,
    "HTTPS_PROXY_REQUEST": NOT_TLS,
    "UNKNOWN_PROTOCOL": NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": NOT_TLS,
    "RECORD_LAYER_FAILURE": NOT_TLS,
    "UNEXPECTED_EOF_WHILE_READING": CLOSED,
    "UNSUPPORTED_PROTOCOL": TLS_VERSION,
    "NO_PROTOCOLS_AVAILABLE": TLS_VERSION,
}
# Alerts: the other side refused us (our certificate, usually) and said why.
_ALERTS: Final[dict[str, str]] = {
    "UNKNOWN_CA": UNKNOWN_CA,
    "CERTIFICATE_EXPIRED": EXPIRED,
    "CERTIFICATE_REQUIRED": NO_CLIENT_CERT,
    "PROTOCOL_VERSION": TLS_VERSION,
}
_ALERT_PREFIXES: Final = ("TLSV13_ALERT_", "TLSV1_ALERT_", "SSLV3_ALERT_")
_CAUSES_MAX: Final = 8


def _words(reason: str) -> str:
    return reason.lower().replace("_", " ")


def _root_cause(exc: BaseException) -> BaseException:
    """The first ssl or timeout error under ``exc`` (trio wraps SSLError in
    BrokenResourceError), else ``exc``."""
    seen = exc
    for _ in range(_CAUSES_MAX):
        if isinstance(seen, ssl.SSLError | TimeoutError):
            return seen
        if type(seen).__name__ == "TooSlowError":  # trio.fail_after, without importing trio
            return seen
        if isinstance(seen, BaseExceptionGroup) and len(seen.exceptions) == 1:
            nxt: BaseException | None = seen.exceptions[0]
        else:
            nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            break
        seen = nxt
    return exc


def classify_handshake_error(exc: BaseException) -> str:
    """Operator words for why a TLS handshake failed (for the refusal's log line).

    A side that verified the other's certificate names the defect ("certificate
    expired"); a side the other refused gets the reason from the alert, marked
    `BY_PEER` ("certificate expired (reported by the peer)"): it is then its own
    certificate that was refused.  Anything else is OpenSSL's reason in words.
    """
    cause = _root_cause(exc)
    if isinstance(cause, TimeoutError) or type(cause).__name__ == "TooSlowError":
        return TIMED_OUT
    if isinstance(cause, ssl.SSLCertVerificationError):
        code = cause.verify_code
        return _VERIFY_CODES.get(code) or cause.verify_message or f"verify error {code}"
    if isinstance(cause, ssl.SSLEOFError):
        return CLOSED
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or ""
        if reason in _REASONS:
            return _REASONS[reason]
        for prefix in _ALERT_PREFIXES:
            if reason.startswith(prefix):
                alert = reason.removeprefix(prefix)
                return _ALERTS.get(alert, _words(alert)) + BY_PEER
        return _words(reason) if reason else str(cause)
    return str(cause) or type(cause).__name__
