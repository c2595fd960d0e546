"""The trial runner: runs the objective on one trial inside a worker and measures it."""

from __future__ import annotations

import logging
import math
import numbers
import os
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpo.config.by_value import takes_cfg
from hpo.contract import Attr, EndReason
from hpo.execution.context import TrialContext, running_trial, trial_context
from hpo.execution.probe import MemoryProbe
from hpo.execution.protocol import Assignment, Outcome
from hpo.execution.settle import Settler
from hpo.execution.spike import SpikeLog
from hpo.storage import user_attrs_writer
from hpo.storage.outage import StorageOutage
from hpo.storage.resilient import ResilientStorage

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from hpo.devices import Device

logger = logging.getLogger(__name__)

Objective = Callable[..., Any]  # objective(trial, cfg) or objective(trial)

_TRACEBACK_LINES = 12  # last lines of a traceback stored on a failed trial


class TrialRunner:
    """Runs trials of one objective against one study, in the worker's process."""

    def __init__(
        self,
        study: optuna.Study,
        objective: Objective,
        cfg: DictConfig,
        name: str,
        device: Device,
        storage: BaseStorage,
        take: Callable[[int], optuna.Trial] | None = None,
        notify: Callable[[object], Any] | None = None,
    ) -> None:
        """``name`` is the device the objective uses (``cuda:0`` for a worker bound to one
        GPU); ``device`` is where trials run and are recorded (its label); ``storage`` is the
        study's (the runner ends completed and pruned trials in it); ``take(trial_id)`` gives the
        trial to run (by default read from the storage); ``notify`` sends the supervisor a
        message while a trial runs (its :class:`~hpo.execution.protocol.Settled`; without it
        trials never settle)."""
        self._study = study
        self._take = take or (lambda trial_id: optuna.Trial(study, trial_id))
        self._write = user_attrs_writer(storage)
        self._reports, self._notify = storage, notify
        # objective(trial, cfg), or Optuna's objective(trial)
        self._objective = objective if takes_cfg(objective) else partial(_without_cfg, objective)
        self._cfg = cfg
        self._name = name
        self._device = device

    def run(self, assignment: Assignment) -> Outcome:
        """Run one trial to its end; never raises for a failure of the objective.

        A storage that stays unreachable past ``storage.outage_s`` (or fails for good) while
        the trial starts, reports or asks the pruner raises
        :class:`~hpo.storage.StorageOutage`: not the objective's failure, so no outcome (the
        worker exits and the supervisor, which shares the storage, decides the trial's fate).
        """
        spikes = SpikeLog()
        ctx = TrialContext(
            device=self._name,
            trial_number=assignment.trial_number,
            checkpoint_dir=_make_dir(assignment.checkpoint_dir),
            handle=self._device,
            accum_steps=assignment.accum_steps,
            micro_batch=assignment.micro_batch,
            spikes=spikes,
        )
        start = time.monotonic()
        self._device.cap_process(assignment.mem_cap_bytes)
        with MemoryProbe(self._device) as probe, trial_context(ctx):
            settler = self._settler(assignment, lambda: spikes.attrs(probe.attrs()), ctx, probe)
            try:
                trial, reason, value, message = self._call(assignment.trial_id)
            finally:
                if isinstance(self._reports, ResilientStorage):
                    self._reports.on_report = None
        self._device.release_cached()
        measured = spikes.attrs(probe.attrs())
        attrs: dict[str, Any] = {
            **measured,
            **settler.attrs(measured),
            Attr.DURATION_S: round(time.monotonic() - start, 3),
            Attr.WORKER_PID: os.getpid(),
            Attr.DEVICE: self._device.label,
        }
        if message is not None and reason is not EndReason.COMPLETE:
            attrs[Attr.ERROR] = message
        outcome = Outcome(assignment.trial_number, reason, value, attrs, _last_line(message))
        if trial is not None and reason in (EndReason.COMPLETE, EndReason.PRUNED):
            outcome.ended = self._end(trial, assignment.trial_id, reason, value, attrs)
        return outcome

    def _settler(
        self,
        assignment: Assignment,
        measure: Callable[[], dict[str, Any]],
        ctx: TrialContext,
        probe: MemoryProbe,
    ) -> Settler:
        """The trial's settler, watching its reports (see :mod:`hpo.execution.settle`)."""
        ckpt = ctx.checkpoint_dir
        resumed = ckpt is not None and any(ckpt.iterdir())
        storage = self._reports if isinstance(self._reports, ResilientStorage) else None
        notify = self._notify if storage is not None else None  # no reports seen: no settling
        record = partial(self._write, assignment.trial_id)
        settler = Settler(
            assignment, measure, self._device, notify, resumed, record,
            lambda: probe.device_grew_at,
        )  # fmt: skip
        if storage is not None:
            storage.on_report = settler.on_report
        return settler

    def _call(self, trial_id: int) -> tuple[optuna.Trial | None, EndReason, Any, str | None]:
        trial = None
        try:
            trial = self._take(trial_id)  # may read the trial: inside the try
            with running_trial(trial):
                value = self._objective(trial, self._cfg)
        except optuna.TrialPruned:
            return trial, EndReason.PRUNED, None, None
        except StorageOutage:
            raise
        except Exception as e:
            tail = traceback.format_exc().rstrip().splitlines()[-_TRACEBACK_LINES:]
            return trial, classify_exception(e), None, "\n".join(tail)
        checked, why = check_value(value, len(self._study.directions))
        if why is not None:
            return trial, EndReason.ERROR, None, why
        return trial, EndReason.COMPLETE, checked, None

    def _end(
        self,
        trial: optuna.Trial,
        trial_id: int,
        reason: EndReason,
        value: float | None,
        attrs: dict[str, Any],
    ) -> FrozenTrial | None:
        """Record a completed or pruned trial here (attributes, then ``tell``): what the
        supervisor would otherwise do one trial after another. None if it could not: the
        supervisor then records it (and says why if someone else already ended it)."""
        try:
            self._write(trial_id, {Attr.END_REASON: reason.value, **attrs})
            return self._study.tell(trial, value, state=reason.state)
        except StorageOutage:
            raise
        except Exception as e:
            logger.info("trial %d: left to the supervisor to record (%s)", trial.number, e)
            return None


