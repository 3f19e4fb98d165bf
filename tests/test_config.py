"""Configuration precedence and validation: every error names the key and the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from felix.config import ConfigError, Endpoint, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "felix.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(env={})
    assert config.node_id == 1
    assert config.raft.election_ticks == 8
    assert config.peers == {}


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
node_id = 2
cluster_id = "prod"
[raft]
election_ticks = 12
heartbeat_ticks = 3
[peers]
1 = "10.0.0.1:7001"
3 = "10.0.0.3:7001"
""",
    )
    config = load_config(path, env={})
    assert (config.node_id, config.cluster_id, config.raft.election_ticks) == (2, "prod", 12)
    assert config.peers == {1: Endpoint("10.0.0.1", 7001), 3: Endpoint("10.0.0.3", 7001)}

    env = {"FELIX_RAFT__ELECTION_TICKS": "20", "FELIX_CLUSTER_ID": "env", "PATH": "/bin"}
    config = load_config(path, env=env)
    assert (config.cluster_id, config.raft.election_ticks, config.raft.heartbeat_ticks) == (
        "env",
        20,
        3,
    )

    config = load_config(path, env=env, overrides={"raft.election_ticks": "30"})
    assert config.raft.election_ticks == 30
    assert config.cluster_id == "env"


def test_peers_and_endpoints_from_strings() -> None:
    config = load_config(
        env={"FELIX_PEERS": "2=127.0.0.1:7002, 3=[::1]:7003", "FELIX_LISTEN__OPS": ":9100"}
    )
    assert config.peers == {2: Endpoint("127.0.0.1", 7002), 3: Endpoint("::1", 7003)}
    assert config.listen.ops == Endpoint("127.0.0.1", 9100)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[raft]\nelecton_ticks = 5\n", "unknown key 'raft.electon_ticks' (from"),
        ("[raft]\nelecton_ticks = 5\n", "did you mean 'raft.election_ticks'?"),
        ("nodeid = 5\n", "unknown key 'nodeid'"),
        ("node_id = 'two'\n", "invalid node_id = 'two'"),
        ("node_id = true\n", "a boolean is not an integer"),
        ("[raft]\npre_vote = 'maybe'\n", "invalid raft.pre_vote = 'maybe'"),
        ("[listen]\npeer = 'nohost'\n", "invalid listen.peer = 'nohost'"),
        ("[listen]\npeer = 'h:70000'\n", "port 70000 out of range"),
        ("node_id = 0\n", "node_id: must be >= 1"),
        ("[peers]\n1 = '127.0.0.1:1'\n", "peers: must not list this node's own id"),
        ("[raft]\nelection_ticks = 2\nheartbeat_ticks = 1\n", "more than twice"),
        ("[log]\nformat = 'xml'\n", "log.format"),
        ("node_id = \n", "is not valid TOML"),
        ("[limits]\npeer_send_queue_max = 0\n", "limits.peer_send_queue_max: must be >= 1"),
        ("[limits]\nproposal_timeout_ms = -5\n", "limits.proposal_timeout_ms: must be >= 1"),
        ("[limits]\nframe_bytes_max = 1000\n", "limits.frame_bytes_max: must be >= 65536"),
        ("[limits]\nframe_bytes_max = 4294967296\n", "and < 2**32"),
        ("[watch]\nkeepalive_interval_ms = 50\n", "watch.keepalive_interval_ms: must be >= 100"),
        ("[watch]\nkeepalive_interval_ms = 99999999\n", "and <= 3600000 (an hour)"),
        (
            "[watch]\nsubscriber_lag_versions_max = 0\n",
            "watch.subscriber_lag_versions_max: must be >= 1",
        ),
        (
            "[watch]\nsnapshot_cache_bytes_max = -1\n",
            "watch.snapshot_cache_bytes_max: must be >= 0",
        ),
        ("[watch]\nsnapshot_cache_ttl_ms = -1\n", "watch.snapshot_cache_ttl_ms: must be >= 0"),
        ("[watch]\nsnapshot_cache_ttl_ms = 3600001\n", "and <= 3600000 (an hour)"),
        ("[watch]\nsnapshot_sends_max = 0\n", "watch.snapshot_sends_max: must be >= 1"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert message in str(info.value)


def test_bad_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"from FELIX_RAFT__TICK_MS"):
        load_config(env={"FELIX_RAFT__TICK_MS": "fast"})
    with pytest.raises(ConfigError, match=r"unknown key 'raft.tik_ms' \(from FELIX_RAFT__TIK_MS\)"):
        load_config(env={"FELIX_RAFT__TIK_MS": "5"})


def test_the_next_protocol_switch_is_not_a_config_key() -> None:
    """``FELIX_PROTOCOL_NEXT=1`` (felix.proto.versions, tests only) shares the prefix: a
    node started with it must not refuse it as an unknown key (the rolling upgrade)."""
    assert load_config(env={"FELIX_PROTOCOL_NEXT": "1"}) == load_config(env={})


def test_watch_bounds_of_their_own() -> None:
    """The slow-subscriber bound and the keepalive interval are settings of their own: a
    short history does not shorten the subscriber bound, and both reach the node."""
    from felix.server.app import hub_limits_for, serve_limits_for

    config = load_config(
        env={"FELIX_WATCH__HISTORY_VERSIONS_MAX": "10"},
        overrides={"watch.keepalive_interval_ms": "1500"},
    )
    assert config.watch.subscriber_lag_versions_max == 100_000
    limits = hub_limits_for(config)
    assert (limits.history_versions_max, limits.subscriber_lag_versions_max) == (10, 100_000)
    assert serve_limits_for(config).keepalive_interval_s == 1.5
    defaults = serve_limits_for(load_config(env={}))
    assert defaults.keepalive_interval_s == 10.0


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Path("/nonexistent/felix.toml"), env={})


