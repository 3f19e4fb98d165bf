"""DESIGN.md §1: the pure layers never touch I/O, clocks, threads or global randomness.

An AST walk of every module in the pure packages: importing a forbidden module (or any
submodule of it) fails the test, except under ``if TYPE_CHECKING:`` where imports are for
annotations only (e.g. ``random.Random`` as the type of an injected generator).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_PACKAGES = ("felix/proto", "felix/raft", "felix/metadata")
PURE_FILES = ("felix/broker/cache.py", "felix/storage/segment_format.py")
FORBIDDEN = {
    "trio",
    "trio_websocket",
    "socket",
    "time",
    "os",
    "random",
    "threading",
    "asyncio",
    "subprocess",
    "selectors",
    "datetime",
}
# CLI modules sit at the edge (they read files, print), even inside a pure package.
EDGE_MODULES = {"cli.py"}


def pure_modules() -> list[Path]:
    paths: list[Path] = []
    for package in PURE_PACKAGES:
        directory = ROOT / package
        if directory.is_dir():
            paths += [p for p in sorted(directory.rglob("*.py")) if p.name not in EDGE_MODULES]
    paths += [ROOT / f for f in PURE_FILES if (ROOT / f).exists()]
    return paths


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def forbidden_imports(source: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
        for name in names:
            if str(name).split(".")[0] in FORBIDDEN:
                found.append((getattr(node, "lineno", 0), str(name)))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_no_io(path: Path) -> None:
    bad = forbidden_imports(path.read_text())
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} (DESIGN.md §1: pure layer)"


def test_the_checker_catches_forbidden_imports() -> None:
    assert forbidden_imports("import os") == [(1, "os")]
    assert forbidden_imports("from trio import sleep") == [(1, "trio")]
    assert forbidden_imports("import os.path as p") == [(1, "os.path")]
    assert forbidden_imports("def f():\n    import time\n") == [(2, "time")]
    assert forbidden_imports("__import__('socket')") == [(1, "socket")]
    assert forbidden_imports("if TYPE_CHECKING:\n    import random\n") == []
    assert forbidden_imports("import zlib\nfrom felix.proto import cbor") == []


def test_proto_is_checked() -> None:
    assert any(p.parent.name == "proto" for p in pure_modules())
