"""The trial runner: runs the objective on one trial inside a worker and measures it."""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpo.contract import Attr, EndReason
from hpo.execution.context import TrialContext, trial_context
from hpo.execution.probe import MemoryProbe
from hpo.execution.protocol import Assignment, Outcome
from hpo.storage.outage import StorageOutage

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from hpo.devices import Device

logger = logging.getLogger(__name__)

Objective = Callable[[optuna.Trial, "DictConfig"], float]

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
    ) -> None:
        """``name`` is the device the objective uses (``cuda:0`` for a worker bound to one
        GPU); ``device`` is where trials run and are recorded (its label)."""
        self._study = study
        self._objective = objective
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
        ctx = TrialContext(
            device=self._name,
            trial_number=assignment.trial_number,
            checkpoint_dir=_make_dir(assignment.checkpoint_dir),
            handle=self._device,
            accum_steps=assignment.accum_steps,
            micro_batch=assignment.micro_batch,
        )
        start = time.monotonic()
        self._device.cap_process(assignment.mem_cap_bytes)
        with MemoryProbe(self._device) as probe, trial_context(ctx):
            reason, value, message = self._call(assignment.trial_id)
        self._device.release_cached()
        attrs: dict[str, Any] = {
            **probe.attrs(),
            Attr.DURATION_S: round(time.monotonic() - start, 3),
            Attr.WORKER_PID: os.getpid(),
            Attr.DEVICE: self._device.label,
        }
        if message is not None and reason is not EndReason.COMPLETE:
            attrs[Attr.ERROR] = message
        return Outcome(assignment.trial_number, reason, value, attrs, _last_line(message))

    def _call(self, trial_id: int) -> tuple[EndReason, float | None, str | None]:
        try:
            trial = optuna.Trial(self._study, trial_id)  # reads the trial: inside the try
            value = self._objective(trial, self._cfg)
        except optuna.TrialPruned:
            return EndReason.PRUNED, None, None
        except StorageOutage:
            raise
        except Exception as e:
            tail = traceback.format_exc().rstrip().splitlines()[-_TRACEBACK_LINES:]
            return classify_exception(e), None, "\n".join(tail)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return EndReason.ERROR, None, f"objective returned {value!r}, expected a float"
        if not math.isfinite(value):
            return EndReason.ERROR, None, f"objective returned {value!r}, expected a finite float"
        return EndReason.COMPLETE, float(value), None


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
