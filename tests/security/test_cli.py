"""``felix certs``: init, issue and show through ``felix.cli.main``; exit codes 0/1/2."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from felix.cli import main
from felix.security.certs import describe, load_cert


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["certs", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_issue_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    code, out, _ = _run(capsys, "init", "--dir", d, "--cluster-id", "prod", "--days", "100")
    assert code == 0 and "ca.crt" in out
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    argv = ["issue", "--dir", d, "--node", "2", "--dns", "n2.svc", "--ip", "10.1.2.3"]
    code, out, _ = _run(capsys, *argv, "--days", "30")
    assert code == 0 and "node-2.crt" in out
    code, out, _ = _run(capsys, "show", str(tmp_path / "node-2.crt"))
    assert code == 0
    assert "identity:" in out and "felix://prod/node/2" in out
    assert "DNS:n2.svc" in out and "IP:10.1.2.3" in out and "IP:127.0.0.1" in out
    assert "issuer:" in out and "felix CA prod" in out
    assert "not_after:" in out
    code, out, _ = _run(capsys, "show", str(tmp_path / "ca.crt"))
    assert code == 0 and "CA of cluster prod" in out


def test_init_twice_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "init", "--dir", str(tmp_path), "--cluster-id", "c")[0] == 0
    key = (tmp_path / "ca.key").read_bytes()
    code, _, err = _run(capsys, "init", "--dir", str(tmp_path), "--cluster-id", "c")
    assert code == 1
    assert err.startswith("felix: refusing to overwrite") and "ca.key" in err
    assert (tmp_path / "ca.key").read_bytes() == key


def test_issue_without_a_ca_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "issue", "--dir", str(tmp_path), "--broker", "3")
    assert code == 1
    assert err.startswith("felix: no CA in ") and "felix certs init" in err
    code, _, err = _run(capsys, "issue", "--dir", str(tmp_path / "nope"), "--node", "1")
    assert code == 1 and "no such directory" in err


def test_issue_kinds_and_renewal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    _run(capsys, "init", "--dir", d, "--cluster-id", "c")
    assert _run(capsys, "issue", "--dir", d, "--broker", "9")[0] == 0
    assert _run(capsys, "issue", "--dir", d, "--admin", "ops")[0] == 0
    assert _run(capsys, "issue", "--dir", d, "--node", "1", "--no-loopback")[0] == 0
    assert describe(load_cert(tmp_path / "admin-ops.crt"))["identity"] == "felix://c/admin/ops"
    show = _run(capsys, "show", str(tmp_path / "node-1.crt"))[1]
    assert "localhost" not in show and "127.0.0.1" not in show
    code, _, err = _run(capsys, "issue", "--dir", d, "--broker", "9")
    assert code == 1 and "refusing to overwrite" in err
    serial = load_cert(tmp_path / "broker-9.crt").serial_number
    assert _run(capsys, "issue", "--dir", d, "--broker", "9", "--force")[0] == 0
    assert load_cert(tmp_path / "broker-9.crt").serial_number != serial


@pytest.mark.parametrize(
    "argv",
    [
        ["issue", "--dir", "D", "--node", "0"],
        ["issue", "--dir", "D", "--broker", "-4"],
        ["issue", "--dir", "D", "--admin", "bad name"],
        ["issue", "--dir", "D", "--node", "1", "--days", "0"],
        ["init", "--dir", "D", "--cluster-id", "a/b"],
        ["init", "--dir", "D", "--cluster-id", "c", "--days", "-1"],
    ],
)
def test_bad_values_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    argv = [str(tmp_path) if a == "D" else a for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and err.startswith("felix: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["issue", "--dir", "D"],  # who?
        ["issue", "--dir", "D", "--node", "1", "--broker", "2"],
        ["issue", "--dir", "D", "--node", "one"],
        ["init", "--dir", "D"],
    ],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["certs", *argv])
    assert info.value.code == 2


def test_show_errors_and_bare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "show", str(tmp_path / "missing.crt"))
    assert code == 1 and err.startswith("felix: cannot read")
    assert main(["certs"]) == 2
    assert "init" in capsys.readouterr().out
