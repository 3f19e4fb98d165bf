"""A small cluster CA for development and small installs (``felix certs``).

``init_ca`` makes ``ca.crt`` / ``ca.key`` in a directory; ``issue`` signs a node, broker
or admin certificate whose SAN carries its identity URI (`felix.security.identity`).
Production can bring its own CA instead: the transports only read PEM files.

Choices, and why:

* EC P-256 keys, SHA-256 signatures: small, fast handshakes, accepted everywhere.
* Node certificates carry EKU serverAuth + clientAuth (a node dials and accepts peer
  links with one certificate); broker and admin certificates clientAuth only, so they
  cannot pose as a node's server.
* Node certificates also name ``localhost``, ``127.0.0.1`` and ``::1`` unless
  ``loopback=False``: peer and broker links check the URI, not the host name, but tools
  that do check host names (curl on the ops port, a ``wss://`` client with default
  settings) then work on the node's own machine.  Client certificates get no DNS or IP
  names unless given.
* Validity starts `BACKDATE` before now, so a peer whose clock is a little behind does
  not see a fresh certificate as not yet valid; a certificate may not outlive its CA.
* Every file is written to a temporary file, fsynced, then linked or renamed into place
  and the directory fsynced: a crash leaves the old file or the new one, never half a
  key.  Keys are mode 0600 from the moment they exist.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from felix.security.identity import Identity, IdentityError, Kind, check_name

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
CA_DAYS: Final = 3650
LEAF_DAYS: Final = 365
BACKDATE: Final = dt.timedelta(minutes=5)
LOOPBACK_DNS: Final = ("localhost",)
LOOPBACK_IPS: Final = ("127.0.0.1", "::1")
_CA_PATH: Final = "ca"  # the CA names its cluster as felix://<cluster_id>/ca

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertError(Exception):
    """A certificate operation that cannot be done; the message says why and where."""


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    cert: Path
    key: Path


# --- files -------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes, mode: int) -> Path:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Path(name)


def _install(files: Sequence[tuple[Path, bytes, int]], *, overwrite: bool) -> None:
    """Write every (path, data, mode) atomically; without ``overwrite`` refuse existing ones."""
    if not overwrite:
        existing = [str(path) for path, _, _ in files if path.exists()]
        if existing:
            raise CertError(f"refusing to overwrite {', '.join(existing)}")
    temps: list[Path] = []
    try:
        for path, data, mode in files:
            temps.append(_write_temp(path.parent, data, mode))
        for temp, (path, _, _) in zip(temps, files, strict=True):
            if overwrite:
                os.replace(temp, path)
            else:
                os.link(temp, path)  # fails, instead of replacing, if the file appeared
                os.unlink(temp)
    except FileExistsError as exc:
        raise CertError(f"refusing to overwrite {exc.filename}") from exc
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    _fsync_dir(files[0][0].parent)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _directory(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise CertError(f"no such directory: {path}")
    return path


# --- the CA ------------------------------------------------------------------------------


def _validity(not_before: dt.datetime | None, days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise CertError(f"days must be >= 1, got {days}")
    if not_before is None:
        start = dt.datetime.now(dt.UTC) - BACKDATE
    elif not_before.tzinfo is None:
        raise CertError("not_before must be timezone-aware")
    else:
        start = not_before
    return start, start + dt.timedelta(days=days)


def init_ca(
    directory: str | os.PathLike[str],
    cluster_id: str,
    days: int = CA_DAYS,
    *,
    not_before: dt.datetime | None = None,
) -> IssuedFiles:
    """Create the cluster CA as ``ca.crt`` and ``ca.key`` (0600) in ``directory``.

    Refuses if either file exists: replacing a CA silently would cut every node off.
    """
    try:
        check_name(cluster_id, "cluster id")
    except IdentityError as exc:
        raise CertError(str(exc)) from exc
    path = _directory(directory)
    start, end = _validity(not_before, days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "felix"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"felix CA {cluster_id}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"felix://{cluster_id}/{_CA_PATH}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    files = IssuedFiles(path / CA_CERT, path / CA_KEY)
    _install(
        [(files.key, _key_pem(key), 0o600), (files.cert, _cert_pem(cert), 0o644)], overwrite=False
    )
    return files


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def ca_cluster_id(cert: x509.Certificate) -> str | None:
    """The cluster a Felix CA certificate was made for, or None if it is not one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        cluster_id = uri.removeprefix("felix://").removesuffix(f"/{_CA_PATH}")
        if uri == f"felix://{cluster_id}/{_CA_PATH}" and _is_name(cluster_id):
            return cluster_id
    return None


