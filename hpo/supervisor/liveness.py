"""Liveness of RUNNING trials: the supervisor's heartbeats and the reaping of orphans.

Every trial a supervisor launches carries who runs it (``host``, ``supervisor_pid``, ``node_id``,
the node's name in the study, and ``pid_namespace``, the boot and PID namespace the pid belongs
to) and gets an Optuna RDB heartbeat every ``faults.heartbeat_interval_s`` while it runs (the
first one an interval after the supervisor learned of it: until then its start stands for
one). Optuna's own heartbeat only works inside ``study.optimize``; hpo asks and tells, so the
supervisor records the heartbeats itself.

A RUNNING trial that no live supervisor owns is *reaped*: failed with ``end_reason=worker_died``
(its workers died with their supervisor) and handed to the retry policy. Whether its owner is
gone is a :class:`Liveness` decision:

- this node (same ``node_id`` and ``pid_namespace``) and the supervisor's pid is gone or is now
  a process younger than the trial (our own pid included: a trial of ours that started before
  this process did was a previous supervisor's): ``ORPHANED`` — reaped at once, no grace
  period;
- no owner at all and no heartbeat for ``OWNERLESS_S`` seconds: ``STALE`` (its supervisor died
  between asking for it and launching it, a window of milliseconds; a supervisor that finds
  its trial reaped in that window drops it and asks again);
- otherwise (another node, or the owner is alive here): ``STALE`` only when its last heartbeat
  (or its start, if it never had one) is older than ``faults.grace_period_s``, else ``ALIVE``.

So a restarted supervisor does not wait for a grace period to reclaim its own node's trials,
and a trial of another node is only reaped after that node stopped beating for the grace period.
"""

from __future__ import annotations

import datetime
import enum
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from hpo.contract import Attr

if TYPE_CHECKING:
    import optuna

    from hpo.storage import StudyStore

logger = logging.getLogger(__name__)

OWNERLESS_S = 5.0  # seconds a RUNNING trial may go without owner attributes or a heartbeat


class Liveness(str, enum.Enum):
    """Whether a RUNNING trial still has a live owner."""

    ALIVE = "alive"
    ORPHANED = "orphaned"  # its supervisor on this node is gone
    ASKED = "asked"  # this supervisor's: the worker that asked for it is gone before it started
    STALE = "stale"  # no heartbeat for the grace period


def node_id() -> str:
    """Where a pid means one process: this boot of this machine, this PID namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: fall back to the host name
        return socket.gethostname()


def owner_attrs(node_name: str) -> dict[str, object]:
    """The user attributes that say which supervisor runs a trial: the node's name in the
    study, the host, the pid, and where that pid means one process (:func:`node_id`)."""
    return {
        Attr.HOST: socket.gethostname(),
        Attr.SUPERVISOR_PID: os.getpid(),
        Attr.NODE_ID: node_name,
        Attr.PID_NAMESPACE: node_id(),
    }


def pid_gone(pid: int, since: datetime.datetime | None) -> bool:
    """Whether ``pid`` no longer is the process that started at or before ``since`` (this
    process's own pid, on a trial older than it, was a previous supervisor's)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        created = proc.create_time()
    except psutil.Error:
        return True
    return since is not None and created > since.timestamp() + 1.0


class Heartbeats:
    """Records a heartbeat for each running trial every ``interval_s`` seconds, the first one
    ``interval_s`` after the trial was first seen: until then its start is its heartbeat (the
    reaper gives a trial that never beat the grace period from its start), so a trial shorter
    than the interval costs no write."""

    def __init__(self, store: StudyStore, interval_s: float) -> None:
        self._store = store
        self._interval_s = interval_s
        self._last: dict[int, float] = {}

    def beat(self, trial_ids: list[int]) -> None:
        """Beat the trials whose last beat is older than the interval; forget ended ones."""
        now = time.monotonic()
        self._last = {tid: t for tid, t in self._last.items() if tid in trial_ids}
        for trial_id in trial_ids:
            if now - self._last.setdefault(trial_id, now) >= self._interval_s:
                self._store.record_heartbeat(trial_id)
                self._last[trial_id] = now


class Reaper:
    """Finds RUNNING trials without a live owner."""

    def __init__(self, store: StudyStore, grace_period_s: float, node_name: str = "") -> None:
        self._store = store
        self._grace_s = grace_period_s
        self._name = node_name
        self._node = node_id()

    def find(self, exclude: set[int]) -> list[tuple[int, Liveness, str]]:
        """``(trial_id, decision, why)`` of RUNNING trials to reap, except ``exclude``."""
        running = self._store.running()
        if not running:
            return []
        stale = self._store.stale_trial_ids()
        found: list[tuple[int, Liveness, str]] = []
        for trial in running:
            trial_id = self._store.trial_id(trial.number)
            if trial_id in exclude:
                continue
            decision, why = self.judge(trial, trial_id, trial_id in stale)
            if decision is not Liveness.ALIVE:
                found.append((trial_id, decision, why))
        return found

    def judge(
        self, trial: optuna.trial.FrozenTrial, trial_id: int, heartbeat_stale: bool
    ) -> tuple[Liveness, str]:
        attrs = trial.user_attrs
        pid = attrs.get(Attr.SUPERVISOR_PID)
        ours = attrs.get(Attr.NODE_ID) == self._name and attrs.get(Attr.PID_NAMESPACE) == self._node
        ours = ours or attrs.get(Attr.NODE_ID) == self._node  # recorded before node names
        if ours and isinstance(pid, int):
            if pid_gone(pid, trial.datetime_start):
                host = attrs.get(Attr.HOST, "?")
                return Liveness.ORPHANED, f"its supervisor (pid {pid} on {host}) is gone"
            worker = attrs.get(Attr.WORKER_PID)  # this supervisor's, and not running here
            if pid == os.getpid() and isinstance(worker, int) and pid_gone(worker, None):
                return Liveness.ASKED, f"the worker that asked for it (pid {worker}) is gone"
        if heartbeat_stale:
            return Liveness.STALE, f"no heartbeat for over {self._grace_s:.0f} s"
        if pid is None and self._never_beat_for(trial, trial_id, OWNERLESS_S):
            return Liveness.STALE, "it has no owner (its supervisor died before launching it)"
        if self._never_beat_for(trial, trial_id, self._grace_s):
            return Liveness.STALE, f"no heartbeat since it started over {self._grace_s:.0f} s ago"
        return Liveness.ALIVE, ""

    def _never_beat_for(
        self, trial: optuna.trial.FrozenTrial, trial_id: int, seconds: float
    ) -> bool:
        """Whether the trial started over ``seconds`` ago and never had a heartbeat."""
        if trial.datetime_start is None:
            return False
        age = datetime.datetime.now() - trial.datetime_start
        return age.total_seconds() > seconds and not self._store.has_heartbeat(trial_id)
