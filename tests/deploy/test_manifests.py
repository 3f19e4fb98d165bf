"""deploy/k8s, offline: every overlay (and the base with every component, and prod-3 with
the observers component) renders with `kubectl kustomize`, validates strictly against
three Kubernetes versions' schemas, and keeps the invariants a schema cannot see
(tests/deploy/invariants.py).  The observers' felix.toml is loaded with `load_config`
for every observer pod, as `felix serve` would."""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import json
import re
import ssl
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import trio
from kubernetes_validate import utils as kv_utils

from felix.cli import COMMAND_MODULES, build_parser
from felix.server import admin, app
from felix.server.admin import build_ops_server
from felix.server.auth import Authenticator
from tests.deploy import invariants as inv
from tests.deploy.render import (
    K8S,
    OVERLAYS,
    Doc,
    felix_toml,
    find,
    node_config,
    port_of,
    render,
    with_components,
    with_observers,
)

TREES = (*OVERLAYS, "base+components", "prod-3+observers")
REPLICAS = {"dev": 3, "prod-3": 3, "prod-5": 5, "base+components": 3, "prod-3+observers": 3}
PROD = ("prod-3", "prod-5", "base+components", "prod-3+observers")
OBSERVER_TREES = ("base+components", "prod-3+observers")
CRD_KINDS = {"Certificate", "Issuer", "ServiceMonitor"}


def newest_versions(count: int = 3) -> list[str]:
    """The newest ``count`` minor versions the installed kubernetes-validate knows."""
    versions = sorted(set(kv_utils.all_versions()), key=lambda v: tuple(map(int, v.split("."))))
    return versions[-count:]


VERSIONS = newest_versions()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    trees = {name: render(K8S / "overlays" / name) for name in OVERLAYS}
    workdir = tmp_path_factory.mktemp("with-components")
    trees["base+components"] = render(with_components(workdir))
    trees["prod-3+observers"] = render(with_observers(tmp_path_factory.mktemp("observers")))
    return trees


