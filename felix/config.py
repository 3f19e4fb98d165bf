"""Node configuration: defaults < TOML file < ``FELIX_*`` environment < command-line flags.

Every layer is a nested mapping of raw values; they are merged key by key, then checked
once against the frozen dataclasses below.  Every error names the key, the offending
value and where it came from, and unknown keys are refused with a suggestion — a typo in
a config file must never silently fall back to a default.

Environment variables use ``__`` for nesting: ``FELIX_RAFT__ELECTION_TICKS=20`` sets
``[raft] election_ticks``.  On the command line, ``--set raft.election_ticks=20`` does the
same for any key.  ``peers`` is written ``"1=host:port,2=host:port"`` in env and flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "FELIX_"


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    peer: Endpoint = Endpoint("127.0.0.1", 7001)  # Raft peers (TCP, CBOR frames)
    client: Endpoint = Endpoint("127.0.0.1", 8001)  # brokers and admin (WebSocket)
    ops: Endpoint = Endpoint("127.0.0.1", 9001)  # /livez /readyz /metrics (HTTP)


@dataclass(frozen=True, slots=True)
class RaftTimings:
    tick_ms: int = 50
    heartbeat_ticks: int = 2  # 100 ms
    election_ticks: int = 8  # 400-800 ms, randomized: failover well under 1 s
    pre_vote: bool = True
    check_quorum: bool = True
    # Autopilot (docs/architecture.md, "Membership"): never more voters than this; nodes
    # beyond it stay learners.  Odd, so that every voter adds fault tolerance.
    voters_max: int = 5
    promote_lag_entries_max: int = 64  # a learner this close to the leader's log is caught up

    @property
    def election_timeout_s(self) -> float:
        """The shortest election timeout: a peer silent this long may be down."""
        return self.election_ticks * self.tick_ms / 1000


VOTERS_MAX_LIMIT = 9  # more voters only slow commits; fan-out scales with learners
FRAME_BYTES_MIN = 64 * 1024  # a peer frame must hold at least one ordinary entry


@dataclass(frozen=True, slots=True)
class Limits:
    frame_bytes_max: int = 4 * 1024 * 1024
    peer_send_queue_max: int = 4096
    inputs_queue_max: int = 4096
    proposals_pending_max: int = 10_000
    entries_per_msg_max: int = 1024
    proposal_timeout_ms: int = 5000


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    entries: int = 10_000  # take a snapshot every N applied entries...
    bytes: int = 64 * 1024 * 1024  # ...or when the log since the last one exceeds this
    keep: int = 3


KEEPALIVE_INTERVAL_MS_MIN = 100  # below this a busy event loop could miss the answer


@dataclass(frozen=True, slots=True)
class WatchConfig:
    history_versions_max: int = 100_000  # deltas retained for resuming brokers...
    history_bytes_max: int = 64 * 1024 * 1024  # ...bounded by count and by bytes
    message_bytes_max: int = 1024 * 1024  # one Deltas message; bigger deltas are split
    progress_interval_ms: int = 1000
    # A live subscriber whose socket stays full holds its deltas, coalesced; past this
    # many held versions it gets a Resync (its own bound, not the history's).
    subscriber_lag_versions_max: int = 100_000
    # ...or past this many bytes of net changes held (one per record touched, the latest).
    subscriber_held_bytes_max: int = 16 * 1024 * 1024
    # Every client-port connection: a quiet one is pinged after half of this, and one
    # that leaves a ping unanswered for this long is closed (code 1011, with a reason).
    keepalive_interval_ms: int = 10_000
    # Encoded snapshots, one encode per version shared by every watch start and
    # GetSnapshot at it (`felix.server.snapshot_cache`): bytes kept, for how long, and
    # how many snapshot sends run at once (more queue for a slot, none is refused).
    snapshot_cache_bytes_max: int = 256 * 1024 * 1024
    snapshot_cache_ttl_ms: int = 5000
    snapshot_sends_max: int = 16


@dataclass(frozen=True, slots=True)
class BackupConfig:
    """Scheduled backups (docs/architecture.md §14): the leader writes a backup file
    every ``interval_s`` into ``dir`` and keeps the newest ``keep``; 0: never."""

    interval_s: int = 0
    dir: str = ""
    keep: int = 7


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """PEM files (``felix certs`` makes them; production can bring its own).  The node's
    certificate names it (``felix://<cluster_id>/node/<node_id>``) and serves both its
    peer link (mutual TLS) and its client port."""

    ca: str = ""  # the cluster CA: peers, and client certificates unless client_ca is set
    cert: str = ""
    key: str = ""
    client_ca: str = ""  # CA of broker/admin client certificates (default: ca)
    # The ops port serves HTTPS with the node's certificate too (admin tokens travel on
    # it); false keeps it plaintext for probes or scrapers that cannot do TLS.
    ops: bool = True


@dataclass(frozen=True, slots=True)
class AuthConfig:
    bootstrap_token_file: str = ""  # the first admin token (a Secret); reread on SIGHUP
    ops_open_paths: str = "/livez,/readyz,/metrics,/health"  # no token needed (probes)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """How a node finds its cluster and its own identity (docs/architecture.md,
    "Membership"), so one config file serves every pod of a StatefulSet."""

    # The members that form the cluster, like etcd's initial-cluster.  A node listed here
    # boots as a voter of exactly this set; any other node boots as a non-member that asks
    # to join and learns its role from the log.  Empty: {node_id} and its peers (legacy).
    initial_members: tuple[int, ...] = ()
    # Take node_id from the pod's ordinal: POD_NAME (else the hostname) "felix-2" -> 3.
    pod_identity: bool = False
    # The peer address of initial member {id} (= {ordinal} + 1), e.g.
    # "felix-{ordinal}.felix-peers.{namespace}.svc.cluster.local:7001" ({namespace}:
    # POD_NAMESPACE); also this node's own advertised address.
    peer_template: str = ""
    advertise_peer: str = ""  # this node's peer address as others dial it (overrides)
    autopilot: bool = True  # ask to join when not a member; leaders promote caught-up learners
    join_interval_ms: int = 1000  # a non-member's JoinRequest period
    promote_stable_ms: int = 5000  # a learner stays caught up this long before promotion
    # "voter": may be promoted to vote.  "observer": a permanent non-voting member that
    # replicates the log and serves brokers (docs/architecture.md, "Observers"); it is
    # never an initial member and is never promoted.
    role: str = "voter"
    # With pod_identity, node id = ordinal + node_id_base: an observer StatefulSet uses
    # e.g. 101 so that its ids never collide with the voters'.
    node_id_base: int = 1


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "text"  # or "json"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int = 1
    cluster_id: str = "felix"
    data_dir: Path = Path("./felix-data/node-1")
    peers: Mapping[int, Endpoint] = field(default_factory=dict)  # the other voters
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    raft: RaftTimings = field(default_factory=RaftTimings)
    limits: Limits = field(default_factory=Limits)
    snapshot: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    insecure: bool = False  # plaintext, no authentication: only when asked for by name
    watch: WatchConfig = field(default_factory=WatchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)

    def security_problem(self) -> str | None:
        """Why ``felix serve`` must refuse to start (None: TLS and auth are configured,
        or ``insecure`` was asked for).  Secure by default: no silent plaintext."""
        if self.insecure:
            return None
        missing = [
            name
            for name, value in (
                ("tls.ca", self.tls.ca),
                ("tls.cert", self.tls.cert),
                ("tls.key", self.tls.key),
                ("auth.bootstrap_token_file", self.auth.bootstrap_token_file),
            )
            if not value
        ]
        if not missing:
            return None
        return (
            f"TLS and authentication are required, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; `felix certs` makes "
            "certificates and `felix dev` a whole local setup, or pass --insecure to run "
            "without TLS and authentication"
        )

    def validate(self) -> NodeConfig:
        checks: list[tuple[bool, str]] = [
            (self.node_id >= 1, "node_id: must be >= 1"),
            (bool(self.cluster_id), "cluster_id: must not be empty"),
            (self.node_id not in self.peers, "peers: must not list this node's own id"),
            (self.raft.tick_ms >= 1, "raft.tick_ms: must be >= 1"),
            (self.raft.heartbeat_ticks >= 1, "raft.heartbeat_ticks: must be >= 1"),
            (
                self.raft.election_ticks > 2 * self.raft.heartbeat_ticks,
                "raft.election_ticks: must be more than twice raft.heartbeat_ticks",
            ),
            (self.snapshot.entries >= 1, "snapshot.entries: must be >= 1"),
            (self.snapshot.keep >= 1, "snapshot.keep: must be >= 1"),
            (self.watch.history_versions_max >= 1, "watch.history_versions_max: must be >= 1"),
            (self.watch.message_bytes_max >= 4096, "watch.message_bytes_max: must be >= 4096"),
            (self.watch.progress_interval_ms >= 10, "watch.progress_interval_ms: must be >= 10"),
            (
                self.watch.subscriber_lag_versions_max >= 1,
                "watch.subscriber_lag_versions_max: must be >= 1",
            ),
            (
                self.watch.subscriber_held_bytes_max >= 4096,
                "watch.subscriber_held_bytes_max: must be >= 4096",
            ),
            (
                KEEPALIVE_INTERVAL_MS_MIN <= self.watch.keepalive_interval_ms <= 3_600_000,
                f"watch.keepalive_interval_ms: must be >= {KEEPALIVE_INTERVAL_MS_MIN}"
                " and <= 3600000 (an hour)",
            ),
            (
                self.watch.snapshot_cache_bytes_max >= 0,
                "watch.snapshot_cache_bytes_max: must be >= 0 (0: keep none, share only"
                " builds in progress)",
            ),
            (
                0 <= self.watch.snapshot_cache_ttl_ms <= 3_600_000,
                "watch.snapshot_cache_ttl_ms: must be >= 0 and <= 3600000 (an hour)",
            ),
            (
                1 <= self.watch.snapshot_sends_max <= 100_000,
                "watch.snapshot_sends_max: must be >= 1 and <= 100000",
            ),
            (self.log.format in ("text", "json"), "log.format: must be 'text' or 'json'"),
            (
                1 <= self.raft.voters_max <= VOTERS_MAX_LIMIT and self.raft.voters_max % 2 == 1,
                f"raft.voters_max: must be odd, >= 1 and <= {VOTERS_MAX_LIMIT}",
            ),
            (self.raft.promote_lag_entries_max >= 0, "raft.promote_lag_entries_max: must be >= 0"),
            (
                all(m >= 1 for m in self.cluster.initial_members),
                "cluster.initial_members: node ids must be >= 1",
            ),
            (
                len(set(self.cluster.initial_members)) == len(self.cluster.initial_members),
                "cluster.initial_members: lists a node twice",
            ),
            (
                len(self.cluster.initial_members) <= VOTERS_MAX_LIMIT,
                f"cluster.initial_members: at most {VOTERS_MAX_LIMIT} members",
            ),
            (self.cluster.join_interval_ms >= 10, "cluster.join_interval_ms: must be >= 10"),
            (self.cluster.promote_stable_ms >= 0, "cluster.promote_stable_ms: must be >= 0"),
            (
                self.cluster.role in CLUSTER_ROLES,
                f"cluster.role: {self.cluster.role!r} is not one of {', '.join(CLUSTER_ROLES)}",
            ),
            (self.cluster.node_id_base >= 1, "cluster.node_id_base: must be >= 1"),
            (
                self.cluster.role != "observer" or self.node_id not in self.cluster.initial_members,
                f"cluster.role = observer: node {self.node_id} is one of"
                " cluster.initial_members; observers join a running cluster, they never form it",
            ),
            (
                0 <= self.backup.interval_s <= 30 * 86_400,
                "backup.interval_s: must be >= 0 (0: no scheduled backups) and <= 30 days",
            ),
            (
                self.backup.interval_s == 0 or bool(self.backup.dir),
                "backup.dir: must be set when backup.interval_s is",
            ),
            (1 <= self.backup.keep <= 10_000, "backup.keep: must be >= 1 and <= 10000"),
            (
                self.log.level in ("debug", "info", "warning", "error"),
                "log.level: must be debug, info, warning or error",
            ),
        ]
        # Every limit bounds a queue, a frame or a wait: zero would stop the node (a
        # zero-length peer queue drops every message), so each must be at least 1.
        checks += [
            (getattr(self.limits, name) >= 1, f"limits.{name}: must be >= 1")
            for name in Limits.__dataclass_fields__
        ]
        checks.append(
            (
                FRAME_BYTES_MIN <= self.limits.frame_bytes_max < 2**32,
                f"limits.frame_bytes_max: must be >= {FRAME_BYTES_MIN} and < 2**32"
                " (the frame prefix is 4 bytes)",
            )
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


# --- loading ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Raw:
    value: Any
    source: str  # "felix.toml", "FELIX_RAFT__TICK_MS", "--set raft.tick_ms"


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Build the node's config from a TOML file, the environment and CLI overrides."""
    layers: dict[str, _Raw] = {}
    if path is not None:
        layers.update(_flatten(_read_toml(path), str(path)))
    env = os.environ if env is None else env
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name not in _IGNORED_ENV:
            key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            layers[key] = _Raw(value, name)
    for key, value in (overrides or {}).items():
        layers[key] = _Raw(value, f"--set {key}")
    valid = set(_all_keys(NodeConfig))
    for key, raw in layers.items():
        if key not in valid:
            raise ConfigError(f"unknown key {key!r} (from {raw.source}){_suggest(key)}")
    config: NodeConfig = _build(NodeConfig, layers, "")
    if config.cluster.pod_identity:
        if "node_id" in layers:
            raise ConfigError(
                f"node_id (from {layers['node_id'].source}) and cluster.pod_identity are both"
                " set; the pod's ordinal gives the node id, so set only one"
            )
        node_id = pod_node_id(env, config.cluster.node_id_base)
        config = dataclasses.replace(config, node_id=node_id)
    return resolve_cluster(config, env).validate()


POD_NAME_ENV, POD_NAMESPACE_ENV = "POD_NAME", "POD_NAMESPACE"
CLUSTER_ROLES = ("voter", "observer")


def pod_node_id(env: Mapping[str, str], base: int = 1) -> int:
    """Node id from a StatefulSet pod's name: ``felix-0`` is node ``base`` (POD_NAME, set
    from the downward API, else the hostname, which a StatefulSet sets to the pod name)."""
    name = env.get(POD_NAME_ENV) or socket.gethostname()
    source = POD_NAME_ENV if env.get(POD_NAME_ENV) else "the hostname"
    match = re.fullmatch(r"[A-Za-z0-9.-]*?-(\d{1,6})", name.split(".")[0])
    if match is None:
        raise ConfigError(
            f"cluster.pod_identity: cannot take an ordinal from {name!r} ({source}); expected"
            " a StatefulSet pod name like 'felix-0'"
        )
    return int(match.group(1)) + base


def resolve_cluster(config: NodeConfig, env: Mapping[str, str]) -> NodeConfig:
    """Fill peers and the advertised address from ``cluster.peer_template``, and the
    ``{node_id}`` placeholder of the TLS file names; check the bootstrap is coherent."""
    cluster = config.cluster
    namespace = env.get(POD_NAMESPACE_ENV, "default")
    peers = dict(config.peers)
    advertise = cluster.advertise_peer
    if cluster.peer_template:
        members = set(cluster.initial_members) | {config.node_id}
        for member in sorted(members):
            address = _peer_from_template(cluster.peer_template, member, namespace)
            if member == config.node_id:
                advertise = advertise or str(address)
            else:
                peers.setdefault(member, address)
    if advertise:
        try:
            parse_endpoint(advertise)
        except ValueError as exc:
            raise ConfigError(f"invalid cluster.advertise_peer = {advertise!r}: {exc}") from None
    elif config.listen.peer.host not in ("0.0.0.0", "::", ""):
        advertise = str(config.listen.peer)
    if cluster.initial_members:
        if config.node_id in cluster.initial_members:
            missing = [m for m in cluster.initial_members if m != config.node_id and m not in peers]
            if missing:
                raise ConfigError(
                    f"cluster.initial_members: no peer address for node(s) "
                    f"{', '.join(map(str, missing))}; set peers or cluster.peer_template"
                )
        elif not peers:
            raise ConfigError(
                f"node {config.node_id} is not one of cluster.initial_members and knows no"
                " member to ask to join; set peers or cluster.peer_template"
            )
    tls = dataclasses.replace(
        config.tls,
        cert=config.tls.cert.replace("{node_id}", str(config.node_id)),
        key=config.tls.key.replace("{node_id}", str(config.node_id)),
    )
    return dataclasses.replace(
        config,
        peers=peers,
        tls=tls,
        cluster=dataclasses.replace(cluster, advertise_peer=advertise),
    )


def _peer_from_template(template: str, node: int, namespace: str) -> Endpoint:
    try:
        text = template.format(ordinal=node - 1, id=node, namespace=namespace)
        return parse_endpoint(text)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"invalid cluster.peer_template = {template!r}: {exc!r}; it may use {{ordinal}},"
            " {id} and {namespace} and must give 'host:port'"
        ) from None


