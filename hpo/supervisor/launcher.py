"""Starting trials: ask → gate → backlog → admission → dispatch, and learning from ended ones.

The :class:`Launcher` is composed into the :class:`~hpo.supervisor.Supervisor`: it owns the
state of the trials that have not ended (waiting in the :class:`~hpo.scheduling.Backlog` or
running with a reservation) and the models admission decides with (the memory gate, the RAM
budget, the learned durations). Idle workers ask the study for trials on its behalf
(:mod:`hpo.execution.proposer`: the sampler's cost is paid side by side, not here one trial
after another); the launcher decides what becomes of each. Asked trials wait until
:class:`~hpo.scheduling.AdmissionScheduler` places them on a device (largest first, smaller ones
backfilling), the host's RAM allows them, and an idle worker takes them; a trial the memory gate
can never fit is pre-pruned at once. It never records how a trial ended, except a pre-pruned
one, and it never calls back into the supervisor.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from hpo.config.space import describe
from hpo.contract import MEMORY_CONSTRAINT, Attr, Decision, EndReason
from hpo.devices import MIB, Device
from hpo.execution.protocol import AskedTrial, Assignment, Proposal, Propose, Settled
from hpo.memory import micro
from hpo.memory.sampling import pickled_gate
from hpo.pruners import PatientHyperbandPruner
from hpo.scheduling import AdmissionScheduler, Backlog, DurationModel, Placement, RamBudget, Slot
from hpo.scheduling.backlog import Waiting, place_next
from hpo.scheduling.settle import SettleModel, settle
from hpo.supervisor.liveness import owner_attrs

if TYPE_CHECKING:
    from hpo.execution.pool import WorkerHandle, WorkerPool
    from hpo.memory import MemoryGate, Verdict
    from hpo.storage import StudyStore
    from hpo.supervisor.checkpoints import CheckpointStore
    from hpo.supervisor.recorder import TrialRecorder

logger = logging.getLogger("hpo.supervisor")

_CLAIMED_RETRY_S = 1.0  # after "every slot is claimed", ask again this much later at the latest


@dataclass
class LaunchModels:
    """What admission decides with: the devices and the models learned from ended trials."""

    devices: list[Device]
    gate: MemoryGate
    admission: AdmissionScheduler
    ram: RamBudget
    durations: DurationModel
    split: tuple[str, int] = ("batch_size", 0)  # the batch param, most micro-batches (0: none)
    settle: SettleModel = field(default_factory=lambda: SettleModel(enabled=False))


class Launcher:
    """Asks, admits and dispatches trials of one study; learns from the ones that ended."""

    def __init__(
        self,
        study: optuna.Study,
        store: StudyStore,
        models: LaunchModels,
        backlog: Backlog,
        recorder: TrialRecorder,
        checkpoints: CheckpointStore,
        target: int,
        node_name: str = "",
    ) -> None:
        """``target`` is ``study.n_trials``: slots are claimed in the storage against it (see
        :mod:`hpo.storage.claim`); ``node_name`` goes on every trial this node runs."""
        self._study, self._store = study, store
        self._target, self._owner = target, owner_attrs(node_name)
        self.models, self.backlog = models, backlog
        self._recorder, self._checkpoints = recorder, checkpoints
        self._bound: dict[WorkerHandle, int | None] = {}  # worker -> device it touched
        self._params: dict[int, dict[str, Any]] = {}  # running trials' params, by number
        self._reserved: dict[int, dict[str, Any]] = {}  # how they run: reservation, accum steps
        self._claimed_until = 0.0  # no worker is asked for a trial before (all slots claimed)
        self._gate_version = -1  # the gate's version last pickled for the workers' samplers
        self._gate_bytes: bytes | None = None

    # --- starting trials ------------------------------------------------------------------------

    def schedule(
        self, pool: WorkerPool, room: int, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        """Start waiting trials that fit now (in the backlog's order: largest first), then have
        idle workers ask up to ``room`` new ones (running, waiting and trials being asked count
        as asked); none once ``stopping()`` (a Ctrl-C may arrive between two requests)."""
        if self.models.admission.packing:  # memory others hold comes off the budgets
            self.models.admission.books.measure_foreign()
        self.start_waiting(pool)
        room -= len(self.backlog) + sum(w.proposing for w in pool.workers)
        if time.monotonic() < self._claimed_until:
            return  # every slot was claimed a moment ago; a trial that ends frees one
        for worker in [w for w in pool.workers if w.idle]:
            asking = sum(w.proposing for w in pool.workers)  # their trials will wait too
            if room <= 0 or not self.backlog.may_ask(asking) or stopping():
                return
            self._propose(pool, worker)
            room -= 1

    def _propose(self, pool: WorkerPool, worker: WorkerHandle) -> None:
        """Ask ``worker`` to ask the study for a trial, with the memory gate if it changed."""
        gate = self.models.gate
        version = gate.version
        if gate.active and version != self._gate_version:
            self._gate_version, self._gate_bytes = version, pickled_gate(gate)
        snapshot = self._gate_bytes if worker.gate_seen != version else None
        worker.gate_seen = version
        pool.propose(worker, Propose(self._target, self._owner, snapshot))

    def on_message(self, pool: WorkerPool, worker: WorkerHandle, message: Any, stop: bool) -> None:
        """A worker's message other than an outcome: its running trial settled, or it asked a
        trial (a :class:`Proposal`): pre-prune that, or queue it and start what fits; when
        ``stop``, end it before it starts."""
        if isinstance(message, Settled):
            running = worker.assignment  # the trial may have ended since
            if running and running.trial_number == message.trial_number:
                params = None if running.spike_bytes else self._params.get(running.trial_number)
                if settle(self.models.admission.books, message, self.models.gate, params):
                    self._reestimate()  # its group's trials are estimated from it now
                    self.start_waiting(pool)
            return
        worker.proposing = False
        proposal: Proposal = message
        trial, trial_id = proposal.trial, proposal.trial_id
        if trial is None:
            if proposal.error:
                logger.warning("a worker could not ask for a trial: %s", proposal.error)
                self._recorder.count_failure(proposal.error)
            self._claimed_until = time.monotonic() + _CLAIMED_RETRY_S
            return
        if stop:
            start = Assignment(trial_id, trial.number, None)
            self._recorder.interrupt(self._study, [(start, {}, "stopped before it started")])
            return
        new = self._admissible(trial, trial_id)
        if new is None:  # pre-pruned: it finished
            return
        self.backlog.add(new)
        new.held = self._held_back(new)
        self._offer(pool, new)

    def start_waiting(self, pool: WorkerPool) -> None:
        """Start the waiting trials that fit now, in the backlog's order."""
        for item in self.backlog.items:
            item.held = self._held_back(item)
        for item in self.backlog.queue():
            if not any(w.idle for w in pool.workers):
                return
            self._offer(pool, item)

    def _held_back(self, item: Waiting) -> str | None:
        """Why ``item`` waits for a smaller one of its group to be measured (the gate's rule)."""
        if not self.models.admission.packing:  # memory-blind: trials start when workers idle
            return None
        pending = [w.params for w in self.backlog.items if w is not item]
        return self.models.gate.hold_back(item.params, pending + list(self._params.values()))

    def _offer(self, pool: WorkerPool, item: Waiting) -> Placement:
        """Place ``item`` with its expected duration; start it if admitted and its RAM fits."""
        if item.held is not None:
            placement = Placement(Decision.WAIT, item.held)
            self._wait(pool, item, placement)
            return placement
        duration = self.models.durations.predict(item.params)
        placement = place_next(
            self.backlog, self.models.admission, item, self._slots(pool), duration
        )
        placement = self._check_ram(pool, item, placement)
        if placement.decision is Decision.ADMIT:
            self._start(pool, item, placement)
            self.backlog.started(item)
        else:
            self._wait(pool, item, placement)
        return placement

    def _check_ram(self, pool: WorkerPool, item: Waiting, placement: Placement) -> Placement:
        """An admitted trial whose RAM does not fit waits, unless nothing runs to free any."""
        if placement.decision is not Decision.ADMIT:
            return placement
        ram_ok, why = self.models.ram.fits(item.params, placement.worker.pid)
        if ram_ok:
            return placement
        if not any(w.assignment is not None for w in pool.workers):
            logger.warning("trial %d starts alone although it %s", item.trial.number, why)
            return placement
        return Placement(Decision.WAIT, why)

    def _wait(self, pool: WorkerPool, item: Waiting, placement: Placement) -> None:
        for idle in placement.reclaim:
            pool.retire(idle)
        if item.unwritten is not None:  # what it waits with shows in `hpo status` at once
            self._store.set_user_attrs(item.trial_id, item.unwritten)
            item.unwritten = None
        if placement.reason != item.last_reason:
            logger.info("trial %d: wait (%s)", item.trial.number, placement.reason)
            item.last_reason = placement.reason

    def _start(self, pool: WorkerPool, item: Waiting, placement: Placement) -> None:
        """Reserve the trial's memory and RAM and send it to the placement's worker."""
        worker, trial, models = placement.worker, item.trial, self.models
        logger.info("trial %d: admit (%s)", trial.number, placement.reason)
        expected = models.durations.predict(item.params)
        ends_at = math.inf if expected is None else time.monotonic() + expected
        models.admission.books.hold(trial.number, placement, ends_at)
        models.ram.hold(trial.number, item.params, worker.pid)
        self._bound[worker] = placement.device
        attrs: dict[str, Any] = {
            **(item.unwritten or {}),
            Attr.ADMIT_WAIT_S: round(time.monotonic() - item.since, 3),
            **(item.reestimated or {}),
        }
        if models.admission.packing:  # what it may hold: its reservation, spike and context
            held = placement.reserve_bytes + placement.spike_bytes
            held += models.admission.books.context_bytes
            attrs[Attr.VRAM_RESERVED_MIB] = round(held / MIB, 1)
        if models.split[1]:  # the objective accumulates gradients: say how this one runs
            attrs[Attr.ACCUM_STEPS] = item.accum_steps
            attrs[Attr.MICRO_BATCH] = item.params.get(models.split[0])
        self._params[trial.number] = item.params
        kept = (Attr.VRAM_RESERVED_MIB, Attr.ACCUM_STEPS)
        self._reserved[trial.number] = {k: attrs[k] for k in kept if k in attrs}
        device = None if placement.device is None else models.devices[placement.device].label
        self._dispatch(pool, worker, item, device, placement, attrs)

    def _dispatch(
        self,
        pool: WorkerPool,
        worker: WorkerHandle,
        item: Waiting,
        device: str | None,
        placement: Placement,
        attrs: dict[str, Any],
    ) -> None:
        """Record ``attrs``, the worker and the checkpoint directory; send the trial to
        ``worker`` to run on ``device`` under the placement's cap, settling when it can."""
        trial = item.trial
        checkpoint_dir = self._checkpoints.dir_for(trial)
        attrs = {**attrs, Attr.WORKER_PID: worker.pid}
        if checkpoint_dir is not None:
            attrs[Attr.CHECKPOINT_DIR] = checkpoint_dir
        self._store.set_user_attrs(item.trial_id, attrs)
        logger.debug("trial %d -> worker %d: %s", trial.number, worker.pid, describe(item.params))
        micro_batch = attrs.get(Attr.MICRO_BATCH) if item.accum_steps > 1 else None
        cap, index = placement.cap_bytes, placement.device
        settles = cap is not None and index is not None
        assignment = Assignment(
            item.trial_id,
            trial.number,
            checkpoint_dir,
            device,
            cap,
            accum_steps=item.accum_steps,
            micro_batch=micro_batch,
            settle_frac=self.models.settle.frac() if settles else None,
            cap_slack_bytes=self.models.admission.margin_bytes(index or 0) if settles else 0,
            spike_bytes=placement.spike_bytes,
        )
        pool.assign(worker, assignment)  # a dead pipe shows up as DIED in the next poll

    def _slots(self, pool: WorkerPool) -> list[Slot]:
        """The workers as admission sees them; recycled ones still hold their contexts."""
        retiring = pool.retiring
        self._bound = {w: d for w, d in self._bound.items() if w in pool.workers or w in retiring}
        live = [Slot(w, w.idle, self._bound.get(w)) for w in pool.workers]
        return live + [Slot(w, False, self._bound.get(w)) for w in retiring]

    # --- asking ---------------------------------------------------------------------------------

    def _admissible(self, trial: AskedTrial, trial_id: int) -> Waiting | None:
        """An asked trial for the backlog, split into micro-batches if its batch cannot run
        whole; None if the memory gate pre-pruned it (recorded)."""
        at_least = int(trial.user_attrs.get(Attr.ACCUM_STEPS, 1))  # a retry after an OOM
        steps, run, verdict = self._choose(trial.params, at_least)
        attrs = verdict.attrs()
        pruner = self._study.pruner
        if isinstance(pruner, PatientHyperbandPruner):  # for `hpo stats` by bracket
            attrs[Attr.BRACKET] = pruner.bracket_of(self._study, trial)
        item = Waiting(trial, run, verdict.estimate, trial_id=trial_id, accum_steps=steps)
        if verdict.decision is Decision.PRE_PRUNE:
            self._pre_prune(item, verdict.reason, attrs, self.models.gate.infeasibility(verdict))
            return None
        item.unwritten = attrs  # with the dispatch's, or when it starts to wait
        return item

    def _choose(
        self, params: dict[str, Any], at_least: int = 1
    ) -> tuple[int, dict[str, Any], Verdict]:
        """The fewest micro-batches (from ``at_least``) that can run; see hpo.memory.micro."""
        batch, most = self.models.split
        return micro.choose(self.models.gate, params, batch, most, at_least)

    def _pre_prune(
        self, item: Waiting, why: str, attrs: dict[str, Any], infeasibility: float
    ) -> None:
        """End a trial that can never fit (``memory_estimate``) before it runs, and tell the
        sampler it was infeasible."""
        logger.info("trial %d: pre_prune (%s)", item.trial.number, why)
        optuna.Trial(self._study, item.trial_id).set_constraint(MEMORY_CONSTRAINT, infeasibility)
        assignment = Assignment(item.trial_id, item.trial.number, None)
        self._recorder.record(self._study, assignment, EndReason.MEMORY_ESTIMATE, None, attrs, why)

    # --- ended trials ---------------------------------------------------------------------------

    def release(self, trial_number: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The trial ended: its reservations end with it; returns its params (None if it was
        not started by this launcher; at the micro-batch it ran with) and how it ran
        (``vram_reserved_mib``, which tells the gate whether an OOM was the trial's own, and
        ``accum_steps``)."""
        self.models.admission.books.release(trial_number)
        self.models.gate.ended(trial_number)
        self.models.ram.release(trial_number)
        self._claimed_until = 0.0  # it may have freed a slot of the study
        held = self._reserved.pop(trial_number, {})
        return self._params.pop(trial_number, None), held

    def learn(self, params: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Teach the models what an ended trial measured; re-estimate the waiting trials when
        the gate learned something."""
        gate = self.models.gate
        learned = gate.estimator.n_observations
        gate.observe(params, attrs)
        if gate.estimator.n_observations != learned:
            self._reestimate()
        self.models.ram.observe(params, attrs)
        self.models.durations.observe(params, attrs)
        self.models.settle.observe(attrs)

    def _reestimate(self) -> None:
        """Estimate the waiting trials again. A trial asked before its model was measured would
        otherwise still wait to run alone; one now known never to fit is pre-pruned."""
        gate = self.models.gate
        for item in list(self.backlog.items):
            steps, run, verdict = self._choose(item.trial.params, item.accum_steps)
            if verdict.decision is Decision.PRE_PRUNE:
                self.backlog.drop(item)
                self._pre_prune(item, verdict.reason, verdict.attrs(), gate.infeasibility(verdict))
            elif verdict.estimate != item.estimate or steps != item.accum_steps:
                item.estimate, item.reestimated = verdict.estimate, verdict.attrs()
                item.params, item.accum_steps = run, steps
