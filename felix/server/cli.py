"""``felix serve``, ``felix dev`` and the admin commands that talk to running nodes.

Admin commands speak HTTP to the nodes' ops endpoints (``--endpoints``, default the
``felix dev`` cluster's).  Reads ask every endpoint; writes go to the leader, found by
asking, so an operator never has to know which node leads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from felix.config import (
    ClientCredentials,
    ConfigError,
    Endpoint,
    NodeConfig,
    client_credentials,
    load_config,
    parse_endpoint,
)
from felix.logs import setup_logging
from felix.metadata.tokens import format_token
from felix.security.contexts import client_context

DEV_ENDPOINTS = "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003"
DEV_TOKEN_FILE = "admin-token"
HTTP_TIMEOUT_S = 10.0

log = logging.getLogger("felix.cli")


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run one control-plane node")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--node-id", help="this node's id (config: node_id)")
    serve.add_argument("--cluster-id", help="cluster id (config: cluster_id)")
    serve.add_argument("--data-dir", help="WAL and snapshots (config: data_dir)")
    serve.add_argument("--peers", help="the other voters: '2=host:port,3=host:port'")
    serve.add_argument("--listen-peer", help="host:port for Raft peers")
    serve.add_argument("--listen-client", help="host:port for brokers")
    serve.add_argument("--listen-ops", help="host:port for /livez /readyz /metrics and admin")
    serve.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="run without TLS and authentication (config: insecure); logged loudly",
    )
    serve.set_defaults(handler=run_serve)

    dev = subparsers.add_parser("dev", help="run a local 3-node cluster and brokers on loopback")
    dev.add_argument("--data-dir", type=Path, default=Path("./felix-data"))
    dev.add_argument("--nodes", type=int, default=3, choices=(1, 3, 5))
    dev.add_argument("--base-port", type=int, default=7001, help="peer ports start here")
    dev.add_argument("--fresh", action="store_true", help="delete --data-dir first")
    dev.add_argument("--log-format", choices=("text", "json"), default="text")
    dev.add_argument(
        "--brokers",
        type=int,
        default=DEV_BROKERS_DEFAULT,
        help=f"example brokers 1..N (`felix brokers`: one child process, the broker of"
        f" `felix broker-agent` N times; default {DEV_BROKERS_DEFAULT}, 0: none)",
    )
    dev.set_defaults(handler=run_dev)

    token = subparsers.add_parser(
        "bootstrap-token", help="write a new admin token file (auth.bootstrap_token_file)"
    )
    token.add_argument("--out", type=Path, required=True, help="the file to create (0600)")
    token.add_argument("--force", action="store_true", help="replace an existing file")
    token.set_defaults(handler=run_bootstrap_token)

    status = subparsers.add_parser(
        "status", help="members (voters, learners, observers), roles, leader, term, indexes"
    )
    _endpoints_arg(status)
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(handler=run_status)

    transfer = subparsers.add_parser("transfer-leader", help="move leadership")
    _endpoints_arg(transfer)
    transfer.add_argument("--to", type=int, help="target node (default: most caught up)")
    transfer.set_defaults(handler=run_transfer)

    member = subparsers.add_parser("member", help="change membership")
    _endpoints_arg(member)
    member_sub = member.add_subparsers(dest="member_command", metavar="COMMAND", required=True)
    add = member_sub.add_parser("add", help="add a node as a learner")
    add.add_argument("id", type=int)
    add.add_argument("--address", required=True, help="the new node's peer host:port")
    add.add_argument(
        "--learner",
        action="store_true",
        default=True,
        help="(the only mode: nodes join as learners, then get promoted)",
    )
    add.set_defaults(handler=lambda a: run_member(a, "add"))
    _endpoints_arg(add, repeated=True)
    promote = member_sub.add_parser(
        "promote", help="make a caught-up learner a voter (never an observer)"
    )
    promote.add_argument("id", type=int)
    promote.set_defaults(handler=lambda a: run_member(a, "promote"))
    _endpoints_arg(promote, repeated=True)
    remove = member_sub.add_parser("remove", help="remove a member (the leader too)")
    remove.add_argument("id", type=int)
    remove.set_defaults(handler=lambda a: run_member(a, "remove"))
    _endpoints_arg(remove, repeated=True)


def _endpoints_arg(parser: argparse.ArgumentParser, *, repeated: bool = False) -> None:
    """``repeated``: the same flags on a subcommand (``felix member remove 5 --endpoints
    X`` as well as ``felix member --endpoints X remove 5``); absent there, they keep
    what the parent parsed."""
    default = argparse.SUPPRESS if repeated else DEV_ENDPOINTS
    parser.add_argument(
        "--endpoints", default=default, help=f"ops host:port list (default {DEV_ENDPOINTS})"
    )
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS if repeated else None,
        help="bearer token, or @FILE (default: FELIX_TOKEN, else felix dev's admin token)",
    )


# --- serve ------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"felix: --set {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        overrides[key] = value
    flags = {
        "node_id": args.node_id,
        "cluster_id": args.cluster_id,
        "data_dir": args.data_dir,
        "peers": args.peers,
        "listen.peer": args.listen_peer,
        "listen.client": args.listen_client,
        "listen.ops": args.listen_ops,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.insecure:
        overrides["insecure"] = "true"
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"felix: invalid configuration: {exc}", file=sys.stderr)
        return 2
    from felix.server.security import NodeSecurity, SecurityConfigError

    try:
        NodeSecurity.from_config(config)  # the same check the node repeats: fail before start
    except SecurityConfigError as exc:
        print(f"felix: refusing to start: {exc}", file=sys.stderr)
        return 2
    from felix.server.datadir import lock_holder

    held = lock_holder(config.data_dir) if config.data_dir.is_dir() else None
    if held is not None:  # the node takes the lock itself; this says it in one line
        print(f"felix: refusing to start: {held}", file=sys.stderr)
        return 2
    from felix.storage.cluster_marker import ClusterMismatch, read_cluster_marker

    try:  # the node claims the directory at start; refuse another cluster's before that
        found = read_cluster_marker(str(config.data_dir))
    except ClusterMismatch as exc:
        found = str(exc)
    if found is not None and found != config.cluster_id:
        print(
            f"felix: refusing to start: {config.data_dir} belongs to cluster {found!r}, the"
            f" config says {config.cluster_id!r}; fix cluster_id, or start with an empty"
            " data_dir to join as a new member",
            file=sys.stderr,
        )
        return 2
    setup_logging(config.log.level, config.log.format)
    from felix.storage.errors import StorageError

    refused: list[BaseException] = []
    try:
        trio.run(_serve_until_signal, [config])
    except* StorageError as group:  # the data directory cannot be used as it is
        refused = _leaves(group)
    for problem in refused:
        print(f"felix: refusing to start: {problem}", file=sys.stderr)
    return 2 if refused else 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def _serve_until_signal(
    configs: list[NodeConfig], banner: bool = False, brokers_argv: list[str] | None = None
) -> None:
    """Run the nodes until SIGTERM/SIGINT, then stop them gracefully (a second signal
    exits at once).  ``brokers_argv`` runs as a child process beside them (`felix dev
    --brokers`), stopped by its PID before the nodes stop."""
    from felix.server.app import NodeHandle, run_node

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as outer:
            handles: list[NodeHandle] = []

            async def watch_signals() -> None:
                seen = 0
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        for handle in handles:
                            handle.reload()
                        continue
                    seen += 1
                    if seen > 1:
                        log.warning("second signal: exiting now")
                        raise SystemExit(1)
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    if len(handles) < len(configs):  # still starting (a bootstrap probe)
                        outer.cancel_scope.cancel()
                        return
                    if brokers is not None:
                        await _stop_child(brokers)
                    for handle in handles:
                        handle.request_stop(others_stopping=len(handles) > 1)

            brokers: trio.Process | None = None
            outer.start_soon(watch_signals)
            try:
                async with trio.open_nursery() as nodes:
                    for config in configs:
                        handles.append(await nodes.start(run_node, config))
                    if banner:
                        nodes.start_soon(_announce, handles)
                    if brokers_argv is not None:
                        brokers = await trio.lowlevel.open_process(
                            brokers_argv, start_new_session=True
                        )
                outer.cancel_scope.cancel()
            finally:
                if brokers is not None and brokers.returncode is None:
                    brokers.kill()  # by its PID, whatever stopped the nodes


async def _stop_child(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``CHILD_STOP_TIMEOUT_S``."""
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(CHILD_STOP_TIMEOUT_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _announce(handles: list[Any]) -> None:
    """Print the endpoints, then the leader once one is elected."""
    for handle in handles:
        c = handle.config
        print(
            f"node {c.node_id}: peer {c.listen.peer}  client"
            f" {'ws' if handle.security.insecure else 'wss'}://{c.listen.client}  "
            f"ops {'https' if handle.ops_tls else 'http'}://{c.listen.ops.host}:{handle.ops_port}"
            f"  data {c.data_dir}",
            flush=True,
        )
    endpoints = ",".join(f"{h.config.listen.ops.host}:{h.ops_port}" for h in handles)
    last_leader = None
    while not all(h.stop_requested.is_set() for h in handles):
        leaders = [h.node for h in handles if h.node.core.leader_id is not None]
        leader = leaders[0].core.leader_id if leaders else None
        if leader is not None and leader != last_leader:
            term = leaders[0].core.term
            print(f"leader: node {leader} (term {term})", flush=True)
            if last_leader is None:
                clients = ",".join(
                    f"{h.config.listen.client.host}:{h.config.listen.client.port}" for h in handles
                )
                print(
                    f"try:   felix status --endpoints {endpoints}\n"
                    f"       felix ctl tenant set acme --endpoints {clients}\n"
                    f"       felix ctl watch --endpoints {clients}\n"
                    "Ctrl-C stops the cluster cleanly.",
                    flush=True,
                )
            last_leader = leader
        await trio.sleep(0.2)


# --- dev ------------------------------------------------------------------------------


DEV_CLUSTER_ID = "felix-dev"
DEV_BROKERS_DEFAULT = 4
DEV_BROKERS_MAX = 100
CHILD_STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class DevMaterial:
    """What `felix dev` makes once in its data directory and reuses: a throwaway CA,
    one certificate per node, and the admin token every tool picks up from there."""

    tls_dir: Path
    token_file: Path

    @property
    def ca(self) -> Path:
        return self.tls_dir / "ca.crt"


def dev_material(data_dir: Path, nodes: int, brokers: int = 0) -> DevMaterial:
    from felix.security.certs import init_ca, issue

    material = DevMaterial(data_dir / "tls", data_dir / DEV_TOKEN_FILE)
    material.tls_dir.mkdir(parents=True, exist_ok=True)
    if not material.ca.exists():
        init_ca(material.tls_dir, DEV_CLUSTER_ID)
    for i in range(1, nodes + 1):
        if not (material.tls_dir / f"node-{i}.crt").exists():
            issue(material.tls_dir, "node", i, dns=["localhost"])
    for i in range(1, brokers + 1):  # `felix brokers` authenticates them by certificate
        if not (material.tls_dir / f"broker-{i}.crt").exists():
            issue(material.tls_dir, "broker", i)
    if not material.token_file.exists():
        write_token_file(material.token_file)
    return material


def write_token_file(path: Path, *, replace: bool = False) -> None:
    """A new admin token (``felix.metadata.tokens`` format) in ``path``, mode 0600: the
    bootstrap token ``auth.bootstrap_token_file`` names.  Refuses an existing file
    unless ``replace`` (FileExistsError)."""
    text = format_token(secrets.token_hex(8), secrets.token_bytes(32))
    if replace:
        path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(text + "\n")


def run_bootstrap_token(args: argparse.Namespace) -> int:
    try:
        write_token_file(args.out, replace=args.force)
    except FileExistsError:
        print(f"felix: {args.out} exists; --force replaces it", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"felix: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote a new admin token to {args.out} (mode 0600): the nodes' bootstrap token")
    return 0


def dev_configs(
    data_dir: Path, nodes: int, base_port: int, material: DevMaterial | None = None
) -> list[NodeConfig]:
    """One config per node; with ``material`` (what `felix dev` uses) TLS and auth are
    on, without it the nodes run ``insecure``."""
    ids = list(range(1, nodes + 1))
    peer_ports = {i: base_port + i - 1 for i in ids}
    configs = []
    for i in ids:
        peers = ",".join(f"{p}=127.0.0.1:{peer_ports[p]}" for p in ids if p != i)
        overrides = {
            "node_id": str(i),
            "cluster_id": DEV_CLUSTER_ID,
            "data_dir": str(data_dir / f"node-{i}"),
            "listen.peer": f"127.0.0.1:{peer_ports[i]}",
            "listen.client": f"127.0.0.1:{base_port + 1000 + i - 1}",
            "listen.ops": f"127.0.0.1:{base_port + 2000 + i - 1}",
        }
        if peers:
            overrides["peers"] = peers
        if material is None:
            overrides["insecure"] = "true"
        else:
            overrides["tls.ca"] = str(material.ca)
            overrides["tls.cert"] = str(material.tls_dir / f"node-{i}.crt")
            overrides["tls.key"] = str(material.tls_dir / f"node-{i}.key")
            overrides["auth.bootstrap_token_file"] = str(material.token_file)
        configs.append(load_config(None, env={}, overrides=overrides))
    return configs


def run_dev(args: argparse.Namespace) -> int:
    setup_logging("info", args.log_format)
    if args.fresh and args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    from felix.security.certs import CertError

    if not 0 <= args.brokers <= DEV_BROKERS_MAX:
        print(f"felix dev: --brokers must be within 0..{DEV_BROKERS_MAX}", file=sys.stderr)
        return 2
    try:
        material = dev_material(args.data_dir, args.nodes, args.brokers)
        configs = dev_configs(args.data_dir, args.nodes, args.base_port, material)
    except (ConfigError, CertError, OSError) as exc:
        print(f"felix: {exc}", file=sys.stderr)
        return 2
    print(f"felix dev: {args.nodes}-node cluster on 127.0.0.1, data in {args.data_dir}", flush=True)
    print(
        f"felix dev: TLS and authentication on: CA {material.ca}, admin token in"
        f" {material.token_file} (felix ctl and felix status read both from"
        f" {args.data_dir}; elsewhere set FELIX_CA and FELIX_TOKEN)",
        flush=True,
    )
    brokers_argv = None
    if args.brokers:
        clients = ",".join(f"{c.listen.client.host}:{c.listen.client.port}" for c in configs)
        brokers_argv = [
            sys.executable, "-m", "felix.cli", "brokers", f"1-{args.brokers}",
            "--endpoints", clients, "--cert-dir", str(material.tls_dir),
            "--ca", str(material.ca), "--token", f"@{material.token_file}",
        ]  # fmt: skip
        print(
            f"felix dev: example brokers 1..{args.brokers} (felix brokers, racks r0..r2):"
            " they print their placement and ownership below",
            flush=True,
        )
    try:
        trio.run(_serve_until_signal, configs, True, brokers_argv)
    except OSError as exc:
        print(f"felix dev: cannot start: {exc}", file=sys.stderr)
        return 1
    print("felix dev: stopped", flush=True)
    return 0


# --- admin ------------------------------------------------------------------------------


class AdminError(Exception):
    pass


def _credentials(args: argparse.Namespace) -> ClientCredentials:
    try:
        return client_credentials(getattr(args, "token", None), getattr(args, "ca", None))
    except ConfigError as exc:
        raise AdminError(str(exc)) from None


def _request(
    endpoint: str, path: str, creds: ClientCredentials, *, post: bool = False
) -> tuple[int, Any]:
    """One ops-port request: HTTPS trusting only the cluster CA when one is known (the
    ops port serves TLS whenever the node does, unless ``tls.ops = false``)."""
    context = client_context(creds.ca) if creds.ca is not None else None
    url = f"{'https' if context else 'http'}://{endpoint}{path}"
    headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
    request = urllib.request.Request(
        url, method="POST" if post else "GET", data=b"" if post else None, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=context) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"null")
        except ValueError:
            shown = text.decode("utf-8", "replace").strip()[:300]
            return exc.code, {"error": f"HTTP {exc.code}: {shown}" if shown else f"HTTP {exc.code}"}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(reason):
            reason = (
                f"{reason}: it does not speak TLS (an --insecure node, or tls.ops = false:"
                f" then unset FELIX_CA / --ca for it)"
            )
        raise AdminError(f"{endpoint}: {reason}") from None


