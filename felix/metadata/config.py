"""Typed cluster configuration keys with defaults and validation.

Only keys explicitly set appear as ``config`` records; every other key has the default
below, which brokers read from `CONFIG_SPECS` (the code is the default's source of
truth, so a default never needs a log entry).  ``set_config`` with value None removes
the record, i.e. reverts the key to its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from felix.metadata.errors import rejected

ConfigValue = int | bool | str

DAY_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class ConfigSpec:
    """One key: its type, default and (for ints) inclusive range."""

    name: str
    kind: type
    default: ConfigValue
    lo: int = 0
    hi: int = 0
    doc: str = ""


CONFIG_SPECS: Final[Mapping[str, ConfigSpec]] = {
    spec.name: spec
    for spec in (
        ConfigSpec(
            "retention_ms_default",
            int,
            7 * DAY_MS,
            1,
            3650 * DAY_MS,
            "retention of streams created without retention_ms",
        ),
        ConfigSpec(
            "replication_factor_default",
            int,
            3,
            1,
            16,
            "replication factor of streams created without one",
        ),
        ConfigSpec("streams_max", int, 10_000, 0, 1_000_000, "streams in the cluster"),
        ConfigSpec("shards_per_stream_max", int, 10_000, 1, 100_000, "shards per stream"),
        ConfigSpec("shards_per_node_max", int, 50_000, 1, 1_000_000, "replicas placed on one node"),
        ConfigSpec("max_message_bytes", int, 1 << 20, 1, 64 << 20, "brokers refuse larger"),
        ConfigSpec("rack_aware_placement", bool, True, doc="spread replicas across racks"),
        ConfigSpec("allow_stream_deletion", bool, True, doc="delete_stream is permitted"),
        ConfigSpec(
            "rack_aware_placement_strict",
            bool,
            False,
            doc="refuse a create or grow that cannot put every replica in its own rack",
        ),
        ConfigSpec(
            "min_live_replicas",
            int,
            2,
            1,
            16,
            "live caught-up replicas a drain or 'down' must leave (at most RF - 1, at least 1)",
        ),
        ConfigSpec(
            "replica_down_timeout_s",
            int,
            600,
            1,
            30 * 86_400,
            "a broker down this long has its replicas re-replicated",
        ),
        ConfigSpec("moves_per_node_max", int, 2, 1, 10_000, "reassignments touching one broker"),
        ConfigSpec("moves_cluster_max", int, 64, 1, 100_000, "reassignments in the cluster"),
        ConfigSpec(
            "replica_skew_max",
            int,
            2,
            1,
            1_000_000,
            "most minus fewest replicas across brokers that the planner tolerates",
        ),
        ConfigSpec(
            "leader_skew_max",
            int,
            2,
            1,
            1_000_000,
            "most minus fewest leaderships across brokers that the planner tolerates",
        ),
        ConfigSpec(
            "leader_moves_per_pass_max",
            int,
            64,
            0,
            100_000,
            "preferred-leader and leader-balance moves in one planner pass",
        ),
        ConfigSpec("auto_rebalance", bool, True, doc="the leader runs the planner by itself"),
        ConfigSpec(
            "rebalance_interval_s", int, 300, 1, 86_400, "the leader's periodic planner pass"
        ),
    )
}


def validate_config(name: str, value: object) -> ConfigValue | None:
    """Check ``value`` for key ``name``; None (revert to default) is always valid."""
    spec = CONFIG_SPECS.get(name)
    if spec is None:
        raise rejected(f"unknown config key {name!r} (known: {', '.join(sorted(CONFIG_SPECS))})")
    if value is None:
        return None
    if type(value) is not spec.kind:
        raise rejected(f"config {name} takes a {spec.kind.__name__}, got {type(value).__name__}")
    if spec.kind is int:
        assert isinstance(value, int)
        if not spec.lo <= value <= spec.hi:
            raise rejected(f"config {name}={value} is out of range [{spec.lo}, {spec.hi}]")
    assert isinstance(value, (int, bool, str))
    return value


def config_int(values: Mapping[str, ConfigValue], name: str) -> int:
    """The effective value of an int key (set value or default)."""
    value = values.get(name, CONFIG_SPECS[name].default)
    assert type(value) is int, name
    return value


def config_bool(values: Mapping[str, ConfigValue], name: str) -> bool:
    """The effective value of a bool key (set value or default)."""
    value = values.get(name, CONFIG_SPECS[name].default)
    assert type(value) is bool, name
    return value
