"""What schemas cannot check in the rendered manifests: each function returns the
problems it finds (empty: none), so a test can show that a broken object is caught.
The rules are docs/architecture.md §9 and the issue-14 Kubernetes checklist."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.deploy.crd_fields import CRD_FIELDS
from tests.deploy.render import Doc, find

LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")
WORKLOADS = ("StatefulSet", "Deployment")
CRD_GROUPS = ("cert-manager.io", "monitoring.coreos.com")
UID = 10001
GRACE_S_MIN = 30
HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
OBSERVERS = "felix-observer"  # the observers' StatefulSet (components/observers)
VOTER_SERVICES = (("felix-peers", "peer"), ("felix", "client"), ("felix-ops", "ops"))
OBSERVER_SERVICES = (
    ("felix-observer-peers", "peer"),
    ("felix-observer", "client"),
    ("felix-observer-ops", "ops"),
)
PROBE_PATHS = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}


def is_crd_kind(doc: Doc) -> bool:
    """Custom resources: kubernetes-validate has no schema for them."""
    return doc["apiVersion"].split("/")[0] in CRD_GROUPS


def crd_fields(docs: list[Doc]) -> list[str]:
    problems = []
    for doc in (d for d in docs if is_crd_kind(d)):
        for (kind, path), allowed in CRD_FIELDS.items():
            if doc["kind"] != kind:
                continue
            for where, value in _at(doc, path.split(".")):
                unknown = set(value) - allowed
                if unknown:
                    problems.append(f"{name_of(doc)} {where}: unknown {sorted(unknown)}")
    return problems


def _at(node: Any, steps: list[str], where: str = "") -> Iterator[tuple[str, Doc]]:
    """The mappings at a dotted path; ``name[]`` walks every item of a list."""
    if not steps:
        if isinstance(node, dict):
            yield where, node
        return
    step, rest = steps[0], steps[1:]
    if step.endswith("[]"):
        for i, item in enumerate(node.get(step[:-2], []) if isinstance(node, dict) else []):
            yield from _at(item, rest, f"{where}.{step[:-2]}[{i}]")
    elif isinstance(node, dict) and step in node:
        yield from _at(node[step], rest, f"{where}.{step}".lstrip("."))


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] in WORKLOADS)


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def name_of(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def resolve_port(container: Doc, port: int | str) -> int | None:
    """A probe's or Service's port: a number, or a container port's name."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            number: int = p["containerPort"]
            return number
    return None


def labels(docs: list[Doc]) -> list[str]:
    problems = []
    for doc in docs:
        shown = [("", doc["metadata"].get("labels", {}))]
        if doc["kind"] in WORKLOADS:
            shown.append((" pod template", doc["spec"]["template"]["metadata"].get("labels", {})))
        for where, present in shown:
            missing = [k for k in LABELS if k not in present]
            if missing:
                problems.append(f"{name_of(doc)}{where}: no label {', '.join(missing)}")
    return problems


def pod_security(docs: list[Doc]) -> list[str]:
    """Pod Security Standards "restricted", on every pod template."""
    problems = []
    for w in workloads(docs):
        spec, where = pod_spec(w), name_of(w)
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or pod.get("runAsUser") != UID:
            problems.append(f"{where}: pod must runAsNonRoot as uid {UID}")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod seccompProfile must be RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false")
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where} {c['name']}: root filesystem must be read-only")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where} {c['name']}: allowPrivilegeEscalation must be false")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where} {c['name']}: capabilities must drop ALL")
            if sc.get("runAsNonRoot") is False or sc.get("runAsUser", UID) == 0:
                problems.append(f"{where} {c['name']}: must not run as root")
            res = c.get("resources", {})
            request = res.get("requests", {}).get("memory")
            if request is None or request != res.get("limits", {}).get("memory"):
                problems.append(f"{where} {c['name']}: memory request must equal its limit")
            if "cpu" not in res.get("requests", {}):
                problems.append(f"{where} {c['name']}: no CPU request")
    return problems


def pinned_images(docs: list[Doc]) -> list[str]:
    """Every image names a tag, and not ``latest``."""
    problems = []
    for w in workloads(docs):
        for c in pod_spec(w)["containers"]:
            tag = c["image"].rpartition("/")[2].partition(":")[2]
            if not tag or tag == "latest":
                problems.append(f"{name_of(w)} {c['name']}: image {c['image']!r} is not pinned")
    return problems


def writable_mounts(docs: list[Doc]) -> list[str]:
    """With a read-only root, every mount is read-only except the data volume and
    emptyDir scratch: config, certificates and tokens cannot be changed from inside."""
    problems = []
    for w in workloads(docs):
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                volume = volumes.get(m["name"], {})
                scratch = m["name"] in claims or "emptyDir" in volume
                if not scratch and m.get("readOnly") is not True:
                    problems.append(f"{name_of(w)} {c['name']}: mount {m['name']} not read-only")
    return problems


