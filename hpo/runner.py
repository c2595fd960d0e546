"""The trial runner: runs the objective on one trial inside a worker and measures it."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpo.devices import simulated
from hpo.memory import DEFAULT_CUDA_CONTEXT_BYTES
from hpo.outcome import Assignment, EndReason, Outcome
from hpo.probe import MemoryProbe
from hpo.runtime import TrialContext, trial_context

if TYPE_CHECKING:
    from omegaconf import DictConfig

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
        device: str,
        label: str | None = None,
    ) -> None:
        self._study = study
        self._objective = objective
        self._cfg = cfg
        self._device = device  # the device name the objective uses
        self._label = label or device  # the device the trial is recorded on

    def run(self, assignment: Assignment) -> Outcome:
        """Run one trial to its end; never raises for a failure of the objective."""
        trial = optuna.Trial(self._study, assignment.trial_id)
        ctx = TrialContext(
            device=self._device,
            trial_number=assignment.trial_number,
            checkpoint_dir=_make_dir(assignment.checkpoint_dir),
        )
        start = time.monotonic()
        device_cap(self._device, assignment.mem_cap_bytes)
        with MemoryProbe() as probe, trial_context(ctx):
            reason, value, message = self._call(trial)
        _free_cached()
        attrs: dict[str, Any] = {
            **probe.attrs(),
            "duration_s": round(time.monotonic() - start, 3),
            "worker_pid": os.getpid(),
            "device": self._label,
        }
        if message is not None and reason is not EndReason.COMPLETE:
            attrs["error"] = message
        return Outcome(assignment.trial_number, reason, value, attrs, _last_line(message))

    def _call(self, trial: optuna.Trial) -> tuple[EndReason, float | None, str | None]:
        try:
            value = self._objective(trial, self._cfg)
        except optuna.TrialPruned:
            return EndReason.PRUNED, None, None
        except Exception as e:
            tail = traceback.format_exc().rstrip().splitlines()[-_TRACEBACK_LINES:]
            return classify_exception(e), None, "\n".join(tail)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return EndReason.ERROR, None, f"objective returned {value!r}, expected a float"
        if not math.isfinite(value):
            return EndReason.ERROR, None, f"objective returned {value!r}, expected a finite float"
        return EndReason.COMPLETE, float(value), None


def device_cap(device: str, cap_bytes: int | None) -> None:
    """Cap this process on ``device`` at ``cap_bytes`` (context included) for the next trial:
    an under-estimate then fails this trial with an OOM instead of its neighbours."""
    sim = simulated.active()
    if sim is not None:
        sim.set_limit(cap_bytes)
        return
    torch = sys.modules.get("torch")
    if not device.startswith("cuda") or torch is None or not torch.cuda.is_available():
        return  # a CPU trial never touches the GPU, not even for a cap
    total = torch.cuda.get_device_properties(0).total_memory
    if cap_bytes is None:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        return
    # The fraction caps torch's allocator, which does not hold the CUDA context.
    allocator = max(cap_bytes - DEFAULT_CUDA_CONTEXT_BYTES, cap_bytes // 2)
    torch.cuda.set_per_process_memory_fraction(min(1.0, allocator / total), 0)


def _free_cached() -> None:
    """Hand cached CUDA blocks back, so the next trial's reservation is all it may use."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


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