@pytest.fixture(scope="module")
def configs(
    rendered: dict[str, list[Doc]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return {
        name: node_config(docs, tmp_path_factory.mktemp(f"config-{name}"))
        for name, docs in rendered.items()
    }


def felix_sts(docs: list[Doc]) -> Doc:
    return find(docs, "StatefulSet", "felix")


def felix_container(docs: list[Doc]) -> Doc:
    container: Doc = inv.pod_spec(felix_sts(docs))["containers"][0]
    return container


def hand_off_timeout_s() -> float:
    """The timeout ``admin.hand_off_leadership`` gives its leadership transfer, read
    from its source (it is a literal argument there)."""
    tree = ast.parse(inspect.getsource(admin.hand_off_leadership))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "timeout_s":
            value = ast.literal_eval(node.value)
            assert isinstance(value, (int, float))
            return float(value)
    raise AssertionError("hand_off_leadership passes no timeout_s")


# --- schemas ----------------------------------------------------------------------------


def test_three_schema_versions_are_used() -> None:
    assert len(VERSIONS) == 3, VERSIONS
    assert VERSIONS[-1] == kv_utils.latest_version()


@pytest.mark.parametrize("tree", TREES)
def test_every_document_validates_strictly(rendered: dict[str, list[Doc]], tree: str) -> None:
    errors = []
    for doc in rendered[tree]:
        if inv.is_crd_kind(doc):
            assert doc["kind"] in CRD_KINDS, inv.name_of(doc)
            continue  # no schema bundled; tests below check their fields
        for version in VERSIONS:
            problem = strict_problem(json.dumps(doc, sort_keys=True), version)
            if problem is not None:
                errors.append(f"{inv.name_of(doc)} @ {version}: {problem}")
    assert errors == []


@functools.cache
def strict_problem(doc_json: str, version: str) -> str | None:
    """Strict validation of one document (cached: the trees share most objects, and
    kubernetes-validate reads its schema files at every call)."""
    try:
        kubernetes_validate.validate(json.loads(doc_json), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc.message)
    return None


@pytest.mark.parametrize(
    ("kind", "name", "path", "field", "typo"),
    [
        ("Service", "felix-peers", ["spec"], "publishNotReadyAddresses", "publishNotReadyAddress"),
        (
            "StatefulSet",
            "felix",
            ["spec", "template", "spec", "containers", 0],
            "readinessProbe",
            "readinesProbe",
        ),
    ],
)
def test_a_misspelled_field_fails_strict_validation(
    rendered: dict[str, list[Doc]], kind: str, name: str, path: list[Any], field: str, typo: str
) -> None:
    doc = copy.deepcopy(find(rendered["prod-3"], kind, name))
    parent = doc
    for step in path:
        parent = parent[step]
    parent[typo] = parent.pop(field)
    for version in VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_components_add_their_custom_resources(rendered: dict[str, list[Doc]]) -> None:
    kinds = {d["kind"] for d in rendered["base+components"] if inv.is_crd_kind(d)}
    assert kinds == CRD_KINDS
    assert inv.crd_fields(rendered["base+components"]) == []
    for tree in OVERLAYS:  # optional: no overlay needs cert-manager or the operator
        assert not any(inv.is_crd_kind(d) for d in rendered[tree])


def test_a_misspelled_custom_resource_field_is_refused(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["base+components"])
    monitor = find(docs, "ServiceMonitor", "felix")
    endpoint = monitor["spec"]["endpoints"][0]
    endpoint["scrapeTimout"] = endpoint.pop("scrapeTimeout")
    assert inv.crd_fields(docs) == [
        "ServiceMonitor/felix spec.endpoints[0]: unknown ['scrapeTimout']"
    ]


# --- quorum -----------------------------------------------------------------------------


@pytest.mark.parametrize("tree", TREES)
def test_voter_count_is_odd(rendered: dict[str, list[Doc]], tree: str) -> None:
    docs = rendered[tree]
    replicas = felix_sts(docs)["spec"]["replicas"]
    assert replicas == REPLICAS[tree]
    assert replicas % 2 == 1
    cluster = felix_toml(docs)["cluster"]
    members = cluster["initial_members"]  # "1,2,3" or a TOML list [1, 2, 3]
    initial = [int(m) for m in (members.split(",") if isinstance(members, str) else members)]
    assert initial == list(range(1, len(initial) + 1))  # ordinals 0..n-1 -> ids 1..n
    assert len(initial) % 2 == 1 and len(initial) <= replicas
    # Every pod can become a voter: one beyond voters_max stays a learner, never Ready.
    assert replicas <= felix_toml(docs)["raft"]["voters_max"]
    assert cluster["pod_identity"] is True


@pytest.mark.parametrize("tree", TREES)
def test_disruption_budgets(rendered: dict[str, list[Doc]], tree: str) -> None:
    assert inv.disruption_budgets(rendered[tree]) == []


def test_a_budget_of_two_is_refused(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["prod-5"])
    find(docs, "PodDisruptionBudget", "felix")["spec"]["maxUnavailable"] = 2
    assert inv.disruption_budgets(docs) != []


@pytest.mark.parametrize("tree", TREES)
def test_anti_affinity(rendered: dict[str, list[Doc]], tree: str) -> None:
    docs = rendered[tree]
    assert inv.anti_affinity(felix_sts(docs), required=tree in PROD) == []
    if tree in PROD:
        assert inv.anti_affinity(find(docs, "StatefulSet", "felix-broker"), required=True) == []


def test_preferred_anti_affinity_in_prod_is_refused(rendered: dict[str, list[Doc]]) -> None:
    assert inv.anti_affinity(felix_sts(rendered["dev"]), required=True) != []


# --- the node's own settings ------------------------------------------------------------


@pytest.mark.parametrize("tree", TREES)
def test_ports_equal_felix_toml(
    rendered: dict[str, list[Doc]], configs: dict[str, Any], tree: str
) -> None:
    docs, config = rendered[tree], configs[tree]
    listen = inv.listen_ports(config)
    assert listen == {
        name: port_of(felix_toml(docs)["listen"][name]) for name in ("peer", "client", "ops")
    }
    assert all(getattr(config.listen, n).host == "0.0.0.0" for n in listen)
    assert inv.service_ports(docs, listen) == []
    assert inv.network_policy_ports(docs, listen) == []
    assert port_of(felix_toml(docs)["cluster"]["peer_template"]) == listen["peer"]


def test_a_service_on_another_port_is_refused(
    rendered: dict[str, list[Doc]], configs: dict[str, Any]
) -> None:
    docs = copy.deepcopy(rendered["prod-3"])
    find(docs, "Service", "felix")["spec"]["ports"][0]["port"] = 8002
    assert inv.service_ports(docs, inv.listen_ports(configs["prod-3"])) != []


@pytest.mark.parametrize("tree", TREES)
def test_grace_period_outlasts_the_hand_off(rendered: dict[str, list[Doc]], tree: str) -> None:
    hand_off_s = hand_off_timeout_s()
    assert hand_off_s == 2.0  # the interface contract's figure
    problems = inv.grace_period(felix_sts(rendered[tree]), hand_off_s, app.SHUTDOWN_GRACE_S)
    assert problems == []


def test_a_short_grace_period_is_refused(rendered: dict[str, list[Doc]]) -> None:
    sts = copy.deepcopy(felix_sts(rendered["prod-3"]))
    inv.pod_spec(sts)["terminationGracePeriodSeconds"] = 5
    assert inv.grace_period(sts, hand_off_timeout_s(), app.SHUTDOWN_GRACE_S) != []


@pytest.mark.parametrize("tree", TREES)
def test_config_files_are_where_felix_toml_says(
    rendered: dict[str, list[Doc]], configs: dict[str, Any], tree: str, tmp_path: Path
) -> None:
    """The config path, data dir, TLS files of every pod and the bootstrap token are
    all provided by the pod's volumes at the paths felix.toml names."""
    docs, config = rendered[tree], configs[tree]
    sts = felix_sts(docs)
    container = felix_container(docs)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in inv.pod_spec(sts)["volumes"]}
    args = container["args"]
    assert inv.flag_value(args, "--config") == f"{mounts['config']}/felix.toml"
    assert volumes["config"]["configMap"]["name"] == "felix-config"
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    assert str(config.data_dir).startswith(mounts["data"] + "/")
    assert config.security_problem() is None and not config.insecure  # TLS and auth on
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"

    tls_files = projected_files(volumes["tls"], mounts["tls"])
    assert config.tls.ca in tls_files
    for ordinal in range(sts["spec"]["replicas"]):
        pod = node_config(docs, tmp_path / f"felix-{ordinal}", ordinal)
        node_id = ordinal + 1
        if hasattr(pod, "cluster"):  # LOAD_CONFIG: pod identity needs the [cluster] section
            assert pod.node_id == node_id
        # {node_id} is substituted by load_config once [cluster] lands; a no-op then.
        assert pod.tls.cert.replace("{node_id}", str(node_id)) in tls_files
        assert pod.tls.key.replace("{node_id}", str(node_id)) in tls_files

    token = volumes["bootstrap-token"]["secret"]
    paths = {f"{mounts['bootstrap-token']}/{i['path']}" for i in token["items"]}
    assert config.auth.bootstrap_token_file in paths

    env = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def projected_files(volume: Doc, mount_path: str) -> set[str]:
    return {
        f"{mount_path}/{item['path']}"
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }


def test_the_image_entrypoint_accepts_the_container_args(rendered: dict[str, list[Doc]]) -> None:
    """The image runs `felix serve`; the manifest's args are real `felix serve` flags."""
    parser = build_parser()
    for tree in TREES:
        args = parser.parse_args(["serve", *felix_container(rendered[tree])["args"]])
        assert args.config == Path("/etc/felix/config/felix.toml")


# --- probes against the real ops server --------------------------------------------------


def _healthy_node() -> Any:
    conf = SimpleNamespace(voters=(1, 2, 3), learners=())
    core = SimpleNamespace(leader_id=1, conf=conf, commit_index=7)
    return SimpleNamespace(
        node_id=1, core=core, applied_index=7, metrics=SimpleNamespace(exposition=lambda: b"")
    )


async def _get(port: int, path: str, context: ssl.SSLContext | None) -> int:
    """One GET the way the kubelet probes: HTTPS without verifying the certificate."""
    if context is None:
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    else:
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", port, ssl_context=context, https_compatible=True
        )
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: felix\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(4096):
            data += chunk
    return int(data.split(b" ", 2)[1])


