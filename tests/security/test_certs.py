"""The small CA: what goes into the certificates, and files that are never half written."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from felix.security import certs
from felix.security.certs import CertError, describe, init_ca, issue, load_cert


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path, "c1")
    return tmp_path


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_init_ca_writes_a_p256_ca_with_a_private_key_file(tmp_path: Path) -> None:
    files = init_ca(tmp_path, "prod", days=30)
    assert (files.cert, files.key) == (tmp_path / "ca.crt", tmp_path / "ca.key")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    cert = load_cert(files.cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert certs.ca_cluster_id(cert) == "prod"
    assert describe(cert)["identity"] == "CA of cluster prod"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]  # no temp files


def test_init_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(CertError, match=r"refusing to overwrite .*ca\.key, .*ca\.crt"):
        init_ca(ca_dir, "c1")
    (ca_dir / "ca.crt").unlink()
    with pytest.raises(CertError, match=r"refusing to overwrite .*ca\.key$"):
        init_ca(ca_dir, "c1")
    assert (ca_dir / "ca.key").read_bytes() == before
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.key"]


def test_init_ca_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="cluster id must be 1-64"):
        init_ca(tmp_path, "a/b")
    with pytest.raises(CertError, match="no such directory"):
        init_ca(tmp_path / "missing", "c1")
    with pytest.raises(CertError, match="days must be >= 1"):
        init_ca(tmp_path, "c1", days=0)


def test_node_certificate(ca_dir: Path) -> None:
    files = issue(ca_dir, "node", 3, dns=["node-3.felix.svc"], ips=["10.0.0.3"])
    assert files.cert.name == "node-3.crt" and files.key.name == "node-3.key"
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    cert = load_cert(files.cert)
    san = _san(cert)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["felix://c1/node/3"]
    assert san.get_values_for_type(x509.DNSName) == ["node-3.felix.svc", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("10.0.0.3", "127.0.0.1", "::1")
    ]
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.issuer == load_cert(ca_dir / "ca.crt").subject
    info = describe(cert)
    assert info["identity"] == "felix://c1/node/3"
    assert "DNS:node-3.felix.svc" in info["alt_names"] and "IP:::1" in info["alt_names"]


def test_node_certificate_without_loopback_names(ca_dir: Path) -> None:
    cert = load_cert(issue(ca_dir, "node", 4, loopback=False).cert)
    assert _san(cert).get_values_for_type(x509.DNSName) == []
    assert _san(cert).get_values_for_type(x509.IPAddress) == []


@pytest.mark.parametrize(("kind", "ident"), [("broker", 7), ("admin", "alice")])
def test_client_certificates_are_client_auth_only(ca_dir: Path, kind: str, ident: object) -> None:
    files = issue(ca_dir, kind, ident)  # type: ignore[arg-type]
    cert = load_cert(files.cert)
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _san(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        f"felix://c1/{kind}/{ident}"
    ]
    assert _san(cert).get_values_for_type(x509.DNSName) == []  # no loopback for clients


def test_validity_window(ca_dir: Path) -> None:
    start = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    cert = load_cert(issue(ca_dir, "node", 5, not_before=start, days=2).cert)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + dt.timedelta(days=2)
    now = dt.datetime.now(dt.UTC)
    default = load_cert(issue(ca_dir, "node", 6).cert)
    assert default.not_valid_before_utc < now  # backdated for clock skew
    assert default.not_valid_after_utc > now + dt.timedelta(days=364)


def test_issue_refusals(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CertError, match="would outlive the CA"):
        issue(ca_dir, "node", 1, days=4000)
    with pytest.raises(CertError, match="node id must be"):
        issue(ca_dir, "node", 0)
    with pytest.raises(CertError, match="admin name must be"):
        issue(ca_dir, "admin", "no spaces")
    with pytest.raises(CertError, match=r"not an IP address: '10\.0\.0'"):
        issue(ca_dir, "node", 1, ips=["10.0.0"])
    with pytest.raises(CertError, match="not a DNS name"):
        issue(ca_dir, "node", 1, dns=["http://x"])
    with pytest.raises(CertError, match="timezone-aware"):
        issue(ca_dir, "node", 1, not_before=dt.datetime(2030, 1, 1))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CertError, match=r"no CA in .*empty: ca\.crt not found .*felix certs init"):
        issue(empty, "node", 1)
    assert not [p for p in ca_dir.iterdir() if p.name.startswith(".tmp")]


def test_issue_refuses_to_overwrite_unless_renewing(ca_dir: Path) -> None:
    first = issue(ca_dir, "node", 1)
    serial = load_cert(first.cert).serial_number
    with pytest.raises(CertError, match=r"refusing to overwrite .*node-1\.key, .*node-1\.crt"):
        issue(ca_dir, "node", 1)
    assert load_cert(first.cert).serial_number == serial
    renewed = issue(ca_dir, "node", 1, overwrite=True)
    assert load_cert(renewed.cert).serial_number != serial
    assert stat.S_IMODE(renewed.key.stat().st_mode) == 0o600


def test_a_crash_while_writing_leaves_the_old_files(
    ca_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = issue(ca_dir, "node", 1)
    key, cert = first.key.read_bytes(), first.cert.read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk on fire"):
        issue(ca_dir, "node", 1, overwrite=True)
    assert (first.key.read_bytes(), first.cert.read_bytes()) == (key, cert)
    assert not [p for p in ca_dir.iterdir() if p.name.startswith(".tmp")]


def test_a_ca_key_that_does_not_match_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    init_ca(other, "c1")
    (ca_dir / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(CertError, match=r"ca\.key is not the key of .*ca\.crt"):
        issue(ca_dir, "node", 1)


def test_load_cert_errors(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="cannot read"):
        load_cert(tmp_path / "missing.crt")
    (tmp_path / "x.crt").write_text("hello")
    with pytest.raises(CertError, match="not a PEM certificate"):
        load_cert(tmp_path / "x.crt")
