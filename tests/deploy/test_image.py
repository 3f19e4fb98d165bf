"""The Dockerfile, read statically (no Docker needed): multi-stage, pinned bases, a
numeric non-root user, exec-form ENTRYPOINT that is `felix serve` with flags it knows,
nothing writable but the data volume."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from felix.cli import build_parser
from tests.deploy import invariants as inv
from tests.deploy.render import K8S, find, render

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        part = stripped.removesuffix("\\").strip()
        current = f"{current} {part}" if current else part
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    steps = []
    for item in logical:
        keyword, _, value = item.partition(" ")
        steps.append(Instruction(keyword, value.strip()))
    return steps


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return instructions((ROOT / "Dockerfile").read_text())


def _args(steps: list[Instruction]) -> dict[str, str]:
    found = {}
    for step in steps:
        if step.keyword.upper() == "ARG" and "=" in step.value:
            name, _, default = step.value.partition("=")
            found[name] = default
    return found


def _images(steps: list[Instruction]) -> list[str]:
    args = _args(steps)
    images = []
    for step in steps:
        if step.keyword.upper() == "FROM":
            image = step.value.split()[0]
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), image))
    return images


def _last(steps: list[Instruction], keyword: str) -> str:
    values = [s.value for s in steps if s.keyword.upper() == keyword]
    assert values, f"no {keyword}"
    return values[-1]


def test_parser_reads_instructions() -> None:
    steps = instructions("FROM a:1 AS b\n# c\nRUN x \\\n  && y\nUSER 1\n")
    assert [(s.keyword, s.value) for s in steps] == [
        ("FROM", "a:1 AS b"),
        ("RUN", "x && y"),
        ("USER", "1"),
    ]


def test_multi_stage_with_pinned_bases(dockerfile: list[Instruction]) -> None:
    images = _images(dockerfile)
    assert len(images) >= 2, "a builder stage and a runtime stage"
    for image in images:
        name, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
        assert tag and tag != "latest", f"{image}: pin a tag"
        assert name.endswith("python") and re.match(r"3\.(1[1-9])", tag), image
    assert any("COPY --from=" in f"{s.keyword} {s.value}" for s in dockerfile)


def test_runs_as_numeric_non_root_user(dockerfile: list[Instruction]) -> None:
    user = _last(dockerfile, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == inv.UID and (not gid or int(gid) == inv.UID), user


def test_entrypoint_is_felix_serve_in_exec_form(dockerfile: list[Instruction]) -> None:
    entrypoint = json.loads(_last(dockerfile, "ENTRYPOINT"))  # exec form: a JSON list
    command = json.loads(_last(dockerfile, "CMD"))
    assert entrypoint == ["felix", "serve"]
    args = build_parser().parse_args([*entrypoint[1:], *command])
    assert args.config == Path("/etc/felix/felix.toml")


def test_bytecode_off_and_data_is_the_only_volume(dockerfile: list[Instruction]) -> None:
    env = " ".join(s.value for s in dockerfile if s.keyword.upper() == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    volumes = json.loads(_last(dockerfile, "VOLUME"))
    docs = render(K8S / "overlays" / "prod-3")
    container = inv.pod_spec(find(docs, "StatefulSet", "felix"))["containers"][0]
    data = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data"]
    assert volumes == data == ["/var/lib/felix"]


def test_dockerignore_keeps_local_state_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "felix-data", "tests", "bench", ".pytest_cache"} <= ignored
    assert not {"felix", "pyproject.toml", "README.md"} & ignored  # the build needs them