# Variables with the prefix that are not config keys (used by tests and tools).
_IGNORED_ENV = frozenset(
    {
        "FELIX_SIM_SEED",
        "FELIX_LOG_COLOR",
        "FELIX_KEEPALIVE_SOAK_S",
        "FELIX_CA",  # client credentials (felix ctl / status), not node settings
        "FELIX_TOKEN",
        "FELIX_RACK",  # the broker agent's rack
        "FELIX_PROTOCOL_NEXT",  # test-only: the synthetic next protocol version
    }
)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fp:
            return tomllib.load(fp)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _flatten(table: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, _Raw]:
    flat: dict[str, _Raw] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "peers":
            flat.update(_flatten(value, source, dotted + "."))
        else:
            flat[dotted] = _Raw(value, source)
    return flat


def _build(cls: type, layers: dict[str, _Raw], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    mine = {k: v for k, v in layers.items() if k.startswith(prefix)}
    kwargs: dict[str, Any] = {}
    for name in fields:
        dotted = prefix + name
        hint = hints[name]
        if _is_section(hint):
            kwargs[name] = _build(hint, mine, dotted + ".")
        elif dotted in mine:
            raw = mine[dotted]
            kwargs[name] = _convert(hint, raw, dotted)
    return cls(**kwargs)


def _is_section(hint: Any) -> bool:
    """A nested table of settings (a dataclass other than a value type like Endpoint)."""
    return dataclasses.is_dataclass(hint) and hint is not Endpoint


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if _is_section(hint):
            keys += _all_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys(NodeConfig), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _convert(hint: Any, raw: _Raw, key: str) -> Any:
    value = raw.value
    where = f"{key} = {value!r} (from {raw.source})"
    try:
        if hint is bool:
            return _to_bool(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError("a boolean is not an integer")
            return int(value) if isinstance(value, (int, str)) else _fail("an integer")
        if hint is str:
            return value if isinstance(value, str) else _fail("a string")
        if hint is Path:
            return Path(value) if isinstance(value, str) else _fail("a path string")
        if hint is Endpoint:
            return parse_endpoint(value)
        if typing.get_origin(hint) in (Mapping, dict):
            return parse_peers(value)
        if typing.get_origin(hint) is tuple:
            return parse_node_ids(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid {where}: {exc}") from None
    raise ConfigError(f"invalid {where}: unsupported setting type")  # pragma: no cover


def _fail(expected: str) -> Any:
    raise ValueError(f"expected {expected}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_endpoint(value: Any) -> Endpoint:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected 'host:port'")
    host, _, port_text = value.rpartition(":")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return Endpoint(host.strip("[]") or "127.0.0.1", port)


def parse_node_ids(value: Any) -> tuple[int, ...]:
    """``[1, 2, 3]`` (TOML) or ``"1,2,3"`` (env, flags)."""
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list):
        raise ValueError("expected a list of node ids")
    ids: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"{item!r} is not a node id")
        ids.append(int(item))
    return tuple(ids)


def parse_peers(value: Any) -> dict[int, Endpoint]:
    """``{"2": "host:port"}`` (TOML table) or ``"2=host:port,3=host:port"`` (env, flags)."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("expected 'id=host:port,id=host:port'")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise ValueError("expected a table of node id = 'host:port'")
    peers: dict[int, Endpoint] = {}
    for node, address in value.items():
        node_id = int(node)
        if node_id < 1:
            raise ValueError(f"peer id {node_id} must be >= 1")
        peers[node_id] = parse_endpoint(address)
    return peers


# --- client credentials (felix ctl, felix status, ...) ----------------------------------

DEV_DATA_DIR = Path("./felix-data")  # where `felix dev` keeps its CA and admin token


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What a command-line client presents: a bearer token and the CA it trusts
    (None: plaintext, for a cluster run with ``--insecure``)."""

    token: str = ""
    ca: Path | None = None
    source: str = "none"  # where they came from, for error messages


def client_credentials(
    token: str | None = None,
    ca: str | None = None,
    env: Mapping[str, str] | None = None,
    dev_dir: Path = DEV_DATA_DIR,
) -> ClientCredentials:
    """Flags first, then ``FELIX_TOKEN`` / ``FELIX_CA``, then the files `felix dev`
    wrote in ``dev_dir`` (``admin-token``, ``tls/ca.crt``), so the quick start needs no
    flags.  A token flag or variable may name a file with ``@path``."""
    env = os.environ if env is None else env
    source = "flags"
    token = token if token is not None else env.get("FELIX_TOKEN")
    ca = ca if ca is not None else env.get("FELIX_CA")
    if token is None and ca is None:
        source = f"{dev_dir} (felix dev)"
        token_file, ca_file = dev_dir / "admin-token", dev_dir / "tls" / "ca.crt"
        token = f"@{token_file}" if token_file.exists() else None
        ca = str(ca_file) if ca_file.exists() else None
    elif "FELIX_TOKEN" in env or "FELIX_CA" in env:
        source = "FELIX_TOKEN / FELIX_CA"
    if token is not None and token.startswith("@"):
        try:
            token = Path(token[1:]).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the token file {token[1:]}: {exc}") from None
    return ClientCredentials(token or "", Path(ca) if ca else None, source)
