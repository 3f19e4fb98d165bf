"""classify_handshake_error on errors as they arrive: wrapped by trio, grouped, timed out."""

from __future__ import annotations

import ssl

import trio

from felix.security.contexts import (
    BY_PEER,
    CLOSED,
    NOT_TLS,
    TIMED_OUT,
    UNKNOWN_CA,
    classify_handshake_error,
)


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] ...")
    exc.reason = reason
    return exc


def _wrapped(cause: BaseException) -> trio.BrokenResourceError:
    try:
        raise trio.BrokenResourceError from cause
    except trio.BrokenResourceError as exc:
        return exc


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code, exc.verify_message = code, message
    return exc


def test_timeouts() -> None:
    assert classify_handshake_error(trio.TooSlowError()) == TIMED_OUT
    assert classify_handshake_error(TimeoutError()) == TIMED_OUT


def test_trio_wrapping_and_groups_are_looked_through() -> None:
    wrapped = _wrapped(_ssl_error("WRONG_VERSION_NUMBER"))
    assert classify_handshake_error(wrapped) == NOT_TLS
    assert classify_handshake_error(ExceptionGroup("x", [wrapped])) == NOT_TLS
    assert classify_handshake_error(_wrapped(ssl.SSLEOFError(8, "EOF"))) == CLOSED


def test_verify_codes_and_alerts() -> None:
    assert classify_handshake_error(_verify_error(19, "self-signed certificate in chain")) == (
        UNKNOWN_CA
    )
    odd = _verify_error(26, "unsupported certificate purpose")
    assert classify_handshake_error(odd) == "unsupported certificate purpose"
    assert classify_handshake_error(_ssl_error("TLSV1_ALERT_UNKNOWN_CA")) == UNKNOWN_CA + BY_PEER
    alert = _ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE")
    assert classify_handshake_error(alert) == "handshake failure" + BY_PEER
    assert classify_handshake_error(_ssl_error("NO_SHARED_CIPHER")) == "no shared cipher"


def test_anything_else_is_its_message() -> None:
    assert classify_handshake_error(ConnectionResetError(104, "reset")) == "[Errno 104] reset"
    assert classify_handshake_error(trio.BrokenResourceError()) == "BrokenResourceError"