async def test_probes_are_served_by_the_ops_server(
    rendered: dict[str, list[Doc]], configs: dict[str, Any], tmp_path: Path
) -> None:
    """Every probe of every control-plane pod: its port is felix.toml's ops port, its
    scheme what the ops port serves, and its path answers 200 without a token on the
    real ops server (`build_ops_server`, with authentication on)."""
    from felix.security.certs import init_ca, issue
    from felix.security.contexts import server_context

    init_ca(tmp_path, "felix")
    issue(tmp_path, "node", 1)
    server_ctx = server_context(
        tmp_path / "node-1.crt",
        tmp_path / "node-1.key",
        tmp_path / "ca.crt",
        require_client_cert=False,
    )
    kubelet = ssl.create_default_context()
    kubelet.check_hostname = False
    kubelet.verify_mode = ssl.CERT_NONE

    probes: set[tuple[str, str]] = set()
    for tree in TREES:
        config = configs[tree]
        container = felix_container(rendered[tree])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = container[kind]["httpGet"]
            assert inv.resolve_port(container, get["port"]) == config.listen.ops.port
            assert get["scheme"] == ("HTTPS" if config.tls.ops else "HTTP")
            probes.add((get["path"], get["scheme"]))
        paths = {
            kind: container[kind]["httpGet"]["path"] for kind in ("livenessProbe", "readinessProbe")
        }
        assert paths["livenessProbe"] != paths["readinessProbe"]
    config = configs["prod-3"]
    wal = SimpleNamespace(core=SimpleNamespace(failed=None))
    server = build_ops_server(
        config, _healthy_node(), wal, auth=Authenticator(lambda: {}), tls=lambda: server_ctx
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run, "127.0.0.1", 0)
        for path, scheme in sorted(probes):
            assert await _get(port, path, kubelet if scheme == "HTTPS" else None) == 200, path
        assert await _get(port, "/healthz", kubelet) != 200  # not a path it serves
        nursery.cancel_scope.cancel()


