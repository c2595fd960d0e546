"""Starting trials and learning from ended ones: intake (ask → gate → backlog) and dispatch
(admission → start), over the models admission decides with.

The :class:`Launcher` is composed into a run (:mod:`hpo.supervisor.run`): it owns the trials
that have not ended (waiting in the backlog, running with a reservation) and the models learned
from ended trials (the memory gate, the RAM budget, the learned durations, settling). It never
records how a trial ended, except a pre-pruned one, and it never calls back into the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.contract import Attr, EndReason
from hpo.devices import MIB, Device
from hpo.execution.protocol import Outcome, Proposal, Settled
from hpo.memory.oom import hit_own_limit, needed_lower_bound
from hpo.scheduling import AdmissionScheduler, Backlog, DurationModel, RamBudget
from hpo.scheduling.settle import SettleModel
from hpo.supervisor.dispatch import Dispatcher, RunningTrial
from hpo.supervisor.intake import Intake
from hpo.supervisor.liveness import owner_attrs
from hpo.supervisor.retry import requeue_after_cap, retry_after_oom

if TYPE_CHECKING:
    from hpo.config.settings import Settings
    from hpo.execution.pool import WorkerPool
    from hpo.memory import MemoryGate
    from hpo.supervisor.checkpoints import CheckpointStore
    from hpo.supervisor.recorder import TrialRecorder


@dataclass(frozen=True)
class Split:
    """How a batch may be split into micro-batches (gradient accumulation)."""

    batch_param: str = "batch_size"  # the parameter that holds the batch
    max_steps: int = 0  # the most micro-batches per optimizer step (0: never split)


@dataclass
class LaunchModels:
    """What admission decides with: the devices and the models learned from ended trials."""

    devices: list[Device]
    gate: MemoryGate
    admission: AdmissionScheduler
    ram: RamBudget
    durations: DurationModel
    split: Split = field(default_factory=Split)
    settle: SettleModel = field(default_factory=lambda: SettleModel(enabled=False))

    def learn(self, params: dict[str, Any], attrs: dict[str, Any]) -> bool:
        """Teach every model what an ended trial measured; whether the gate learned."""
        gate = self.gate
        learned = gate.estimator.n_observations
        gate.observe(params, attrs)
        self.ram.observe(params, attrs)
        self.durations.observe(params, attrs)
        self.settle.observe(attrs)
        return gate.estimator.n_observations != learned


class Launcher:
    """Asks, admits and dispatches the trials of one run; learns from the ones that end."""

    def __init__(
        self,
        settings: Settings,
        recorder: TrialRecorder,
        models: LaunchModels,
        backlog: Backlog,
        checkpoints: CheckpointStore,
    ) -> None:
        self._settings, self.models, self.backlog = settings, models, backlog
        self._study = recorder.study
        owner = owner_attrs(settings.node_id)
        self.intake = Intake(models, backlog, recorder, settings.study.n_trials, owner)
        self.dispatch = Dispatcher(recorder.store, models, backlog, checkpoints)

    def schedule(self, pool: WorkerPool, room: int, stopping: Callable[[], bool]) -> None:
        """Start waiting trials that fit now (largest first), then have idle workers ask up
        to ``room`` new ones; none once ``stopping()``."""
        if self.models.admission.packing:  # memory others hold comes off the budgets
            self.models.admission.books.measure_foreign()
        self.dispatch.start_waiting(pool)
        self.intake.ask(pool, room, stopping)

    def proposed(self, pool: WorkerPool, proposal: Proposal, stop: bool) -> None:
        """A worker asked a trial: pre-prune it, or queue it and start it if it fits now."""
        item = self.intake.take(proposal, stop)
        if item is not None:
            self.dispatch.add(pool, item)

    def settled(self, pool: WorkerPool, message: Settled) -> None:
        """A running trial settled: what it freed starts waiting trials, and its group's
        waiting trials are estimated from it."""
        if self.dispatch.settled(message):
            self.intake.reestimate()
            self.dispatch.start_waiting(pool)

    def ended(self, trial_number: int, outcome: Outcome | None = None) -> RunningTrial | None:
        """Trial ``trial_number`` ended (``outcome``: what its worker measured; None: nothing,
        it was killed): its reservations end, the models learn what it measured, and after an
        OOM it is retried smaller where it can be; one its own overcommit cap refused ends
        ``cap_exceeded`` and is re-queued at once. Its record (None: not started here)."""
        running = self.dispatch.release(trial_number)
        self.intake.slot_freed()
        if running is None or outcome is None:
            return running
        need = self._cap_hit(outcome)
        if need is not None:  # under its own overcommit cap: not an OOM of the configuration
            outcome.end_reason = EndReason.CAP_EXCEEDED
        attrs = {Attr.END_REASON: outcome.end_reason.value, **running.ran_with, **outcome.attrs}
        self.models.durations.held(time.monotonic() - running.admitted_at, attrs)
        if self.models.learn(running.params, attrs):
            self.intake.reestimate()
        if need is not None:  # at once, reserving what it measured it needs
            ckpt = running.assignment.checkpoint_dir
            attrs = {**attrs, Attr.CHECKPOINT_DIR: ckpt} if ckpt else attrs
            requeue_after_cap(
                self._study, trial_number, running.params, attrs, need, self._settings
            )
        elif outcome.end_reason is EndReason.OOM:  # more micro-batches, or a smaller batch
            retry_after_oom(self._study, trial_number, running.params, attrs, self._settings)
        return running

    def _cap_hit(self, outcome: Outcome) -> float | None:
        """What a trial that ran out of memory needs, where it was its own cap under safe
        overcommit that refused it and it fits what a trial may hold alone on a device now (a
        cap hit, ``cap_exceeded``); None for any other end. What processes outside hpo hold
        comes off that: a trial that needs more than a lone trial may hold beside them is an
        OOM (retried smaller), not a cap hit re-queued to hit the same lone cap again."""
        models = self.models
        if outcome.end_reason is not EndReason.OOM or not models.admission.overcommit:
            return None
        error = outcome.attrs.get(Attr.ERROR)
        if not hit_own_limit(error):
            return None
        peak = outcome.attrs.get(Attr.PEAK_VRAM_MIB)  # none if its first allocation failed
        need = needed_lower_bound(float(peak or 0.0) * MIB, error)
        alone = models.admission.lone_bytes()  # never above the gate's alone_bytes
        if need is None or alone is None or need > alone:
            return None
        return need

    def waiting_ids(self) -> list[int]:
        """The storage ids of the asked trials that wait (they get heartbeats too)."""
        return [item.trial_id for item in self.backlog.items]
