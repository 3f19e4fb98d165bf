"""The ``cluster-id`` file of a data directory: which cluster its log belongs to
(docs/architecture.md §14).

Written at a node's first start (or by ``felix snapshot restore``) and checked at every
start after: a node configured with another cluster id refuses to start instead of
joining, with this log, a cluster it was never part of (a restored cluster's old
members, a data dir moved to the wrong pod).
"""

from __future__ import annotations

import posixpath
from typing import Final

from felix.storage.files import Files, OsFiles, append_all

CLUSTER_MARKER: Final = "cluster-id"
CLUSTER_ID_BYTES_MAX: Final = 256


class ClusterMismatch(Exception):
    pass


def read_cluster_marker(directory: str, files: Files | None = None) -> str | None:
    files = files if files is not None else OsFiles()
    path = posixpath.join(directory, CLUSTER_MARKER)
    if not files.exists(path):
        return None
    data = files.read(path)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ClusterMismatch(f"{path}: not a cluster id (not UTF-8)") from None
    if not text or len(data) > CLUSTER_ID_BYTES_MAX:
        raise ClusterMismatch(f"{path}: empty or too long for a cluster id")
    return text


def write_cluster_marker(directory: str, cluster_id: str, files: Files | None = None) -> None:
    """Atomically and durably (temp file, fsync, rename, fsync the directory)."""
    files = files if files is not None else OsFiles()
    path = posixpath.join(directory, CLUSTER_MARKER)
    temp = path + ".tmp"
    if files.exists(temp):
        files.remove(temp)
    files.create(temp)
    append_all(files, temp, cluster_id.encode("utf-8") + b"\n")
    files.fsync(temp)
    files.rename(temp, path)
    files.fsync_dir(directory)


def claim_data_dir(directory: str, cluster_id: str, files: Files | None = None) -> None:
    """At start: record ``cluster_id`` if the directory has none yet, else refuse a
    different one with `ClusterMismatch` naming both."""
    found = read_cluster_marker(directory, files)
    if found is None:
        write_cluster_marker(directory, cluster_id, files)
    elif found != cluster_id:
        raise ClusterMismatch(
            f"{posixpath.join(directory, CLUSTER_MARKER)}: this data directory belongs to"
            f" cluster {found!r}, the config says {cluster_id!r}; fix cluster_id, or give"
            " this node an empty data_dir to join as a new member"
        )