# --- pods --------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", TREES)
def test_pods_are_restricted(rendered: dict[str, list[Doc]], tree: str) -> None:
    assert inv.pod_security(rendered[tree]) == []
    assert inv.writable_mounts(rendered[tree]) == []
    assert inv.pinned_images(rendered[tree]) == []


def test_a_writable_root_is_refused(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["prod-3"])
    felix_container(docs)["securityContext"]["readOnlyRootFilesystem"] = False
    assert inv.pod_security(docs) != []


@pytest.mark.parametrize("tree", TREES)
def test_services_labels_and_brokers(rendered: dict[str, list[Doc]], tree: str) -> None:
    docs = rendered[tree]
    assert inv.labels(docs) == []
    assert inv.peer_service(docs, felix_toml(docs)["cluster"]["peer_template"]) == []
    assert inv.broker_ingress(docs) == []


def test_a_tcp_broker_ingress_is_refused(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["prod-3"])
    find(docs, "Service", "felix-broker-ingress")["spec"]["ports"][0]["protocol"] = "TCP"
    assert inv.broker_ingress(docs) != []


# The broker-agent flags of the interface contract (its parser is the agent helper's).
BROKER_FLAGS = {
    "--endpoints",
    "--node-id",
    "--pod-identity",
    "--ca",
    "--cert",
    "--key",
    "--token",
    "--listen-ops",
    "--address",
    "--rack",
    "--prefer-endpoints",
}
BROKER_PROBE_PATHS = {"/livez", "/readyz"}  # the contract's broker ops routes


