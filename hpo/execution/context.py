"""What the trial runner tells the objective about the trial it runs.

The objective keeps the plain ``objective(trial, cfg)`` (or Optuna's ``objective(trial)``)
signature; anything the runner decides for it (the device, the trial's checkpoint directory) is
read with :func:`current_context`, and code deep inside the objective (a training loop, a
callback) finds the running trial with :func:`current_trial`. Outside a trial (a notebook, a
unit test) :func:`current_trial` is None, so the same code also runs alone.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from hpo.devices import Device
    from hpo.execution.spike import SpikeLog


@dataclass(frozen=True)
class TrialContext:
    """Facts about the running trial that the runner chose."""

    device: str  # "cpu" or "cuda:N" (N counts the devices visible to this worker)
    trial_number: int
    # Per-trial directory (a retry gets its original's), None when checkpoints are off. Save
    # with hpo.checkpoint.atomic_write; record a resume as user attribute resumed_from_epoch.
    checkpoint_dir: Path | None = None
    # The device object trials of this worker run on (a SimulatedGpu for study.device=sim, whose
    # allocate/release the simulated objective calls); None outside the runner.
    handle: Device | None = None
    # Gradient accumulation chosen by admission (study.memory.accumulation): train each
    # optimizer step on ``accum_steps`` micro-batches of ``micro_batch`` examples, the loss of
    # each scaled by 1 / accum_steps; 1 and None when the batch runs whole.
    accum_steps: int = 1
    micro_batch: int | None = None
    # The trial's declared memory spikes (hpo.memory_spike), kept by the runner.
    spikes: SpikeLog | None = None


_current: contextvars.ContextVar[TrialContext | None] = contextvars.ContextVar(
    "hpo_trial_context", default=None
)


def current_context() -> TrialContext:
    """Return the context of the running trial, or a CPU context outside the runner.

    Outside the runner (a notebook, a unit test) the objective still runs, on the CPU.
    """
    ctx = _current.get()
    return ctx if ctx is not None else TrialContext(device="cpu", trial_number=-1)


@contextlib.contextmanager
def trial_context(ctx: TrialContext) -> Iterator[TrialContext]:
    """Make ``ctx`` the current context for the duration of the block."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


_trial: contextvars.ContextVar[optuna.Trial | None] = contextvars.ContextVar(
    "hpo_trial", default=None
)


def current_trial() -> optuna.Trial | None:
    """The trial the objective runs in this worker, or None outside a trial."""
    return _trial.get()


@contextlib.contextmanager
def running_trial(trial: optuna.Trial) -> Iterator[optuna.Trial]:
    """Make ``trial`` the :func:`current_trial` for the duration of the block."""
    token = _trial.set(trial)
    try:
        yield trial
    finally:
        _trial.reset(token)
