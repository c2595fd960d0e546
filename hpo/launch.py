"""The supervisor's launch path: ask trials, admit them by memory, dispatch them to workers.

:class:`LaunchPath` is the part of :class:`~hpo.supervisor.Supervisor` that starts trials. Asked
trials wait in a :class:`~hpo.backlog.Backlog` until :class:`~hpo.admission.AdmissionScheduler`
places them on a device (largest first, smaller ones backfilling), the host's RAM
allows them (:class:`~hpo.ram.RamBudget`), and an idle worker takes them; a trial the memory
gate can never fit is pre-pruned at once.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from hpo.admission import AdmissionScheduler, Decision, Placement, Slot
from hpo.backlog import Backlog, Waiting, offer
from hpo.checkpoint import DIR_ATTR, CheckpointStore
from hpo.devices import MIB, Device
from hpo.durations import DurationModel
from hpo.memory import AdmissionKind, MemoryGate
from hpo.outcome import Assignment, EndReason
from hpo.pool import WorkerHandle, WorkerPool
from hpo.pruners import PatientHyperbandPruner
from hpo.ram import RamBudget
from hpo.reaper import Heartbeats, owner_attrs
from hpo.recorder import TrialRecorder
from hpo.space import describe
from hpo.storage import set_user_attrs

logger = logging.getLogger("hpo.supervisor")


class LaunchPath:
    """Starting trials; the state it uses is the supervisor's (set in its constructor)."""

    _target: int
    _space: dict[str, Any]
    _recorder: TrialRecorder
    _gate: MemoryGate | None
    _admission: AdmissionScheduler
    _ram: RamBudget
    _durations: DurationModel
    _backlog: Backlog
    _bound: dict[WorkerHandle, int | None]
    _devices: list[Device]
    _params: dict[int, dict[str, Any]]
    _checkpoints: CheckpointStore
    _beats: Heartbeats | None

    def _schedule(self, study: optuna.Study, pool: WorkerPool) -> None:
        """Start waiting trials that fit now (in the backlog's order: largest first), then ask
        new ones for idle workers, never more than the target needs (running and waiting count)."""
        backlog = self._backlog
        self._start_waiting(study, pool)
        busy = sum(w.assignment is not None for w in pool.workers)
        room = self._target - self._recorder.done - busy - len(backlog)
        while any(w.idle for w in pool.workers) and room > 0 and backlog.may_ask():
            new = self._ask_admissible(study)
            room -= 1
            if new is None:  # pre-pruned: it finished, ask again
                continue
            backlog.add(new)
            if self._offer(study, pool, new).decision is not Decision.ADMIT:
                return  # it waits for memory; the next event may free some

    def _start_waiting(self, study: optuna.Study, pool: WorkerPool) -> None:
        """Start the waiting trials that fit now, in the backlog's order."""
        for item in self._backlog.queue():
            if not any(w.idle for w in pool.workers):
                return
            self._offer(study, pool, item)

    def _offer(self, study: optuna.Study, pool: WorkerPool, item: Waiting) -> Placement:
        """Offer ``item`` to admission with its expected duration; start it if admitted."""

        def act(waiting: Waiting, placement: Placement) -> bool:
            return self._act(study, pool, waiting, placement)

        duration = self._durations.predict(item.params)
        return offer(self._backlog, self._admission, item, self._slots(pool), act, duration)

    def _ask_admissible(self, study: optuna.Study) -> Waiting | None:
        """Ask Optuna for the next trial; None if the memory gate pre-pruned it (recorded)."""
        trial = self._ask(study)
        assert self._gate is not None
        admission = self._gate.check(trial.params)
        attrs = admission.attrs()
        if isinstance(study.pruner, PatientHyperbandPruner):  # for `hpo stats` by bracket
            attrs["bracket"] = study.pruner.bracket_of(study, trial)
        if admission.kind is AdmissionKind.PRE_PRUNE:
            self._pre_prune(study, trial, admission.reason, attrs)
            return None
        set_user_attrs(study._storage, trial._trial_id, attrs)
        return Waiting(trial, dict(trial.params), admission.estimate)

    def _pre_prune(
        self, study: optuna.Study, trial: optuna.Trial, why: str, attrs: dict[str, Any]
    ) -> None:
        """End a trial that can never fit (``memory_estimate``) before it runs."""
        logger.info("trial %d: pre_prune (%s)", trial.number, why)
        assignment = Assignment(trial._trial_id, trial.number, None)
        self._recorder.record(study, assignment, EndReason.MEMORY_ESTIMATE, None, attrs, why)

    def _reestimate(self, study: optuna.Study) -> None:
        """The gate learned a measurement: estimate the waiting trials again. A trial asked
        before its model was measured would otherwise still wait to run alone; one now known
        never to fit is pre-pruned."""
        assert self._gate is not None
        for item in list(self._backlog.items):
            admission = self._gate.check(item.params)
            if admission.kind is AdmissionKind.PRE_PRUNE:
                self._backlog.drop(item)
                self._pre_prune(study, item.trial, admission.reason, admission.attrs())
            elif admission.estimate != item.estimate:
                item.estimate, item.reestimated = admission.estimate, admission.attrs()

    def _act(
        self, study: optuna.Study, pool: WorkerPool, item: Waiting, placement: Placement
    ) -> bool:
        """Start ``item`` if admission admitted it and its RAM fits; else log why it waits."""
        worker = placement.worker
        if placement.decision is Decision.ADMIT:
            ram_ok, why = self._ram.fits(item.params, worker.pid)
            alone = not any(w.assignment is not None for w in pool.workers)
            if not ram_ok and alone:  # waiting would not free any: run it, and say so
                logger.warning("trial %d starts alone although it %s", item.trial.number, why)
            elif not ram_ok:
                placement = Placement(Decision.WAIT, why)
        if placement.decision is not Decision.ADMIT:
            for idle in placement.reclaim:
                pool.retire(idle)
            if placement.reason != item.last_reason:
                logger.info("trial %d: wait (%s)", item.trial.number, placement.reason)
                item.last_reason = placement.reason
            return False
        waited = time.monotonic() - item.since
        logger.info("trial %d: admit (%s)", item.trial.number, placement.reason)
        trial = item.trial
        expected = self._durations.predict(item.params)
        ends_at = math.inf if expected is None else time.monotonic() + expected
        self._admission.books.hold(trial.number, placement, ends_at)
        self._ram.hold(trial.number, item.params, worker.pid)
        self._bound[worker] = placement.device
        attrs: dict[str, Any] = {"admit_wait_s": round(waited, 3), **(item.reestimated or {})}
        if self._admission.packing:
            attrs["vram_reserved_mib"] = round(
                (placement.reserve_bytes + self._admission.books.context_bytes) / MIB, 1
            )
        self._params[trial.number] = item.params
        label = None if placement.device is None else self._devices[placement.device].label
        self._dispatch(study, pool, worker, trial, label, placement.cap_bytes, attrs)
        return True

    def _slots(self, pool: WorkerPool) -> list[Slot]:
        """The workers as admission sees them; recycled ones still hold their contexts."""
        retiring = pool.retiring
        self._bound = {w: d for w, d in self._bound.items() if w in pool.workers or w in retiring}
        live = [Slot(w, w.idle, self._bound.get(w)) for w in pool.workers]
        return live + [Slot(w, False, self._bound.get(w)) for w in retiring]

    def _release(self, trial_number: int) -> None:
        """The trial's reservations end with it."""
        self._admission.books.release(trial_number)
        self._ram.release(trial_number)

    def _ask(self, study: optuna.Study) -> optuna.Trial:
        """The next trial, marked as this supervisor's at once (see :mod:`hpo.reaper`)."""
        while True:
            with warnings.catch_warnings():  # hpo records the heartbeats of ask/tell trials
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                trial = study.ask(self._space)
            try:
                set_user_attrs(study._storage, trial._trial_id, owner_attrs())
            except UpdateFinishedTrialError:  # another node's reaper took it for an orphan
                logger.warning("trial %d was reaped before it started; asking again", trial.number)
                continue
            assert self._beats is not None
            self._beats.beat([trial._trial_id])
            return trial

    def _dispatch(
        self,
        study: optuna.Study,
        pool: WorkerPool,
        worker: WorkerHandle,
        trial: optuna.Trial,
        device: str | None,
        cap_bytes: int | None,
        attrs: dict[str, Any],
    ) -> None:
        """Record ``attrs``, the worker and the checkpoint directory of ``trial``; send it to
        ``worker`` to run on ``device`` under ``cap_bytes``."""
        storage = study._storage
        checkpoint_dir = self._checkpoints.dir_for(trial)
        attrs = {**attrs, "worker_pid": worker.pid}
        if checkpoint_dir is not None:
            attrs[DIR_ATTR] = checkpoint_dir
        set_user_attrs(storage, trial._trial_id, attrs)
        logger.debug("trial %d -> worker %d: %s", trial.number, worker.pid, describe(trial.params))
        # A dead pipe shows up as DIED in the next poll.
        assignment = Assignment(trial._trial_id, trial.number, checkpoint_dir, device, cap_bytes)
        pool.assign(worker, assignment)
