"""``felix wal dump`` and ``felix snapshot inspect``: table, JSON, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from felix.cli import main
from felix.proto.raft_messages import EntryKind
from felix.raft.types import HardState
from felix.storage.segmented_wal import SyncWal
from tests.storage.model import CONF, entries, snap


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    wal = SyncWal(str(tmp_path), segment_bytes_max=300)
    wal.open(CONF)
    for start in range(1, 30, 5):
        wal.save(HardState(2, 1, start), entries(start, start + 4, 2))
    wal.snapshots.save(*snap(12, 2))
    wal.close()
    return tmp_path


def test_wal_dump_prints_one_line_per_entry(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["wal", "dump", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "SEGMENT",
        "OFFSET",
        "RECORD",
        "INDEX",
        "TERM",
        "KIND",
        "SIZE",
        "DETAIL",
    ]
    entry_lines = [line.split() for line in lines if " ENTRY " in line]
    assert [int(cells[3]) for cells in entry_lines] == list(range(1, 31))
    assert entry_lines[0][4:7] == ["2", "NORMAL", "5"]
    assert any("HARDSTATE" in line and "commit=26" in line for line in lines)
    assert any(" STATE " in line for line in lines)


def test_wal_dump_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wal", "dump", str(data_dir / "wal"), "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    entry_rows = [r for r in rows if r["record"] == "ENTRY"]
    assert entry_rows[-1] == {
        **entry_rows[-1],
        "index": 30,
        "term": 2,
        "kind": EntryKind.NORMAL.name,
    }


def test_wal_dump_of_a_corrupt_segment_fails_in_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segment = sorted((data_dir / "wal").iterdir())[0]
    blob = bytearray(segment.read_bytes())
    blob[60] ^= 0x10
    segment.write_bytes(bytes(blob))
    assert main(["wal", "dump", str(data_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("felix wal dump: ") and segment.name in err and "offset" in err


def test_wal_dump_of_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["wal", "dump", str(tmp_path / "nope")]) == 1
    assert "no such directory" in capsys.readouterr().err


def test_snapshot_inspect_table_and_json(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (path,) = (data_dir / "snap").iterdir()
    assert main(["snapshot", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "index:    12\n" in out and "voters=1,2,3 learners=-" in out and "(verified)" in out
    assert main(["snapshot", "inspect", str(path), "-o", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["index"], info["term"], info["conf"]["voters"]) == (12, 2, [1, 2, 3])


def test_snapshot_inspect_of_a_file_cut_short(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (path,) = (data_dir / "snap").iterdir()
    path.write_bytes(path.read_bytes()[:-5])
    assert main(["snapshot", "inspect", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("felix snapshot inspect: ") and "cut short" in err and "\n" not in err


def test_snapshot_inspect_of_a_missing_or_foreign_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["snapshot", "inspect", str(tmp_path / "nope.snap")]) == 1
    assert "no such file" in capsys.readouterr().err
    other = tmp_path / "other.snap"
    other.write_bytes(b"hello world, not a snapshot")
    assert main(["snapshot", "inspect", str(other)]) == 1
    assert "bad magic" in capsys.readouterr().err


def test_bare_commands_print_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wal"]) == 2
    assert "dump" in capsys.readouterr().out