def anti_affinity(statefulset: Doc, required: bool) -> list[str]:
    """Prod: required, one voter per machine; dev: preferred only.  Both spread zones."""
    spec = pod_spec(statefulset)
    anti = spec.get("affinity", {}).get("podAntiAffinity", {})
    hard = anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    soft = [
        t["podAffinityTerm"]
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    selector = statefulset["spec"]["selector"]["matchLabels"]
    problems = []
    wanted, other = (hard, soft) if required else (soft, hard)
    kind = "required" if required else "preferred"
    if not any(
        t["topologyKey"] == HOSTNAME and t["labelSelector"]["matchLabels"] == selector
        for t in wanted
    ):
        problems.append(f"{name_of(statefulset)}: no {kind} anti-affinity on {HOSTNAME}")
    if other:
        problems.append(f"{name_of(statefulset)}: anti-affinity must be {kind} only")
    spread = spec.get("topologySpreadConstraints", [])
    if not any(t["topologyKey"] == ZONE and t["maxSkew"] == 1 for t in spread):
        problems.append(f"{name_of(statefulset)}: no topology spread on {ZONE} (maxSkew 1)")
    return problems


def disruption_budgets(docs: list[Doc]) -> list[str]:
    """maxUnavailable 1 (never also minAvailable), and each budget covers a workload."""
    problems = []
    templates = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(docs)]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for pdb in budgets:
        spec = pdb["spec"]
        if spec.get("maxUnavailable") != 1 or "minAvailable" in spec:
            problems.append(f"{name_of(pdb)}: must set maxUnavailable: 1 and nothing else")
        selector = spec["selector"]["matchLabels"]
        if not any(selector.items() <= t.items() for t in templates):
            problems.append(f"{name_of(pdb)}: selects no workload")
    for w in workloads(docs):
        labels_ = w["spec"]["template"]["metadata"]["labels"]
        if not any(
            p["spec"]["selector"]["matchLabels"].items() <= labels_.items() for p in budgets
        ):
            problems.append(f"{name_of(w)}: no PodDisruptionBudget")
    return problems


def service_ports(
    docs: list[Doc],
    listen: dict[str, int],
    statefulset: str = "felix",
    services: tuple[tuple[str, str], ...] = VOTER_SERVICES,
) -> list[str]:
    """The Services and the container's ports equal felix.toml's listen ports."""
    problems = []
    container = pod_spec(find(docs, "StatefulSet", statefulset))["containers"][0]
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    if by_name != listen:
        problems.append(
            f"{statefulset}: container ports {by_name} differ from felix.toml's {listen}"
        )
    for service, port_name in services:
        ports = find(docs, "Service", service)["spec"]["ports"]
        if len(ports) != 1:
            problems.append(f"Service/{service}: expected one port, found {len(ports)}")
            continue
        (p,) = ports
        target = resolve_port(container, p.get("targetPort", p["port"]))
        if p["port"] != listen[port_name] or target != listen[port_name]:
            problems.append(
                f"Service/{service}: port {p['port']} -> {target}, felix.toml {port_name}"
                f" port is {listen[port_name]}"
            )
    return problems


def network_policy_ports(
    docs: list[Doc], listen: dict[str, int], policy_name: str = "felix"
) -> list[str]:
    """Peer port from the members only (voters, and observers when there are any),
    client port from brokers (and admin tools), ops from the monitoring namespace;
    nothing else open."""
    policy = find(docs, "NetworkPolicy", policy_name)["spec"]
    broker = _selector("broker")
    members = [{"podSelector": {"matchLabels": _selector("control-plane")}}]
    if any(w["metadata"]["name"] == OBSERVERS for w in workloads(docs)):
        members.append({"podSelector": {"matchLabels": _selector("observer")}})
    sources: dict[int, list[Any]] = {}
    for rule in policy["ingress"]:
        for p in rule["ports"]:
            sources.setdefault(p["port"], []).extend(rule["from"])
    problems = []
    where = f"NetworkPolicy/{policy_name}"
    if set(sources) != set(listen.values()):
        problems.append(f"{where} opens ports {sorted(sources)}, felix.toml {listen}")
    peer = sources.get(listen["peer"], [])
    if peer != members:
        problems.append(f"{where}: peer port must admit the members only: {peer}")
    if {"podSelector": {"matchLabels": broker}} not in sources.get(listen["client"], []):
        problems.append(f"{where}: client port must admit brokers")
    if not any("namespaceSelector" in s for s in sources.get(listen["ops"], [])):
        problems.append(f"{where}: ops port must admit the monitoring namespace")
    return problems


def _selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "felix", "app.kubernetes.io/component": component}


def grace_period(statefulset: Doc, hand_off_s: float, shutdown_s: float) -> list[str]:
    grace = pod_spec(statefulset).get("terminationGracePeriodSeconds", 30)
    if grace <= hand_off_s + shutdown_s or grace < GRACE_S_MIN:
        return [
            f"{name_of(statefulset)}: terminationGracePeriodSeconds {grace} must exceed the"
            f" hand-off ({hand_off_s} s) plus the shutdown budget ({shutdown_s} s), and be"
            f" >= {GRACE_S_MIN}"
        ]
    return []