POD_TOML = """
cluster_id = "prod"
[cluster]
pod_identity = true
initial_members = [1, 2, 3]
peer_template = "felix-{ordinal}.felix-peers.{namespace}.svc.cluster.local:7001"
[tls]
ca = "/etc/felix/tls/ca.crt"
cert = "/etc/felix/tls/node-{node_id}.crt"
key = "/etc/felix/tls/node-{node_id}.key"
"""


def test_one_file_serves_every_pod_of_the_statefulset(tmp_path: Path) -> None:
    path = write(tmp_path, POD_TOML)
    env = {"POD_NAME": "felix-2", "POD_NAMESPACE": "streaming"}
    config = load_config(path, env=env)
    assert config.node_id == 3
    host = "felix-{}.felix-peers.streaming.svc.cluster.local"
    assert config.peers == {1: Endpoint(host.format(0), 7001), 2: Endpoint(host.format(1), 7001)}
    assert config.cluster.advertise_peer == f"{host.format(2)}:7001"
    assert config.cluster.initial_members == (1, 2, 3)
    assert config.tls.cert == "/etc/felix/tls/node-3.crt"
    assert config.tls.key == "/etc/felix/tls/node-3.key"
    # A fourth pod is not an initial member: it knows them all, to ask to join.
    fourth = load_config(path, env={"POD_NAME": "felix-3", "POD_NAMESPACE": "streaming"})
    assert fourth.node_id == 4 and sorted(fourth.peers) == [1, 2, 3]
    assert fourth.cluster.advertise_peer == f"{host.format(3)}:7001"


