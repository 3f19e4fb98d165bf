"""The layering rules of docs/architecture.md §2, checked by an AST walk of imports.

Three checks, each over the modules' source (nothing is imported):

* **Pure modules touch no I/O**: the pure packages (and the pure files listed below, and
  every felix module they import) never import trio, socket, time, os, random, threads,
  ... — except under ``if TYPE_CHECKING:``, where imports are for annotations only (e.g.
  ``random.Random`` as the type of an injected generator).
* **Pure modules leave the GC alone**: no ``gc``, no `felix.gc_pause` (the GC belongs
  to the application; the shells pause it around bulk builds).
* **Package direction**: a module imports only the felix packages its row of `ALLOWED`
  names (besides its own package).  Every import counts here, also inside functions and
  under ``if TYPE_CHECKING:`` (a type-only import still couples the layers), and
  relative imports are resolved.  `felix.testing` is in nobody's row: no production
  module imports it (tests and benches import anything).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FELIX = ROOT / "felix"

# --- the rules ---------------------------------------------------------------------------

ANYTHING = frozenset({"*"})


def _units(*names: str) -> frozenset[str]:
    return frozenset("felix." + name if name != "felix" else name for name in names)


# Which felix units a module of each unit may import, besides its own unit and the
# stdlib / third-party packages.  A unit is a package under felix/ (``felix.raft``) or a
# top-level module (``felix.config``); ``felix`` is felix/__init__.py.
ALLOWED: dict[str, frozenset[str]] = {
    "felix.proto": _units(),
    "felix.raft": _units("proto"),
    "felix.metadata": _units("proto"),  # not raft: entries are bytes with an index to it
    "felix.storage": _units("proto", "raft", "metadata"),
    "felix.transport": _units("proto", "security"),  # not storage
    "felix.server": _units(
        "proto", "raft", "metadata", "storage", "transport", "security", "config", "logs"
    ),
    "felix.broker": _units("proto", "metadata", "security"),  # wire + model + TLS
    "felix.config": _units(),  # a leaf: config dataclasses, read by the server and the CLI
    "felix.logs": _units(),
    "felix.security": _units(),  # stdlib, cryptography (certs only) and trio (handshake)
    "felix.gc_pause": _units(),
    "felix.ctl": _units("proto", "raft", "metadata", "storage", "broker", "config", "security"),
    "felix.cli": _units("felix"),  # felix.__version__; commands by name (COMMAND_MODULES)
    "felix": _units(),
    "felix.testing": ANYTHING,
}
# Leaves any module may import as far as direction goes; whether a module may touch the
# GC at all is the purity check's business (`GC_MODULES`).
IMPORTABLE_ANYWHERE = _units("gc_pause")

PURE_PACKAGES = ("felix/proto", "felix/raft", "felix/metadata")
PURE_FILES = (
    "felix/broker/cache.py",
    "felix/storage/segment_format.py",
    "felix/server/coalesce.py",
)
# CLI modules sit at the edge (they read files, print), even inside a pure package.
EDGE_MODULES = {"cli.py"}
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
GC_MODULES = {"gc", "felix.gc_pause"}
# Pure modules that still pause the GC themselves, and why: their gc check is an expected
# failure (strict: it fails loudly once the GC use is gone, so the entry gets removed).
# (Empty since the codec stopped pausing the GC itself: felix/proto/cbor.py did, and
# felix/broker/cache.py before it.)  Format: {"felix/proto/cbor.py": "why, and the plan"}.
KNOWN_GC_USERS: dict[str, str] = {}

# --- module names and imports ------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """``felix.raft.core`` -> ``felix.raft``; ``felix.config`` -> itself; ``felix``."""
    parts = module.split(".")
    if len(parts) < 2:
        return module
    if (FELIX / parts[1]).is_dir() or (FELIX / f"{parts[1]}.py").is_file():
        return f"felix.{parts[1]}"
    return "felix"  # ``from felix import __version__``


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imported_names(
    source: str,
    importer: str = "",
    *,
    is_package: bool = False,
    skip_type_checking: bool = True,
) -> list[tuple[int, list[str]]]:
    """Per import statement (or ``__import__`` / ``importlib.import_module`` call with a
    constant name): its line and the module names it may bind, most general first
    (``from a.b import c`` -> ``["a.b", "a.b.c"]``: ``c`` may be a submodule)."""
    found: list[tuple[int, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if skip_type_checking and _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and not importer:
                return  # a relative import in a fragment with no known location
            base = _resolve(node.module, node.level, importer, is_package)
            found.append((node.lineno, [base, *(f"{base}.{a.name}" for a in node.names)]))
        elif isinstance(node, ast.Call):
            func = node.func
            name = getattr(func, "id", None) or getattr(func, "attr", None)
            if name in ("__import__", "import_module"):
                args = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
                found.extend((node.lineno, [a]) for a in args if isinstance(a, str))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def _matches(name: str, modules: Iterable[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def forbidden_imports(source: str, forbidden: Iterable[str] = FORBIDDEN) -> list[tuple[int, str]]:
    """The imports of ``forbidden`` modules (or their submodules), outside
    ``if TYPE_CHECKING:``, as (line, the module named)."""
    forbidden = set(forbidden)
    found: list[tuple[int, str]] = []
    for lineno, names in imported_names(source):
        hit = next((name for name in names if _matches(name, forbidden)), None)
        if hit is not None:
            found.append((lineno, hit))
    return found


def direction_violations(
    source: str, importer: str, *, is_package: bool = False
) -> list[tuple[int, str]]:
    """The felix imports of module ``importer`` that its unit's row of `ALLOWED` does
    not allow, as (line, the module imported)."""
    unit = unit_of(importer)
    allowed = ALLOWED.get(unit, frozenset())
    if allowed == ANYTHING:
        return []
    bad: list[tuple[int, str]] = []
    for lineno, names in imported_names(
        source, importer, is_package=is_package, skip_type_checking=False
    ):
        base = names[0]
        if base != "felix" and not base.startswith("felix."):
            continue
        # ``from felix import x``: x is the unit; otherwise the module's unit decides.
        targets = names[1:] if base == "felix" else [base]
        for target in targets:
            target_unit = unit_of(target)
            if target_unit in (unit, *allowed) or target_unit in IMPORTABLE_ANYWHERE:
                continue
            bad.append((lineno, target))
    return bad


# --- the modules -------------------------------------------------------------------------


def felix_modules() -> list[Path]:
    return sorted(FELIX.rglob("*.py"))


def production_modules() -> list[Path]:
    return [p for p in felix_modules() if unit_of(module_name(p)) != "felix.testing"]


def _path_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def pure_modules() -> list[Path]:
    """The pure packages and files, plus every felix module they import (outside
    ``if TYPE_CHECKING:``), transitively: a pure module cannot lean on an impure one.
    `GC_MODULES` are left out: importing one is what the gc check reports."""
    todo: list[Path] = []
    for package in PURE_PACKAGES:
        directory = ROOT / package
        if directory.is_dir():
            todo += [p for p in sorted(directory.rglob("*.py")) if p.name not in EDGE_MODULES]
    todo += [ROOT / f for f in PURE_FILES if (ROOT / f).exists()]
    seen: dict[Path, None] = {}
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen[path] = None
        importer = module_name(path)
        for _, names in imported_names(
            path.read_text(), importer, is_package=path.name == "__init__.py"
        ):
            for name in names:
                if name.startswith("felix.") and not _matches(name, GC_MODULES):
                    found = _path_of(name)
                    if found is not None and found not in seen:
                        todo.append(found)
    return sorted(seen)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _gc_params() -> list[object]:
    params: list[object] = []
    for path in pure_modules():
        reason = KNOWN_GC_USERS.get(_rel(path))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(path, marks=marks, id=_rel(path)))
    return params


# --- the checks --------------------------------------------------------------------------


@pytest.mark.parametrize("path", pure_modules(), ids=_rel)
def test_pure_module_imports_no_io(path: Path) -> None:
    bad = forbidden_imports(path.read_text())
    assert not bad, f"{_rel(path)} imports {bad} (docs/architecture.md §2: pure layer)"


@pytest.mark.parametrize("path", _gc_params())
def test_pure_module_leaves_the_gc_alone(path: Path) -> None:
    bad = forbidden_imports(path.read_text(), GC_MODULES)
    assert not bad, (
        f"{_rel(path)} imports {bad}: the GC belongs to the application; pause it in the "
        "shells with felix.gc_pause.gc_paused (docs/architecture.md §2)"
    )


@pytest.mark.parametrize("path", felix_modules(), ids=_rel)
def test_package_direction(path: Path) -> None:
    importer = module_name(path)
    assert unit_of(importer) in ALLOWED, f"{importer}: add its unit to ALLOWED in this file"
    bad = direction_violations(path.read_text(), importer, is_package=path.name == "__init__.py")
    allowed = sorted(ALLOWED[unit_of(importer)])
    assert not bad, (
        f"{_rel(path)} imports {bad}; {unit_of(importer)} may import only {allowed} "
        "(docs/architecture.md §2)"
    )


def test_no_production_module_imports_testing() -> None:
    bad = [
        (_rel(path), lineno, names[0])
        for path in production_modules()
        for lineno, names in imported_names(
            path.read_text(), module_name(path), skip_type_checking=False
        )
        if any(_matches(name, ["felix.testing"]) for name in names)
    ]
    assert not bad, f"felix.testing is for tests and benches only: {bad}"


# --- the checker itself ------------------------------------------------------------------


def test_the_checker_catches_forbidden_imports() -> None:
    assert forbidden_imports("import os") == [(1, "os")]
    assert forbidden_imports("from trio import sleep") == [(1, "trio")]
    assert forbidden_imports("import os.path as p") == [(1, "os.path")]
    assert forbidden_imports("def f():\n    import time\n") == [(2, "time")]
    assert forbidden_imports("__import__('socket')") == [(1, "socket")]
    assert forbidden_imports("importlib.import_module('socket')") == [(1, "socket")]
    assert forbidden_imports("if TYPE_CHECKING:\n    import random\n") == []
    assert forbidden_imports("import zlib\nfrom felix.proto import cbor") == []
    assert forbidden_imports("import timeit") == []  # a prefix of a name is not the module


def test_the_checker_catches_gc_use() -> None:
    assert forbidden_imports("import gc", GC_MODULES) == [(1, "gc")]
    assert forbidden_imports("from felix.gc_pause import gc_paused", GC_MODULES) == [
        (1, "felix.gc_pause")
    ]
    assert forbidden_imports("from felix import gc_pause", GC_MODULES) == [(1, "felix.gc_pause")]
    assert forbidden_imports("from felix.proto import cbor", GC_MODULES) == []


def test_the_checker_catches_wrong_directions() -> None:
    def check(source: str, importer: str, *, is_package: bool = False) -> list[tuple[int, str]]:
        return direction_violations(source, importer, is_package=is_package)

    # Downward and sideways within a unit: fine.
    assert check("from felix.proto.raft_messages import Entry", "felix.raft.core") == []
    assert check("from felix.raft.log import RaftLog", "felix.raft.core") == []
    assert check("import felix.proto.cbor", "felix.metadata.state") == []
    assert check("from felix.gc_pause import gc_paused", "felix.broker.session") == []
    assert check("from felix.storage import files", "felix.server.app") == []
    # Upward or sideways across units: caught, wherever the import hides.
    assert check("from felix.server.raft_node import RaftNode", "felix.raft.core") == [
        (1, "felix.server.raft_node")
    ]
    assert check("from felix.raft import core", "felix.metadata.state") == [(1, "felix.raft")]
    assert check("from felix.storage import files", "felix.transport.tcp") == [(1, "felix.storage")]
    assert check("def f():\n    import felix.server.app\n", "felix.broker.client") == [
        (2, "felix.server.app")
    ]
    assert check(
        "if TYPE_CHECKING:\n    from felix.raft.types import Role\n", "felix.broker.x"
    ) == [(2, "felix.raft.types")]
    assert check("from felix import server", "felix.proto.cbor") == [(1, "felix.server")]
    assert check("from ..server import app", "felix.raft.core") == [(1, "felix.server")]
    assert check("from . import log", "felix.raft", is_package=True) == []
    assert check("from .. import metadata", "felix.raft.core") == [(1, "felix.metadata")]
    # Nobody in production imports felix.testing; felix.testing imports anything.
    assert check("from felix.testing.sim import Simulation", "felix.server.app") == [
        (1, "felix.testing.sim")
    ]
    assert check("from felix.server.app import run_node", "felix.testing.cluster") == []
    # Third-party and stdlib imports are not this check's business.
    assert check("import trio\nimport cbor2", "felix.server.app") == []


def test_the_tables_cover_what_they_should() -> None:
    modules = {module_name(p) for p in pure_modules()}
    assert "felix.proto.cbor" in modules
    assert "felix.broker.cache" in modules
    assert "felix.proto.cli" not in modules  # an edge module
    assert not modules & GC_MODULES
    assert set(KNOWN_GC_USERS) <= {_rel(p) for p in pure_modules()}
    assert unit_of("felix.raft.core") == "felix.raft"
    assert unit_of("felix.config") == "felix.config"
    assert unit_of("felix") == "felix"