def peer_service(docs: list[Doc], peer_template: str) -> list[str]:
    """Peers resolve each other through the headless Service before they are Ready."""
    problems = []
    statefulset = find(docs, "StatefulSet", "felix")
    service_name = statefulset["spec"]["serviceName"]
    spec = find(docs, "Service", service_name)["spec"]
    if spec.get("clusterIP") != "None" or spec.get("publishNotReadyAddresses") is not True:
        problems.append(f"Service/{service_name}: must be headless and publishNotReadyAddresses")
    host = peer_template.rpartition(":")[0]
    expected = f"{statefulset['metadata']['name']}-{{ordinal}}.{service_name}."
    if not host.startswith(expected):
        problems.append(f"cluster.peer_template {peer_template!r} must start with {expected!r}")
    if statefulset["spec"].get("podManagementPolicy") != "Parallel":
        problems.append("StatefulSet/felix: podManagementPolicy must be Parallel")
    return problems


def broker_ingress(docs: list[Doc]) -> list[str]:
    ports = find(docs, "Service", "felix-broker-ingress")["spec"]["ports"]
    if not ports or any(p.get("protocol") != "UDP" for p in ports):
        return [f"Service/felix-broker-ingress: QUIC ports must be UDP: {ports}"]
    return []


def listen_ports(config: Any) -> dict[str, int]:
    return {name: getattr(config.listen, name).port for name in ("peer", "client", "ops")}


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def observers(docs: list[Doc], listen: dict[str, int], ops_scheme: str) -> list[str]:
    """The observer StatefulSet runs the voters' image, args, config and security
    context with the observer role, serves felix.toml's ports through its own Services,
    is probed on /livez and /readyz, keeps a volume, and no object of the voters
    selects its pods (nor the reverse): they scale, budget and serve apart."""
    voters, obs = find(docs, "StatefulSet", "felix"), find(docs, "StatefulSet", OBSERVERS)
    vspec, ospec = pod_spec(voters), pod_spec(obs)
    vc, oc = vspec["containers"][0], ospec["containers"][0]
    where = name_of(obs)
    problems = service_ports(docs, listen, OBSERVERS, OBSERVER_SERVICES)
    if ospec.get("securityContext") != vspec.get("securityContext"):
        problems.append(f"{where}: pod securityContext differs from the voters'")
    if oc.get("securityContext") != vc.get("securityContext"):
        problems.append(f"{where}: container securityContext differs from the voters'")
    if (oc["image"], oc.get("args")) != (vc["image"], vc.get("args")):
        problems.append(f"{where}: must run the voters' image and args (felix serve --config)")
    config_maps = [
        {v.get("configMap", {}).get("name") for v in spec["volumes"]} - {None}
        for spec in (vspec, ospec)
    ]
    if config_maps[0] != config_maps[1]:
        problems.append(f"{where}: ConfigMaps {config_maps[1]}, the voters' {config_maps[0]}")
    for kind, path in PROBE_PATHS.items():
        get = oc.get(kind, {}).get("httpGet", {})
        port = resolve_port(oc, get.get("port", ""))
        if (get.get("path"), port, get.get("scheme")) != (path, listen["ops"], ops_scheme):
            problems.append(
                f"{where}: {kind} must GET {path} on the ops port {listen['ops']}"
                f" ({ops_scheme}), not {get.get('path')} on {port} ({get.get('scheme')})"
            )
    env = {e["name"]: e.get("value") for e in oc.get("env", [])}
    if env.get("FELIX_CLUSTER__ROLE") != "observer":
        problems.append(f"{where}: FELIX_CLUSTER__ROLE must be observer")
    claims = {t["metadata"]["name"] for t in obs["spec"].get("volumeClaimTemplates", [])}
    if "data" not in claims or "data" not in {m["name"] for m in oc["volumeMounts"]}:
        problems.append(f"{where}: needs its own data volume (volumeClaimTemplates)")
    service = find(docs, "Service", obs["spec"]["serviceName"])["spec"]
    if service.get("clusterIP") != "None" or service.get("publishNotReadyAddresses") is not True:
        problems.append(f"{where}: its serviceName must be headless, publishNotReadyAddresses")
    if obs["spec"].get("podManagementPolicy") != "Parallel":
        problems.append(f"{where}: podManagementPolicy must be Parallel")
    return problems + _selected_apart(docs, voters, obs)


def _selected_apart(docs: list[Doc], voters: Doc, obs: Doc) -> list[str]:
    """Each Service and budget selects the pods of one StatefulSet only."""
    pods = {name_of(w): w["spec"]["template"]["metadata"]["labels"] for w in (voters, obs)}
    problems = []
    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"].get("selector", {})
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        chosen = [w for w, labels_ in pods.items() if selector.items() <= labels_.items()]
        if len(chosen) > 1:
            problems.append(f"{name_of(doc)} selects the pods of {' and '.join(chosen)}")
    return problems
