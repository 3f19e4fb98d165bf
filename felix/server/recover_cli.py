"""``felix recover --force-new-cluster``: quorum-loss recovery of a stopped node's data
directory (`felix.server.recover`; the runbook is README.md, "Backup and recovery")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from felix.config import ConfigError, load_config


def register(subparsers: Any) -> None:
    recover = subparsers.add_parser(
        "recover",
        help="quorum loss: make a stopped survivor a one-node cluster (--force-new-cluster)",
        description=(
            "Rewrite a STOPPED node's data directory so that it starts as a one-node"
            " cluster holding everything its log holds (committed or not); the other nodes"
            " then rejoin with wiped data dirs through `felix member add`.  Use only when a"
            " majority of the voters is lost for good (README.md, 'Backup and recovery')."
        ),
    )
    recover.add_argument(
        "--force-new-cluster",
        action="store_true",
        help="required: say that this node is to carry on alone",
    )
    recover.add_argument("--config", type=Path, help="the node's TOML config (as for serve)")
    recover.add_argument("--node-id", help="this node's id (config: node_id)")
    recover.add_argument("--data-dir", help="its data directory (config: data_dir)")
    recover.add_argument(
        "--peers", help="the old peers, as for serve (default: the config's; used to fence them)"
    )
    recover.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key"
    )
    recover.add_argument(
        "--dry-run", action="store_true", help="check and say what would be done; write nothing"
    )
    recover.add_argument("-o", "--output", choices=("text", "json"), default="text")
    recover.set_defaults(handler=run_recover)


def _refuse(message: str) -> int:
    print(f"felix recover: refusing: {message}", file=sys.stderr)
    return 2


def run_recover(args: argparse.Namespace) -> int:
    if not args.force_new_cluster:
        return _refuse(
            "say --force-new-cluster: the only recovery is to make this node a one-node"
            " cluster (see `felix recover --help`)"
        )
    if args.config is None and (args.node_id is None or args.data_dir is None):
        return _refuse("give --config, or both --node-id and --data-dir (no defaults here)")
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            return _refuse(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = value
    flags = {"node_id": args.node_id, "data_dir": args.data_dir, "peers": args.peers}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        return _refuse(f"invalid configuration: {exc}")
    from felix.server.recover import RecoveryRefused, force_new_cluster

    peers_known = args.config is not None or args.peers is not None or "peers" in overrides
    try:
        recovery = force_new_cluster(
            config.data_dir,
            config.node_id,
            peers=list(config.peers) if peers_known else None,
            snapshots_keep=config.snapshot.keep,
            dry_run=args.dry_run,
        )
    except RecoveryRefused as exc:
        return _refuse(str(exc))
    except OSError as exc:
        return _refuse(f"{config.data_dir}: {exc}")
    if args.output == "json":
        payload = {
            "node_id": recovery.node_id,
            "data_dir": str(recovery.data_dir),
            "done": recovery.done,
            "note": recovery.note,
            "index": recovery.index,
            "entry_term": recovery.entry_term,
            "commit_before": recovery.commit,
            "snapshot_before": recovery.snapshot_index,
            "term_before": recovery.old_term,
            "term": recovery.new_term,
            "voters": [recovery.node_id],
            "previous": None
            if recovery.previous is None
            else {"voters": recovery.previous.voters, "learners": recovery.previous.learners},
            "snapshot_file": recovery.snapshot_file,
        }
        print(json.dumps(payload))
    else:
        print("\n".join(recovery.lines()))
    return 0
