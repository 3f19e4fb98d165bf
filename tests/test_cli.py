"""The ``felix`` command line: help lists the commands; bad input gets a clean error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from felix.cli import build_parser, main
from felix.metadata.tokens import parse_token
from felix.proto.frames import encode_frame
from felix.proto.raft_messages import PEER, TimeoutNow


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    commands = list(getattr(subparsers, "choices", {}))
    assert "proto" in commands
    for command in commands:
        assert command in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: felix" in capsys.readouterr().out


def test_console_script_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "felix.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "Felix control plane" in result.stdout


def test_proto_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "frames.bin"
    path.write_bytes(
        encode_frame(PEER.encode(TimeoutNow(3, 1))) + encode_frame(PEER.encode(TimeoutNow(4, 2)))
    )
    assert main(["proto", "decode", str(path), "-o", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"frame": 0, "type": "TimeoutNow", "term": 3, "leader": 1},
        {"frame": 1, "type": "TimeoutNow", "term": 4, "leader": 2},
    ]


def test_proto_decode_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(encode_frame(PEER.encode(TimeoutNow(3, 1))) + encode_frame(b"\xff"))
    assert main(["proto", "decode", str(path)]) == 1
    captured = capsys.readouterr()
    assert "TimeoutNow" in captured.out
    assert captured.err.startswith("felix: frame #1: invalid CBOR")
    assert main(["proto", "decode", str(tmp_path / "missing")]) == 1
    assert "cannot read" in capsys.readouterr().err
    path.write_bytes(b"\x00\x00\x00\x09abc")
    assert main(["proto", "decode", str(path)]) == 1
    assert "stream ended inside a frame" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["member", "--endpoints", "a:1,b:2", "--token", "t", "remove", "5"],
        ["member", "remove", "5", "--endpoints", "a:1,b:2", "--token", "t"],
    ],
)
def test_member_takes_endpoints_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.endpoints, args.token, args.id) == ("a:1,b:2", "t", 5)


def test_member_subcommand_without_endpoints_keeps_the_default() -> None:
    args = build_parser().parse_args(["member", "promote", "4"])
    assert args.endpoints == build_parser().parse_args(["status"]).endpoints
    assert args.token is None


def test_bootstrap_token_writes_a_token_file_once(tmp_path: Path) -> None:
    out = tmp_path / "bootstrap-token"
    assert main(["bootstrap-token", "--out", str(out)]) == 0
    token = out.read_text().strip()
    assert parse_token(token).id and out.stat().st_mode & 0o777 == 0o600
    assert main(["bootstrap-token", "--out", str(out)]) == 1  # never overwritten silently
    assert out.read_text().strip() == token
    assert main(["bootstrap-token", "--out", str(out), "--force"]) == 0
    assert out.read_text().strip() != token
    assert main(["bootstrap-token", "--out", str(tmp_path / "no" / "dir")]) == 1
