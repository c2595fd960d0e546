"""Dispatch: waiting trials that admission places start on a worker, and stop holding memory
when they end.

The :class:`Dispatcher` offers the backlog's trials (largest first) to the shared admission
step (:class:`~hpo.scheduling.step.AdmissionStep`: hold-back, placement, RAM), and starts each
admitted one: it reserves the trial's device memory and host RAM, records how the trial runs
(its reservation, micro-batches, worker, checkpoint directory) and sends it to the worker under
the placement's per-process cap. One :class:`RunningTrial` record holds each trial it started
until :meth:`Dispatcher.release`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.config.space import describe
from hpo.contract import Attr, Decision
from hpo.devices import MIB
from hpo.execution.protocol import AskedTrial, Assignment, Settled
from hpo.scheduling import Backlog, Placement, Slot, Waiting
from hpo.scheduling.settle import settle
from hpo.scheduling.step import AdmissionStep

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hpo.execution.pool import WorkerHandle, WorkerPool
    from hpo.storage import StudyStore
    from hpo.supervisor.checkpoints import CheckpointStore
    from hpo.supervisor.launcher import LaunchModels

logger = logging.getLogger("hpo.supervisor")


@dataclass
class RunningTrial:
    """A trial this supervisor started, until it ends."""

    assignment: Assignment  # what its worker was sent
    worker: WorkerHandle
    params: dict[str, Any]  # as it runs (at its micro-batch)
    # how it runs, as recorded: its reservation (which tells the gate whether an OOM was its
    # own) and its micro-batches
    ran_with: dict[str, Any]
    admitted_at: float = field(default_factory=time.monotonic)  # it holds memory from then

    @property
    def number(self) -> int:
        return self.assignment.trial_number

    @property
    def spiky(self) -> bool:
        """It holds a device's spike slot: what it holds when it settles leaves that out."""
        return self.assignment.spike_bytes > 0


