"""``felix snapshot save | restore | inspect``: backups of a live cluster, a new cluster
from one, and a look inside snapshot and backup files (docs/architecture.md §14).

``save`` asks any node for the state at a linearizable version (`GetBackup`, admin
only) and writes it as one checksummed backup file, atomically.  ``restore`` turns a
backup into the data directory of one member of a **new** cluster: a new cluster id
(unless ``--cluster-id`` says otherwise) so no old member can join it by mistake, and a
new lineage so every broker that comes back takes exactly one snapshot instead of
joining two histories.  It checks everything before it writes, and writes into a
temporary directory that is renamed into place last: a refused restore leaves nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Final

import trio

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.config import ConfigError, parse_endpoint
from felix.ctl.args import common_options
from felix.ctl.errors import CtlError, core, server_error
from felix.ctl.runner import run
from felix.ctl.session import REQUEST_ID, Retry, Tries, on_some_endpoint
from felix.metadata.digest import digest_of_records
from felix.metadata.errors import SnapshotError
from felix.metadata.snapshot import DecodedSnapshot, decode_snapshot
from felix.metadata.state import MetadataState
from felix.proto.cbor import to_plain
from felix.proto.client_messages import BackupChunk, Error, ErrorCode, GetBackup
from felix.proto.errors import ProtocolError
from felix.proto.raft_messages import ConfState
from felix.raft.types import HardState
from felix.storage.backup import (
    BackupError,
    BackupMeta,
    is_backup,
    load_backup,
    write_backup,
)
from felix.storage.cluster_marker import write_cluster_marker
from felix.storage.errors import StorageError
from felix.storage.files import OsFiles
from felix.storage.segmented_wal import SyncWal
from felix.storage.snapshots import load_snapshot_file, snapshot_meta

PROGRESS_BYTES: Final = 8 << 20  # a progress line every this many bytes received
RESTORED_TERM: Final = 1  # the new cluster's log starts after (version, 1)
MEMBERS_MAX: Final = 9


def register(subparsers: Any) -> None:
    snapshot = subparsers.add_parser(
        "snapshot", help="back up a cluster, restore one, inspect snapshot and backup files"
    )
    commands = snapshot.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND")
    snapshot.set_defaults(handler=lambda _: _usage(snapshot))
    save = commands.add_parser(
        "save",
        parents=[common_options()],
        help="write the cluster's state at a linearizable version to FILE (admin)",
    )
    save.add_argument("file")
    save.set_defaults(handler=run, ctl_core=cmd_snapshot_save)
    restore = commands.add_parser(
        "restore", help="make the data directory of one member of a new cluster from FILE"
    )
    restore.add_argument("file")
    restore.add_argument("--data-dir", required=True, type=Path, help="must not exist yet")
    restore.add_argument("--node-id", required=True, type=int, help="this member's node id")
    restore.add_argument(
        "--initial-members",
        required=True,
        help="every member of the new cluster: 1=host:port,2=host:port,3=host:port",
    )
    restore.add_argument(
        "--cluster-id", help="the new cluster's id (default: <backup's id>-r<version>)"
    )
    _output(restore)
    restore.set_defaults(handler=snapshot_restore)
    inspect = commands.add_parser("inspect", help="check a snapshot or backup file, show it")
    inspect.add_argument("file")
    _output(inspect)
    inspect.set_defaults(handler=snapshot_inspect)


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _fail(command: str, message: str) -> int:
    print(f"felix snapshot {command}: {message}", file=sys.stderr)
    return 1


# --- save ------------------------------------------------------------------------------


@core
async def cmd_snapshot_save(args: argparse.Namespace) -> str:
    cluster_id, data = await fetch_backup(args)
    try:  # what was received must be what the node had: its records hash to its digest
        snap = await trio.to_thread.run_sync(verified, data)
    except SnapshotError as exc:
        raise CtlError(f"the state received is damaged, nothing written: {exc}") from None
    meta = BackupMeta(
        cluster_id, snap.version, snap.digest, snap.history, int(time.time() * 1000),
        len(data), zlib.crc32(data),
    )  # fmt: skip
    try:
        await trio.to_thread.run_sync(write_backup, args.file, meta, data)
    except OSError as exc:
        raise CtlError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    if args.output == "json":
        return json.dumps({"file": args.file, **_meta_plain(meta)}, indent=1)
    return (
        f"saved {args.file}: cluster {cluster_id}, version {meta.version},"
        f" {len(snap.records)} records, {len(snap.tokens)} tokens, {meta.size} bytes"
    )


def verified(data: bytes) -> DecodedSnapshot:
    """Decoded snapshot bytes whose records hash to the digest they carry (the full
    rebuild, with every record's checks, is `restore`'s: it costs several times more)."""
    snap = decode_snapshot(data)
    if digest_of_records(snap.records) != snap.digest:
        raise SnapshotError("its records do not hash to its digest")
    return snap


async def fetch_backup(args: argparse.Namespace) -> tuple[str, bytes]:
    """(cluster id, snapshot bytes) from some endpoint; retried elsewhere while no
    node can answer (no leader yet), never mixing chunks of two answers."""

    async def attempt(conn: ClientConnection, name: str, tries: Tries) -> tuple[str, bytes]:
        parts: list[bytes] = []
        received = shown = 0
        first: BackupChunk | None = None
        try:
            await conn.send(GetBackup(REQUEST_ID))
            while True:
                reply = await conn.receive()
                if isinstance(reply, Error) and reply.request_id in (REQUEST_ID, None):
                    if reply.code in (ErrorCode.UNAVAILABLE, ErrorCode.NOT_LEADER):
                        raise Retry(f"{reply.code.value}: {reply.detail}")
                    raise server_error(reply)
                if not isinstance(reply, BackupChunk) or reply.request_id != REQUEST_ID:
                    continue
                first = first or reply
                if reply.seq != len(parts) or (reply.cluster_id, reply.version) != (
                    first.cluster_id, first.version
                ):  # fmt: skip
                    raise CtlError(f"{name}: backup chunk {reply.seq} out of order")
                parts.append(reply.data)
                received += len(reply.data)
                if received - shown >= PROGRESS_BYTES:
                    shown = received
                    print(f"received {received >> 20} MiB", file=sys.stderr, flush=True)
                if reply.last:
                    return first.cluster_id, b"".join(parts)
        except (ConnectionClosed, ProtocolError) as exc:
            raise Retry(f"connection lost: {exc}") from None

    return await on_some_endpoint(args, attempt)


# --- restore ---------------------------------------------------------------------------


def parse_members(text: str) -> dict[int, str]:
    """``1=h:p,2=h:p`` -> {1: "h:p", 2: "h:p"}; ValueError naming the bad part."""
    members: dict[int, str] = {}
    for part in (p.strip() for p in text.split(",")):
        ident, eq, address = part.partition("=")
        try:
            node_id = int(ident)
            endpoint = parse_endpoint(address) if eq else None
        except (ValueError, ConfigError) as exc:
            raise ValueError(f"{part!r}: {exc}") from None
        if endpoint is None or node_id < 1 or node_id in members:
            raise ValueError(f"{part!r}: expected id=host:port, ids >= 1 and distinct")
        members[node_id] = f"{endpoint.host}:{endpoint.port}"
    if not 1 <= len(members) <= MEMBERS_MAX:
        raise ValueError(f"1 to {MEMBERS_MAX} members, not {len(members)}")
    return members


def lineage_of(cluster_id: str, meta: BackupMeta) -> str:
    """The restored state's lineage: the same for every member restored from one file
    with one cluster id (they must agree), new for every other restore."""
    seed = b"\0".join([cluster_id.encode(), meta.digest, str(meta.version).encode()])
    return hashlib.sha256(seed).hexdigest()[:32]


def snapshot_restore(args: argparse.Namespace) -> int:
    target: Path = args.data_dir
    try:
        members = parse_members(args.initial_members)
    except ValueError as exc:
        return _fail("restore", f"--initial-members: {exc}")
    if args.node_id not in members:
        return _fail("restore", f"--node-id {args.node_id} is not in --initial-members")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        return _fail("restore", f"{target} exists and is not empty: restore only into a new dir")
    try:
        meta, state = load_backup(args.file)
    except BackupError as exc:
        return _fail("restore", str(exc))
    cluster_id = args.cluster_id or f"{meta.cluster_id}-r{meta.version}"
    state.history = lineage_of(cluster_id, meta)
    conf = ConfState(tuple(sorted(members)), ())
    temp = target.with_name(f".{target.name}.restoring")
    try:
        if temp.exists():
            shutil.rmtree(temp)  # a restore that crashed: never used
        _write_data_dir(temp, cluster_id, conf, state)
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(temp, target)
        OsFiles().fsync_dir(str(target.parent))
    except (OSError, StorageError) as exc:
        shutil.rmtree(temp, ignore_errors=True)
        return _fail("restore", f"cannot write {target}: {exc}")
    result = {
        "data_dir": str(target), "cluster_id": cluster_id, "node_id": args.node_id,
        "version": meta.version, "members": members, "from_cluster": meta.cluster_id,
        "history": state.history,
    }  # fmt: skip
    if args.output == "json":
        print(json.dumps(result, indent=1))
        return 0
    peers = "\n".join(f'{n} = "{a}"' for n, a in sorted(members.items()) if n != args.node_id)
    print(
        f"restored version {meta.version} of cluster {meta.cluster_id} into {target}\n"
        f"new cluster {cluster_id}, members {','.join(map(str, sorted(members)))}; start this"
        f' node with:\n  cluster_id = "{cluster_id}"\n  node_id = {args.node_id}\n'
        f'  data_dir = "{target}"\n  [peers]\n  ' + peers.replace("\n", "\n  ")
    )
    return 0


def _write_data_dir(
    directory: Path, cluster_id: str, conf: ConfState, state: MetadataState
) -> None:
    """A data dir whose log starts after the restored state: the snapshot at
    (version, RESTORED_TERM) with ``conf`` as its membership, committed."""
    directory.mkdir(parents=True)
    data = state.snapshot()
    wal = SyncWal(str(directory))
    try:
        wal.open(conf)
        hard_state = HardState(RESTORED_TERM, 0, state.version)
        wal.save(hard_state, (), (snapshot_meta(state.version, RESTORED_TERM, conf, data), data))
    finally:
        wal.close()
    write_cluster_marker(str(directory), cluster_id)


# --- inspect ---------------------------------------------------------------------------


def _meta_plain(meta: BackupMeta) -> dict[str, Any]:
    plain = to_plain(meta)
    assert isinstance(plain, dict)
    return {**plain, "digest": meta.digest.hex()}


def snapshot_inspect(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.file):
        return _fail("inspect", f"no such file: {args.file}")
    with open(args.file, "rb") as f:
        head = f.read(4)
    if is_backup(head):
        return _inspect_backup(args)
    try:
        snap, _data = load_snapshot_file(OsFiles(), args.file)
    except (StorageError, OSError) as exc:
        return _fail("inspect", str(exc))
    if args.output == "json":
        print(json.dumps({"file": args.file, **to_plain(snap), "checksum": "ok"}, indent=1))
        return 0
    voters = ",".join(map(str, snap.conf.voters)) or "-"
    learners = ",".join(map(str, snap.conf.learners)) or "-"
    print(f"file:     {args.file}")
    print(f"index:    {snap.index}")
    print(f"term:     {snap.term}")
    print(f"conf:     voters={voters} learners={learners}")
    print(f"size:     {snap.size} bytes")
    print(f"crc32:    {snap.crc32:08x} (verified)")
    return 0


def _inspect_backup(args: argparse.Namespace) -> int:
    try:
        meta, state = load_backup(args.file)
    except BackupError as exc:
        return _fail("inspect", str(exc))
    kinds: dict[str, int] = {}
    for change in state.records():
        kinds[change.kind] = kinds.get(change.kind, 0) + 1
    if args.output == "json":
        info = {"file": args.file, "kind": "backup", **_meta_plain(meta), "records": kinds,
                "tokens": len(state.tokens), "checksum": "ok"}  # fmt: skip
        print(json.dumps(info, indent=1))
        return 0
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(meta.created_ms / 1000))
    print(f"file:     {args.file} (backup)")
    print(f"cluster:  {meta.cluster_id}")
    print(f"version:  {meta.version}")
    print(f"lineage:  {meta.history or '(original)'}")
    print(f"created:  {created}")
    print(f"records:  {', '.join(f'{k} {n}' for k, n in sorted(kinds.items())) or 'none'}")
    print(f"tokens:   {len(state.tokens)}")
    print(f"size:     {meta.size} bytes")
    print(f"digest:   {meta.digest.hex()} (verified)")
    return 0