def _endpoints(args: argparse.Namespace) -> list[str]:
    endpoints = []
    for item in args.endpoints.split(","):
        item = item.strip()
        if item:
            endpoint: Endpoint = parse_endpoint(item)
            endpoints.append(f"{endpoint.host}:{endpoint.port}")
    return endpoints


def _statuses(endpoints: list[str], creds: ClientCredentials) -> list[dict[str, Any]]:
    rows = []
    for endpoint in endpoints:
        try:
            code, body = _request(endpoint, "/v1/status", creds)
            row = body if code == 200 else {"error": body.get("error", f"HTTP {code}")}
        except AdminError as exc:
            row = {"error": str(exc)}
        row["endpoint"] = endpoint
        rows.append(row)
    return rows


def run_status(args: argparse.Namespace) -> int:
    try:
        rows = _statuses(_endpoints(args), _credentials(args))
    except ValueError as exc:
        print(f"felix: --endpoints: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        print(f"felix: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        headers = [
            "ENDPOINT",
            "NODE",
            "ROLE",
            "TERM",
            "LEADER",
            "COMMIT",
            "APPLIED",
            "VOTERS",
            "LEARNERS",
            "OBSERVERS",
        ]
        table = [headers]
        for r in rows:
            if "error" in r:
                table.append([r["endpoint"], "-", f"unreachable ({r['error']})", *[""] * 7])
                continue
            table.append(
                [
                    r["endpoint"],
                    str(r["node_id"]),
                    r["role"],
                    str(r["term"]),
                    str(r["leader_id"] or "-"),
                    str(r["commit_index"]),
                    str(r["applied_index"]),
                    ",".join(map(str, r["voters"])),
                    ",".join(map(str, _learners_only(r))) or "-",
                    ",".join(map(str, r.get("observers", ()))) or "-",
                ]
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0 if all("error" not in r for r in rows) else 1


def _learners_only(row: dict[str, Any]) -> list[int]:
    """Learners waiting for promotion: observers are learners too, shown apart."""
    observers = set(row.get("observers", ()))
    return [n for n in row["learners"] if n not in observers]


def _leader_endpoint(endpoints: list[str], creds: ClientCredentials) -> str:
    rows = _statuses(endpoints, creds)
    for row in rows:
        if row.get("role") == "leader":
            return str(row["endpoint"])
    reachable = [r for r in rows if "error" not in r]
    raise AdminError(
        "no leader among the endpoints"
        + ("" if reachable else " (none reachable: is the cluster running? see --endpoints)")
    )


def _post_to_leader(args: argparse.Namespace, path: str) -> int:
    try:
        creds = _credentials(args)
        leader = _leader_endpoint(_endpoints(args), creds)
        code, body = _request(leader, path, creds, post=True)
    except (AdminError, ValueError) as exc:
        print(f"felix: {exc}", file=sys.stderr)
        return 1
    if code != 200:
        print(
            f"felix: {body.get('error', body) if isinstance(body, dict) else body}", file=sys.stderr
        )
        return 1
    print(json.dumps(body))
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    query = f"?to={args.to}" if args.to is not None else ""
    return _post_to_leader(args, f"/v1/transfer-leader{query}")


def run_member(args: argparse.Namespace, action: str) -> int:
    params = {"id": str(args.id)}
    if action == "add":
        params["address"] = args.address
    return _post_to_leader(args, f"/v1/members/{action}?{urllib.parse.urlencode(params)}")
