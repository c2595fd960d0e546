"""Process helpers shared by the supervisor and the workers (psutil-based, no torch)."""

from __future__ import annotations

import os

import psutil


def kill_tree(pid: int, timeout_s: float = 3.0) -> None:
    """SIGKILL a process's descendants, then the process itself (children before parents)."""
    try:
        parent = psutil.Process(pid)
        children = parent.children(recursive=True)
    except psutil.Error:
        return
    for proc in [*reversed(children), parent]:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs([*children, parent], timeout=timeout_s)


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and cgroup-pinned sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