@pytest.mark.parametrize("tree", TREES)
def test_brokers_reach_the_client_service(
    rendered: dict[str, list[Doc]], configs: dict[str, Any], tree: str
) -> None:
    docs = rendered[tree]
    (broker,) = [w for w in inv.workloads(docs) if w["metadata"]["name"] == "felix-broker"]
    assert broker["kind"] == ("Deployment" if tree == "dev" else "StatefulSet")
    container = inv.pod_spec(broker)["containers"][0]
    args = container["args"]
    assert container["command"] == ["felix", "broker-agent"]
    assert {a for a in args if a.startswith("--")} <= BROKER_FLAGS
    if "felix.broker.agent" in COMMAND_MODULES:  # the agent's own parser, once it lands
        build_parser().parse_args(["broker-agent", *args])
    assert ("--pod-identity" in args) == (broker["kind"] == "StatefulSet")
    client = find(docs, "Service", "felix")["spec"]["ports"][0]["port"]
    assert inv.flag_value(args, "--endpoints") == f"felix:{client}"
    if tree in OBSERVER_TREES:  # the observers first, the voters as the fallback
        observer = find(docs, "Service", "felix-observer")["spec"]["ports"][0]["port"]
        assert inv.flag_value(args, "--prefer-endpoints") == f"felix-observer:{observer}"
    else:
        assert "--prefer-endpoints" not in args
    ops_port = port_of(inv.flag_value(args, "--listen-ops") or "")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[kind]["httpGet"]
        assert inv.resolve_port(container, get["port"]) == ops_port
        assert get["scheme"] == "HTTP" and get["path"] in BROKER_PROBE_PATHS
    udp = [p for p in container["ports"] if p["protocol"] == "UDP"]
    assert [p["containerPort"] for p in udp] == [
        p["port"] for p in find(docs, "Service", "felix-broker-ingress")["spec"]["ports"]
    ]
    volumes = {v["name"]: v for v in inv.pod_spec(broker)["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    files = projected_files(volumes["tls"], mounts["tls"])
    ids = range(1, broker["spec"]["replicas"] + 1)
    for flag in ("--ca", "--cert", "--key"):
        template = inv.flag_value(args, flag) or ""
        assert {template.format(node_id=i) for i in ids} <= files, flag


# --- the optional components --------------------------------------------------------------


def test_certificates_name_the_identities_felix_checks(
    rendered: dict[str, list[Doc]], configs: dict[str, Any]
) -> None:
    """cert-manager makes the Secrets the pods project, each Certificate naming the
    felix:// identity the node or broker must present (felix/security/identity.py)."""
    docs = rendered["base+components"]
    cluster_id = configs["base+components"].cluster_id
    certs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    for spec in certs.values():
        assert spec["issuerRef"]["name"] in issuers and spec["issuerRef"]["kind"] == "Issuer"
        assert spec["privateKey"]["algorithm"] == "ECDSA"
    assert certs["felix-ca"]["isCA"] is True
    assert certs["felix-ca"]["uris"] == [f"felix://{cluster_id}/ca"]
    wanted: dict[str, str] = {"felix-ca": "felix-ca"}
    for w in inv.workloads(docs):
        for volume in inv.pod_spec(w)["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                wanted[source["secret"]["name"]] = w["metadata"]["name"]
    made = {spec["secretName"]: name for name, spec in certs.items()}
    assert set(wanted) <= set(made), set(wanted) - set(made)
    for secret in wanted:
        kind, _, ident = secret.removeprefix("felix-").rpartition("-")
        if kind in ("node", "broker"):
            assert certs[made[secret]]["uris"] == [f"felix://{cluster_id}/{kind}/{ident}"]
            assert "client auth" in certs[made[secret]]["usages"]
        if kind == "node":
            assert "server auth" in certs[made[secret]]["usages"]


def test_service_monitors_scrape_real_ports(
    rendered: dict[str, list[Doc]], configs: dict[str, Any]
) -> None:
    docs = rendered["base+components"]
    config = configs["base+components"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 2
    services = [d for d in docs if d["kind"] == "Service"]
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert chosen, inv.name_of(monitor)
        for service in chosen:  # the voters' and the observers' ops ports share one monitor
            names = {p["name"]: p["port"] for p in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in names and endpoint["path"] == "/metrics"
                if service["metadata"]["name"] in ("felix-ops", "felix-observer-ops"):
                    assert names["ops"] == config.listen.ops.port
                    assert endpoint["scheme"] == ("https" if config.tls.ops else "http")
                    assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == "felix-ca"
                else:
                    assert endpoint["scheme"] == "http"
    scraped = {
        s["metadata"]["name"]
        for s in services
        if any(
            m["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
            for m in monitors
        )
    }
    assert scraped == {"felix-ops", "felix-observer-ops", "felix-broker"}
    assert "/metrics" in config.auth.ops_open_paths.split(",")


def test_rendered_config_is_the_base_file(rendered: dict[str, list[Doc]]) -> None:
    """One felix.toml for every overlay: overlays tune it with FELIX_* env only."""
    base = tomllib.loads((K8S / "base" / "felix.toml").read_text())
    for tree in TREES:
        assert felix_toml(rendered[tree]) == base


# --- observers (components/observers) --------------------------------------------------


def observer_sts(docs: list[Doc]) -> Doc:
    return find(docs, "StatefulSet", inv.OBSERVERS)


@pytest.mark.parametrize("tree", OBSERVER_TREES)
def test_observer_pods_load_as_observers_that_join_the_voters(
    rendered: dict[str, list[Doc]], configs: dict[str, Any], tree: str, tmp_path: Path
) -> None:
    """Every observer pod's felix.toml + env, through `load_config`: node 101+ordinal,
    role observer, never an initial member, the voters as its peers, its own name in the
    observers' headless Service as its advertised address, and its TLS files projected."""
    docs = rendered[tree]
    sts = observer_sts(docs)
    voters = configs[tree]
    service = sts["spec"]["serviceName"]
    container = inv.pod_spec(sts)["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in inv.pod_spec(sts)["volumes"]}
    tls_files = projected_files(volumes["tls"], mounts["tls"])
    replicas = sts["spec"]["replicas"]
    assert replicas == 2
    voter_ids = set(range(1, felix_toml(docs)["raft"]["voters_max"] + 1))
    for ordinal in range(replicas):
        pod = node_config(docs, tmp_path / f"observer-{ordinal}", ordinal, inv.OBSERVERS)
        assert pod.node_id == 101 + ordinal and pod.node_id not in voter_ids
        assert pod.cluster.role == "observer"
        assert pod.node_id not in pod.cluster.initial_members
        # Its peers are the initial members, at the addresses they advertise themselves.
        assert sorted(pod.peers) == sorted(pod.cluster.initial_members)
        for member, address in pod.peers.items():
            voter = node_config(docs, tmp_path / f"voter-{member}", member - 1)
            assert str(address) == voter.cluster.advertise_peer
        assert pod.cluster.advertise_peer == (
            f"felix-observer-{ordinal}.{service}.default.svc.cluster.local:{pod.listen.peer.port}"
        )
        assert pod.tls.cert in tls_files and pod.tls.key in tls_files
        assert pod.tls.ca in tls_files
        assert pod.security_problem() is None and not pod.insecure
        assert str(pod.data_dir).startswith(mounts["data"] + "/")
        assert inv.listen_ports(pod) == inv.listen_ports(voters)
    env = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete"


@pytest.mark.parametrize("tree", OBSERVER_TREES)
def test_observers_keep_the_invariants(
    rendered: dict[str, list[Doc]], configs: dict[str, Any], tree: str
) -> None:
    docs, config = rendered[tree], configs[tree]
    listen = inv.listen_ports(config)
    scheme = "HTTPS" if config.tls.ops else "HTTP"
    assert inv.observers(docs, listen, scheme) == []
    assert inv.network_policy_ports(docs, listen, "felix-observer") == []
    assert inv.network_policy_ports(docs, listen) == []  # the voters admit the observers
    assert inv.anti_affinity(observer_sts(docs), required=True) == []
    assert inv.grace_period(observer_sts(docs), hand_off_timeout_s(), app.SHUTDOWN_GRACE_S) == []
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} >= {"felix", "felix-observer"}


def _broken(docs: list[Doc], how: str) -> list[Doc]:
    docs = copy.deepcopy(docs)
    sts = observer_sts(docs)
    container = inv.pod_spec(sts)["containers"][0]
    if how == "role":
        for e in container["env"]:
            if e["name"] == "FELIX_CLUSTER__ROLE":
                e["value"] = "voter"
    elif how == "probe":
        container["readinessProbe"]["httpGet"]["path"] = "/livez"
    elif how == "probe-port":
        container["livenessProbe"]["httpGet"]["port"] = "client"
    elif how == "security":
        inv.pod_spec(sts)["securityContext"]["runAsUser"] = 10002
    elif how == "container-security":
        container["securityContext"]["readOnlyRootFilesystem"] = False
    elif how == "port":
        find(docs, "Service", "felix-observer")["spec"]["ports"][0]["port"] = 8002
    elif how == "container-port":
        container["ports"][0]["containerPort"] = 7002
    elif how == "volume":
        sts["spec"].pop("volumeClaimTemplates")
    elif how == "voter-labels":  # the voters' Services and budget would pick observers
        labels = sts["spec"]["template"]["metadata"]["labels"]
        labels["app.kubernetes.io/component"] = "control-plane"
    elif how == "headless":
        find(docs, "Service", "felix-observer-peers")["spec"].pop("publishNotReadyAddresses")
    elif how == "config":
        for v in inv.pod_spec(sts)["volumes"]:
            if "configMap" in v:
                v["configMap"]["name"] = "felix-observer-config"
    return docs


@pytest.mark.parametrize(
    "how",
    ["role", "probe", "probe-port", "security", "container-security", "port",
     "container-port", "volume", "voter-labels", "headless", "config"],
)  # fmt: skip
def test_a_broken_observer_is_refused(
    rendered: dict[str, list[Doc]], configs: dict[str, Any], how: str
) -> None:
    config = configs["prod-3+observers"]
    scheme = "HTTPS" if config.tls.ops else "HTTP"
    docs = _broken(rendered["prod-3+observers"], how)
    assert inv.observers(docs, inv.listen_ports(config), scheme) != []


def test_observers_admitted_only_where_they_must_be(rendered: dict[str, list[Doc]]) -> None:
    """Without the observers' peer rule the voters' policy is wrong once observers
    exist, and with it where there are none."""
    listen = {"peer": 7001, "client": 8001, "ops": 9001}
    docs = copy.deepcopy(rendered["prod-3+observers"])
    find(docs, "NetworkPolicy", "felix")["spec"]["ingress"][0]["from"].pop()
    assert inv.network_policy_ports(docs, listen) != []
    docs = copy.deepcopy(rendered["prod-3"])
    observers_rule = find(rendered["prod-3+observers"], "NetworkPolicy", "felix")
    find(docs, "NetworkPolicy", "felix")["spec"] = copy.deepcopy(observers_rule["spec"])
    assert inv.network_policy_ports(docs, listen) != []


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"FELIX_CLUSTER__NODE_ID_BASE": "1"}, "node 1 is one of cluster.initial_members"),
        ({"FELIX_CLUSTER__ADVERTISE_PEER": "$(POD_NAME)"}, "invalid cluster.advertise_peer"),
    ],
)
def test_a_broken_observer_env_fails_to_load(
    rendered: dict[str, list[Doc]], tmp_path: Path, env: dict[str, str], error: str
) -> None:
    from felix.config import ConfigError

    docs = copy.deepcopy(rendered["prod-3+observers"])
    container = inv.pod_spec(observer_sts(docs))["containers"][0]
    for e in container["env"]:
        if e["name"] in env:
            e["value"] = env[e["name"]]
    with pytest.raises(ConfigError, match=re.escape(error)):
        node_config(docs, tmp_path, 0, inv.OBSERVERS)


def test_the_observers_component_is_opt_in(rendered: dict[str, list[Doc]]) -> None:
    for tree in OVERLAYS:  # no overlay has observers: a component the operator adds
        assert not any(d["metadata"]["name"].startswith("felix-observer") for d in rendered[tree])
