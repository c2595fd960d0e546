"""Process helpers shared by the supervisor and the workers (psutil-based, no torch).

No process outlives its trial: a worker is a *child subreaper* (Linux
``PR_SET_CHILD_SUBREAPER``), so a process the objective starts and abandons (a daemon, a
``Popen`` whose parent exited) is re-parented to the worker instead of ``init``, and the worker
ends every descendant after each trial. The supervisor is a subreaper while it runs: what a
worker that died leaves behind becomes its child, and it ends those that carry its run's mark
(:func:`end_strays`), never another child of its process.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Collection
from multiprocessing.process import BaseProcess

import psutil

logger = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
MIB = 1024 * 1024


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


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux); False elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def end_descendants(keep: Collection[int] = ()) -> int:
    """SIGKILL every descendant of this process but ``keep`` (and theirs); how many died."""
    try:
        children = psutil.Process().children(recursive=False)
    except psutil.Error:
        return 0
    ended = 0
    for child in children:
        if child.pid in keep or _is_resource_tracker(child):
            continue
        kill_tree(child.pid)
        ended += 1
    return ended


RUN_ENV = "HPO_RUN"  # set in every worker, so inherited by everything a trial starts


def end_strays(run_id: str, workers: Collection[int]) -> int:
    """In the supervisor: end the children that carry this run's mark but are no live worker
    (what a worker that died left behind, re-parented to the supervisor). Other children of
    the process (a notebook's own) are never touched."""
    ended = 0
    try:
        children = psutil.Process().children(recursive=False)
    except psutil.Error:
        return 0
    for child in children:
        if child.pid in workers:
            continue
        try:
            marked = child.environ().get(RUN_ENV) == run_id
        except psutil.Error:
            continue
        if marked:
            kill_tree(child.pid)
            ended += 1
    return ended


def stop_being_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _is_resource_tracker(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker: a helper of this process, not a trial's."""
    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return False


class RssTrend:
    """Flags a worker whose RSS after each trial keeps growing (a leak across trials)."""

    def __init__(self, window: int = 5, min_growth_mib: float = 100.0) -> None:
        self._window = window
        self._min_growth = min_growth_mib * MIB
        self._after: list[int] = []
        self._flagged = False

    def after_trial(self, trial_number: int) -> bool:
        """Record the RSS after a trial; True (and one log line) when it grew trial after
        trial over the window by more than the minimum."""
        try:
            self._after.append(int(psutil.Process().memory_info().rss))
        except psutil.Error:
            return False
        last = self._after[-self._window :]
        growing = len(last) == self._window and all(
            b > a for a, b in zip(last, last[1:], strict=False)
        )
        if growing and last[-1] - last[0] >= self._min_growth and not self._flagged:
            self._flagged = True
            logger.warning(
                "worker %d: RSS grew after each of its last %d trials, %.0f -> %.0f MiB "
                "(trial %d): the objective may leak memory across trials",
                os.getpid(),
                self._window,
                last[0] / MIB,
                last[-1] / MIB,
                trial_number,
            )
            return True
        return False