class Dispatcher:
    """Starts the waiting trials admission places; keeps a record of each running one."""

    def __init__(
        self,
        store: StudyStore,
        models: LaunchModels,
        backlog: Backlog,
        checkpoints: CheckpointStore,
    ) -> None:
        self._store, self._models, self._checkpoints = store, models, checkpoints
        gate = models.gate
        self.step = AdmissionStep(
            backlog,
            models.admission,
            models.durations,
            ram=lambda params, worker: models.ram.fits(params, worker.pid),
            hold_back=gate.hold_back if gate.active else None,
        )
        self.running: dict[int, RunningTrial] = {}  # by trial number
        self._bound: dict[WorkerHandle, int | None] = {}  # worker -> device it touched

    def start_waiting(self, pool: WorkerPool) -> None:
        """Start the waiting trials that fit now, in the backlog's order."""
        self.step.refresh_holds(r.params for r in self.running.values())
        for item in self.step.backlog.queue():
            if not any(w.idle for w in pool.workers):
                return
            self.offer(pool, item)

    def add(self, pool: WorkerPool, item: Waiting[AskedTrial]) -> Placement[WorkerHandle]:
        """A newly asked trial waits in the backlog (held back where the gate says so); it
        starts at once if admission places it now."""
        self.step.add(item, (r.params for r in self.running.values()))
        return self.offer(pool, item)

    def offer(self, pool: WorkerPool, item: Waiting[AskedTrial]) -> Placement[WorkerHandle]:
        """Start ``item`` if admission places it now; else let it wait, saying why."""
        placement = self.step.decide(item, self._slots(pool))
        if placement.decision is Decision.ADMIT:
            self._start(pool, item, placement)
        else:
            self._wait(pool, item, placement)
        return placement

    def _wait(
        self, pool: WorkerPool, item: Waiting[AskedTrial], placement: Placement[WorkerHandle]
    ) -> None:
        for idle in placement.reclaim:
            pool.retire(idle)
        if item.unwritten is not None:  # what it waits with shows in `hpo status` at once
            self._store.set_user_attrs(item.trial_id, item.unwritten)
            item.unwritten = None
        if placement.reason != item.last_reason:
            logger.info("trial %d: wait (%s)", item.number, placement.reason)
            item.last_reason = placement.reason

    def _start(
        self, pool: WorkerPool, item: Waiting[AskedTrial], placement: Placement[WorkerHandle]
    ) -> None:
        """Reserve the trial's memory and RAM and send it to the placement's worker."""
        worker, models = placement.worker, self._models
        assert worker is not None  # admitted
        logger.info("trial %d: admit (%s)", item.number, placement.reason)
        self.step.start(item, placement)
        models.ram.hold(item.number, item.params, worker.pid)
        self._bound[worker] = placement.device
        attrs = self._start_attrs(item, placement)
        kept = (Attr.VRAM_RESERVED_MIB, Attr.ACCUM_STEPS)
        ran_with = {k: attrs[k] for k in kept if k in attrs}
        assignment = self._assignment(item, placement, attrs)
        attrs[Attr.WORKER_PID] = worker.pid
        if assignment.checkpoint_dir is not None:
            attrs[Attr.CHECKPOINT_DIR] = assignment.checkpoint_dir
        self._store.set_user_attrs(item.trial_id, attrs)
        logger.debug("trial %d -> worker %d: %s", item.number, worker.pid, describe(item.params))
        self.running[item.number] = RunningTrial(assignment, worker, item.params, ran_with)
        pool.assign(worker, assignment)  # a dead pipe shows up as DIED in the next poll

    def _start_attrs(
        self, item: Waiting[AskedTrial], placement: Placement[WorkerHandle]
    ) -> dict[str, Any]:
        """What the trial is recorded with as it starts: its estimate, its wait, what it may
        hold, and how it is split."""
        models = self._models
        attrs: dict[str, Any] = {
            **(item.unwritten or {}),
            Attr.ADMIT_WAIT_S: round(time.monotonic() - item.since, 3),
            **(item.reestimated or {}),
        }
        if models.admission.packing:  # what it may hold: its reservation, spike and context
            held = placement.reserve_bytes + placement.spike_bytes
            held += models.admission.books.context_bytes
            attrs[Attr.VRAM_RESERVED_MIB] = round(held / MIB, 1)
        if models.split.max_steps:  # the objective accumulates gradients: how this one runs
            attrs[Attr.ACCUM_STEPS] = item.accum_steps
            attrs[Attr.MICRO_BATCH] = item.params.get(models.split.batch_param)
        return attrs

    def _assignment(
        self,
        item: Waiting[AskedTrial],
        placement: Placement[WorkerHandle],
        attrs: Mapping[str, Any],
    ) -> Assignment:
        """What the worker is sent: the trial, its device, cap and checkpoint directory, and
        how it settles (under a cap on a device) and splits its batch."""
        models, index, cap = self._models, placement.device, placement.cap_bytes
        device = None if index is None else models.devices[index].label
        settles = cap is not None and index is not None
        return Assignment(
            item.trial_id,
            item.number,
            self._checkpoints.dir_for(item.trial),
            device,
            cap,
            accum_steps=item.accum_steps,
            micro_batch=attrs.get(Attr.MICRO_BATCH) if item.accum_steps > 1 else None,
            settle_frac=models.settle.frac() if settles else None,
            cap_slack_bytes=models.admission.margin_bytes(index or 0) if settles else 0,
            spike_bytes=placement.spike_bytes,
        )

    def _slots(self, pool: WorkerPool) -> list[Slot[WorkerHandle]]:
        """The workers as admission sees them; recycled ones still hold their contexts."""
        retiring = pool.retiring
        self._bound = {w: d for w, d in self._bound.items() if w in pool.workers or w in retiring}
        live = [Slot(w, w.idle, self._bound.get(w)) for w in pool.workers]
        return live + [Slot(w, False, self._bound.get(w)) for w in retiring]

    def settled(self, message: Settled) -> bool:
        """A running trial settled: shrink its reservation to what it holds; whether that
        freed memory (its group's unmeasured trials are then estimated from it)."""
        running = self.running.get(message.trial_number)
        if running is None:  # it ended since
            return False
        params = None if running.spiky else running.params
        return settle(self._models.admission.books, message, self._models.gate, params)

    def release(self, trial_number: int) -> RunningTrial | None:
        """The trial ended: its reservations end with it; its record (None if this
        supervisor did not start it)."""
        models = self._models
        models.admission.books.release(trial_number)
        models.gate.ended(trial_number)
        models.ram.release(trial_number)
        return self.running.pop(trial_number, None)
