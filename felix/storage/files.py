"""The file-system seam: the handful of operations the WAL and snapshot store use.

Everything durable goes through a `Files`, so tests can swap the real disk (`OsFiles`) for
`MemoryFiles`, a simulated disk that keeps a volatile cache apart from what is durable and
can inject faults: crash after the n-th write/fsync call, short writes, a failing fsync,
and after a crash a torn (prefix-only) tail of unsynced appends.  The crash rules
(docs/architecture.md §4): data is durable only after ``fsync`` of the file, a create,
rename or remove only after ``fsync_dir`` of its directory.
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
from dataclasses import dataclass, field
from typing import Literal, Protocol


class Files(Protocol):
    """Path-based file operations; append-only writes plus whole-file truncation."""

    def makedirs(self, directory: str) -> None: ...
    def listdir(self, directory: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def size(self, path: str) -> int: ...
    def read(self, path: str) -> bytes: ...
    def read_range(self, path: str, offset: int, size: int) -> bytes: ...
    def create(self, path: str) -> None: ...
    def append(self, path: str, data: bytes | memoryview) -> int: ...
    def fsync(self, path: str) -> None: ...
    def fsync_dir(self, directory: str) -> None: ...
    def truncate(self, path: str, size: int) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def close(self) -> None: ...


def append_all(files: Files, path: str, data: bytes) -> None:
    """Append every byte of ``data``, looping over short writes."""
    written = files.append(path, data)
    if written == len(data):  # the usual case: one write
        return
    if written <= 0:
        raise OSError(errno.EIO, f"append to {path} wrote nothing")
    view = memoryview(data)[written:]
    while view:
        written = files.append(path, view)
        if written <= 0:
            raise OSError(errno.EIO, f"append to {path} wrote nothing")
        view = view[written:]


class OsFiles:
    """The real disk.  Append descriptors are cached per path; ``fsync`` is ``fdatasync``
    where the platform has it (it also flushes the file size, which is all an append
    changes), ``fsync_dir`` makes creates, renames and removes durable."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def makedirs(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)

    def listdir(self, directory: str) -> list[str]:
        return sorted(os.listdir(directory))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def create(self, path: str) -> None:
        self._drop(path)
        self._fds[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)

    def append(self, path: str, data: bytes | memoryview) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND)
        return os.write(fd, data)

    def fsync(self, path: str) -> None:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND)
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover - macOS
            os.fsync(fd)

    def fsync_dir(self, directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate(self, path: str, size: int) -> None:
        os.truncate(path, size)

    def rename(self, src: str, dst: str) -> None:
        self._drop(src)
        self._drop(dst)
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        self._drop(path)
        os.remove(path)

    def close(self) -> None:
        for path in list(self._fds):
            self._drop(path)

    def _drop(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)


# ---------------------------------------------------------------------------------------
# The simulated disk


class SimulatedCrash(Exception):
    """The simulated machine lost power; the disk refuses service until `crash()`."""


@dataclass(slots=True, eq=False)
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""


UnsyncedMode = Literal["lose", "keep", "torn"]


class MemoryFiles:
    """A simulated disk: a volatile view (what reads see) over a durable image.

    Faults: ``crash_at_op=n`` performs the n-th mutating call (create, append, fsync,
    fsync_dir, truncate, rename, remove) and then raises `SimulatedCrash`;
    ``write_bytes_max`` makes appends short; ``fail_fsync_at_op`` makes that call raise
    EIO without making anything durable.  `crash` then rebuilds the view from the durable
    image, optionally keeping a prefix of each file's unsynced appended bytes.
    """

    def __init__(
        self,
        *,
        crash_at_op: int | None = None,
        write_bytes_max: int | None = None,
        fail_fsync_at_op: int | None = None,
    ) -> None:
        self.crash_at_op = crash_at_op
        self.write_bytes_max = write_bytes_max
        self.fail_fsync_at_op = fail_fsync_at_op
        self.ops = 0
        self.crashed = False
        self._dirs: set[str] = {"/"}
        self._names: dict[str, _Inode] = {}
        self._durable_names: dict[str, _Inode] = {}

    # -- reads ---------------------------------------------------------------------------

    def makedirs(self, directory: str) -> None:
        self._check_up()
        path = _norm(directory)
        while path not in self._dirs:
            self._dirs.add(path)
            path = posixpath.dirname(path)

    def listdir(self, directory: str) -> list[str]:
        self._check_up()
        directory = _norm(directory)
        if directory not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", directory)
        names = [posixpath.basename(p) for p in self._names if posixpath.dirname(p) == directory]
        names += [posixpath.basename(d) for d in self._dirs if posixpath.dirname(d) == directory]
        return sorted(n for n in names if n)

    def exists(self, path: str) -> bool:
        return _norm(path) in self._names or _norm(path) in self._dirs

    def size(self, path: str) -> int:
        return len(self._inode(path).data)

    def read(self, path: str) -> bytes:
        self._check_up()
        return bytes(self._inode(path).data)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        self._check_up()
        return bytes(self._inode(path).data[offset : offset + size])

    # -- writes --------------------------------------------------------------------------

    def create(self, path: str) -> None:
        self._check_up()
        path = _norm(path)
        if posixpath.dirname(path) not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        self._names[path] = _Inode()
        self._done()

    def append(self, path: str, data: bytes | memoryview) -> int:
        self._check_up()
        inode = self._inode(path)
        count = len(data) if self.write_bytes_max is None else min(len(data), self.write_bytes_max)
        inode.data += data[:count]
        self._done()
        return count

    def fsync(self, path: str) -> None:
        self._check_up()
        inode = self._inode(path)
        if self._fsync_fails():
            raise OSError(errno.EIO, "simulated fsync failure", path)
        inode.durable = bytes(inode.data)
        self._done()

    def fsync_dir(self, directory: str) -> None:
        self._check_up()
        directory = _norm(directory)
        if self._fsync_fails():
            raise OSError(errno.EIO, "simulated fsync failure", directory)
        for path in [p for p in self._durable_names if posixpath.dirname(p) == directory]:
            del self._durable_names[path]
        for path, inode in self._names.items():
            if posixpath.dirname(path) == directory:
                self._durable_names[path] = inode
        self._done()

    def truncate(self, path: str, size: int) -> None:
        self._check_up()
        del self._inode(path).data[size:]
        self._done()

    def rename(self, src: str, dst: str) -> None:
        self._check_up()
        inode = self._inode(src)
        del self._names[_norm(src)]
        self._names[_norm(dst)] = inode
        self._done()

    def remove(self, path: str) -> None:
        self._check_up()
        self._inode(path)
        del self._names[_norm(path)]
        self._done()

    def close(self) -> None:
        """Nothing to release; a closed simulated disk stays readable."""

    # -- faults --------------------------------------------------------------------------

    def crash(
        self,
        unsynced: UnsyncedMode = "lose",
        *,
        torn_bytes: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Power loss, then reboot.  ``lose``: only durable data and names survive.
        ``keep``: everything written survives (the OS flushed in time).  ``torn``: names
        as last written, and each file keeps a prefix of its unsynced appended bytes --
        ``torn_bytes`` of them, or a random count drawn from ``rng``, or half."""
        if unsynced == "keep":
            for inode in self._names.values():
                inode.durable = bytes(inode.data)
            self._durable_names = dict(self._names)
        elif unsynced == "torn":
            for inode in self._names.values():
                inode.durable = _torn(inode, torn_bytes, rng)
            self._durable_names = dict(self._names)
        self._names = dict(self._durable_names)
        for inode in self._names.values():
            inode.data = bytearray(inode.durable)
        self.crashed = False
        self.crash_at_op = None
        self.fail_fsync_at_op = None

    def flip_bit(self, path: str, offset: int, bit: int = 0) -> None:
        """Bit rot: flip one bit of a file, durably."""
        inode = self._inode(path)
        inode.data[offset] ^= 1 << bit
        durable = bytearray(inode.durable)
        if offset < len(durable):
            durable[offset] ^= 1 << bit
        inode.durable = bytes(durable)

    def cut(self, path: str, size: int) -> None:
        """A file cut short on disk (lost blocks), durably."""
        inode = self._inode(path)
        del inode.data[size:]
        inode.durable = inode.durable[:size]

    def lose(self, path: str) -> None:
        """A file gone from disk (deleted by hand, lost directory block), durably."""
        self._inode(path)
        del self._names[_norm(path)]
        self._durable_names.pop(_norm(path), None)

    def _inode(self, path: str) -> _Inode:
        inode = self._names.get(_norm(path))
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return inode

    def _check_up(self) -> None:
        if self.crashed:
            raise SimulatedCrash("the simulated disk is down until crash() reboots it")

    def _fsync_fails(self) -> bool:
        if self.fail_fsync_at_op is not None and self.ops + 1 == self.fail_fsync_at_op:
            self.ops += 1
            return True
        return False

    def _done(self) -> None:
        self.ops += 1
        if self.crash_at_op is not None and self.ops >= self.crash_at_op:
            self.crashed = True
            raise SimulatedCrash(f"simulated crash after storage operation {self.ops}")


def _torn(inode: _Inode, torn_bytes: int | None, rng: random.Random | None) -> bytes:
    data, durable = bytes(inode.data), inode.durable
    if not data.startswith(durable):
        return durable  # truncated since the last fsync: the truncation is lost
    extra = len(data) - len(durable)
    if torn_bytes is not None:
        keep = min(extra, torn_bytes)
    elif rng is not None:
        keep = rng.randint(0, extra)
    else:
        keep = extra // 2
    return data[: len(durable) + keep]


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))