def test_initial_members_from_env_and_flags(tmp_path: Path) -> None:
    env = {"FELIX_CLUSTER__INITIAL_MEMBERS": "1, 2,3", "FELIX_PEERS": "2=a:1,3=b:1"}
    assert load_config(env=env).cluster.initial_members == (1, 2, 3)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POD_NAME": "felix"}, "cannot take an ordinal from 'felix' (POD_NAME)"),
        ({"POD_NAME": "felix-x"}, "expected a StatefulSet pod name like 'felix-0'"),
        (
            {"POD_NAME": "felix-0", "FELIX_NODE_ID": "1"},
            "node_id (from FELIX_NODE_ID) and cluster.pod_identity are both set",
        ),
        (
            {"POD_NAME": "felix-0", "FELIX_CLUSTER__PEER_TEMPLATE": "felix-{oops}:7001"},
            "invalid cluster.peer_template",
        ),
        (
            {"POD_NAME": "felix-0", "FELIX_CLUSTER__PEER_TEMPLATE": "felix-{ordinal}"},
            "must give 'host:port'",
        ),
        (
            {"POD_NAME": "felix-0", "FELIX_CLUSTER__INITIAL_MEMBERS": "1,1,2"},
            "cluster.initial_members: lists a node twice",
        ),
        ({"POD_NAME": "felix-0", "FELIX_RAFT__VOTERS_MAX": "4"}, "raft.voters_max: must be odd"),
        (
            {"POD_NAME": "felix-0", "FELIX_CLUSTER__INITIAL_MEMBERS": "1,two"},
            "invalid cluster.initial_members = '1,two'",
        ),
    ],
)
def test_pod_identity_errors_name_the_key_and_the_value(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    path = write(tmp_path, POD_TOML)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert message in str(info.value)


def test_bootstrap_must_know_where_the_members_are() -> None:
    env = {"FELIX_CLUSTER__INITIAL_MEMBERS": "1,2,3", "FELIX_PEERS": "2=a:1"}
    with pytest.raises(ConfigError, match=r"no peer address for node\(s\) 3"):
        load_config(env=env)
    env = {"FELIX_NODE_ID": "4", "FELIX_CLUSTER__INITIAL_MEMBERS": "1,2,3"}
    with pytest.raises(ConfigError, match="knows no member to ask to join"):
        load_config(env=env)


def test_snapshot_cache_settings_reach_the_hub() -> None:
    from felix.server.app import hub_limits_for

    config = load_config(
        env={"FELIX_WATCH__SNAPSHOT_SENDS_MAX": "3"},
        overrides={"watch.snapshot_cache_ttl_ms": "2500", "watch.snapshot_cache_bytes_max": "0"},
    )
    snapshots = hub_limits_for(config).snapshot_limits()
    assert (snapshots.sends_max, snapshots.ttl_s, snapshots.bytes_max) == (3, 2.5, 0)
    defaults = hub_limits_for(load_config(env={})).snapshot_limits()
    assert (defaults.sends_max, defaults.ttl_s, defaults.bytes_max) == (16, 5.0, 256 << 20)


def test_an_observer_pod_takes_its_id_from_its_base_and_joins_the_initial_members(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, POD_TOML)
    env = {
        "POD_NAME": "felix-observer-1",
        "POD_NAMESPACE": "streaming",
        "FELIX_CLUSTER__ROLE": "observer",
        "FELIX_CLUSTER__NODE_ID_BASE": "101",
        "FELIX_CLUSTER__ADVERTISE_PEER": "felix-observer-1.felix-observer-peers:7001",
    }
    config = load_config(path, env=env)
    assert config.node_id == 102 and config.cluster.role == "observer"
    assert sorted(config.peers) == [1, 2, 3]
    assert config.cluster.advertise_peer == "felix-observer-1.felix-observer-peers:7001"
    assert load_config(path, env={"POD_NAME": "felix-1"}).cluster.role == "voter"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FELIX_CLUSTER__ROLE": "witness"}, "cluster.role: 'witness' is not one of voter"),
        (
            {"FELIX_CLUSTER__NODE_ID_BASE": "0", "POD_NAME": "felix-5"},
            "cluster.node_id_base: must be >= 1",
        ),
        (
            {"FELIX_CLUSTER__ROLE": "observer", "POD_NAME": "felix-0"},
            "cluster.role = observer: node 1 is one of cluster.initial_members",
        ),
    ],
)
def test_role_errors_name_the_key_and_the_value(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    path = write(tmp_path, POD_TOML)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"POD_NAME": "felix-0", **env})
    assert message in str(info.value)
