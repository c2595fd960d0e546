"""Process helpers shared by the supervisor and the workers (psutil-based, no torch)."""

from __future__ import annotations

import os
from multiprocessing.process import BaseProcess

import psutil


def kill_tree(pid: int, timeout_s: float = 3.0, include_root: bool = True) -> None:
    """SIGKILL a process's descendants, then the process itself (children before parents).

    With ``include_root=False`` only the descendants die: the caller kills and joins its own
    child (waiting for our child here would reap it behind ``multiprocessing``'s back, and
    its exit code would be lost).
    """
    try:
        parent = psutil.Process(pid)
        children = parent.children(recursive=True)
    except psutil.Error:
        return
    procs = [*reversed(children), *([parent] if include_root else [])]
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout_s)


def kill_process_tree(process: BaseProcess, timeout_s: float = 5.0) -> None:
    """SIGKILL a ``multiprocessing`` child and its descendants, then join it."""
    if process.pid is not None and process.is_alive():
        kill_tree(process.pid, include_root=False)
        process.kill()
    process.join(timeout_s)


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and cgroup-pinned sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
