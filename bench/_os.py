"""What every bench process needs from the OS: enough descriptors, and a process's CPU."""

from __future__ import annotations

import os
import resource


def raise_fd_limit() -> None:
    """Lift the soft descriptor limit to the hard one (at most 65,536): each broker or
    subscriber costs a descriptor or three."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def pid_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``, in
    clock ticks: 10 ms here)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