def check_value(value: Any, n_objectives: int) -> tuple[Any, str | None]:
    """The objective's result as the study takes it (a float, or a list of ``n_objectives``
    floats), or why it cannot be recorded."""
    values = list(value) if isinstance(value, (list, tuple)) and n_objectives > 1 else [value]
    expected = "a float" if n_objectives == 1 else f"{n_objectives} floats"
    if len(values) != n_objectives:
        return None, f"objective returned {value!r}, expected {expected}"
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return None, f"objective returned {value!r}, expected {expected}"
        if not math.isfinite(v):
            return None, f"objective returned {value!r}, expected {expected}, finite"
    floats = [float(v) for v in values]
    return (floats[0] if n_objectives == 1 else floats), None


def classify_exception(e: BaseException) -> EndReason:
    """Map an exception from the objective to an end reason (no torch import needed)."""
    name = type(e).__name__
    text = str(e).lower()
    if name == "OutOfMemoryError" or isinstance(e, MemoryError) or "out of memory" in text:
        return EndReason.OOM
    cuda_markers = ("cuda error", "device-side assert", "cudnn_status", "cublas_status")
    if name == "AcceleratorError" or any(marker in text for marker in cuda_markers):
        return EndReason.CUDA_ERROR
    return EndReason.ERROR


def _without_cfg(objective: Objective, trial: optuna.Trial, cfg: DictConfig) -> Any:
    """An Optuna-style ``objective(trial)`` called as the runner calls objectives."""
    return objective(trial)


def _make_dir(path: str | None) -> Path | None:
    """The trial's checkpoint directory, created (a retry finds its original's files there)."""
    if path is None:
        return None
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        logger.warning("no checkpoint directory for this trial: %s", e)
        return None
    return directory


def _last_line(message: str | None) -> str | None:
    if not message:
        return None
    return message.strip().splitlines()[-1][:300]