def _is_name(text: str) -> bool:
    try:
        check_name(text, "cluster id")
    except IdentityError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cluster_id: str


def _load_ca(path: Path) -> _Ca:
    cert_path, key_path = path / CA_CERT, path / CA_KEY
    for needed in (cert_path, key_path):
        if not needed.is_file():
            raise CertError(f"no CA in {path}: {needed.name} not found (run 'felix certs init')")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertError(f"cannot read the CA in {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: expected an EC private key")
    if key.public_key() != cert.public_key():
        raise CertError(f"{key_path} is not the key of {cert_path}")
    cluster_id = ca_cluster_id(cert)
    if cluster_id is None:
        raise CertError(f"{cert_path} is not a felix CA (no felix://<cluster>/ca name)")
    return _Ca(cert, key, cluster_id)


# --- leaf certificates -------------------------------------------------------------------


def _alt_names(
    identity: Identity, dns: Iterable[str], ips: Iterable[str], loopback: bool
) -> list[x509.GeneralName]:
    dns_names = list(dict.fromkeys(dns))
    ip_names = list(dict.fromkeys(ips))
    if identity.kind == "node" and loopback:
        dns_names += [n for n in LOOPBACK_DNS if n not in dns_names]
        ip_names += [i for i in LOOPBACK_IPS if i not in ip_names]
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri())]
    for name in dns_names:
        if not name or len(name) > 253 or not name.isascii() or any(c in name for c in " /:@"):
            raise CertError(f"not a DNS name: {name!r}")
        names.append(x509.DNSName(name))
    for text in ip_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError as exc:
            raise CertError(f"not an IP address: {text!r}") from exc
    return names


def _sign_leaf(
    ca: _Ca,
    identity: Identity,
    key: ec.EllipticCurvePrivateKey,
    validity: tuple[dt.datetime, dt.datetime],
    names: list[x509.GeneralName],
) -> x509.Certificate:
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.kind == "node":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{identity.kind} {identity.ident}")]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def issue(
    directory: str | os.PathLike[str],
    kind: Kind,
    ident: int | str,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    *,
    loopback: bool = True,
    overwrite: bool = False,
) -> IssuedFiles:
    """Sign ``<kind>-<ident>.crt`` / ``.key`` with the CA in ``directory``.

    ``overwrite=True`` renews in place (key first, then certificate: a reader between
    the two sees a mismatched pair and keeps what it had).  ``not_before`` and ``days``
    let tests make expired and not-yet-valid certificates.
    """
    path = _directory(directory)
    ca = _load_ca(path)
    try:
        identity = Identity(ca.cluster_id, kind, ident)
    except IdentityError as exc:
        raise CertError(str(exc)) from exc
    start, end = _validity(not_before, days)
    if end > ca.cert.not_valid_after_utc:
        expires = f"{ca.cert.not_valid_after_utc:%Y-%m-%d}"
        raise CertError(f"the certificate would outlive the CA (it expires {expires})")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign_leaf(ca, identity, key, (start, end), _alt_names(identity, dns, ips, loopback))
    stem = f"{kind}-{ident}"
    files = IssuedFiles(path / f"{stem}.crt", path / f"{stem}.key")
    _install(
        [(files.key, _key_pem(key), 0o600), (files.cert, _cert_pem(cert), 0o644)],
        overwrite=overwrite,
    )
    return files


# --- reading -----------------------------------------------------------------------------


def load_cert(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first certificate in a PEM file; CertError if there is none."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertError(f"{path}: not a PEM certificate ({exc})") from exc


def describe(cert: x509.Certificate) -> dict[str, str]:
    """What ``felix certs show`` prints: identity, SANs, validity, issuer, serial."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        alt = [f"URI:{u}" for u in uris]
        alt += [f"DNS:{d}" for d in san.get_values_for_type(x509.DNSName)]
        alt += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        uris, alt = [], []
    cluster_id = ca_cluster_id(cert)
    if cluster_id is not None:
        identity = f"CA of cluster {cluster_id}"
    else:
        felix = [u for u in uris if u.lower().startswith("felix:")]
        try:
            identity = Identity.parse(felix[0]).uri() if len(felix) == 1 else "-"
        except IdentityError as exc:
            identity = f"invalid ({exc})"
        if len(felix) > 1:
            identity = f"invalid ({len(felix)} felix:// URIs)"
    return {
        "identity": identity,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "alt_names": ", ".join(alt) or "-",
    }
