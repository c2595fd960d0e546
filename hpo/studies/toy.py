"""The ``toy`` study: a synthetic learning curve with no torch, for smoke runs and tests.

Its knobs make a worker hold memory (in itself or in a child process, like a DataLoader
worker) or fail in the ways GPU jobs fail (:mod:`hpo.sim.faults`), so the orchestration can be
exercised in seconds on any machine. With a checkpoint directory it saves its curve after every
epoch and a retried trial resumes from the last saved epoch.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from hpo.checkpoint import RESUMED_ATTR, load_json, save_json
from hpo.config.schema import StudyConf
from hpo.execution.context import current_context
from hpo.sim.faults import Fault, draw_fault, inject

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

    from omegaconf import DictConfig

_FAMILY_CEILING = {"a": 0.7, "b": 0.9, "c": 0.8}


@dataclass
class ToyStudyConf(StudyConf):
    """``toy``: which x, family and width give the best synthetic curve."""

    epoch_s: float = 0.05  # seconds each epoch sleeps
    rss_mib: int = 0  # MiB the worker holds during a trial
    child_rss_mib: int = 0  # MiB a child process holds during a trial
    error_rate: float = 0.0  # probability that a trial raises ValueError at epoch 1
    oom_rate: float = 0.0  # probability of an injected CUDA out-of-memory error (oom)
    cuda_error_rate: float = 0.0  # probability of an injected device-side assert (cuda_error)
    segfault_rate: float = 0.0  # probability that the worker segfaults (worker_died)
    hang_rate: float = 0.0  # probability of a hang (timeout, with faults.trial_timeout_s)
    hang_s: float = 600.0  # seconds a hang sleeps
    fault_epoch: int = 2  # epoch at whose start an injected fault strikes
    checkpoint: bool = True  # save the curve after every epoch; a retry resumes from it


def curve(params: dict[str, object], epoch: int) -> float:
    """Accuracy-like value in [0, 1] at ``epoch`` for the toy parameters."""
    x = float(params["x"])  # type: ignore[arg-type]
    ceiling = _FAMILY_CEILING[str(params["family"])] * math.exp(-((x - 1.0) ** 2) / 8.0)
    speed = 1.0 + math.log2(float(params["width"])) / 2.0  # type: ignore[arg-type]
    # Rounded like an accuracy on 100 validation examples, so poor trials plateau.
    return round(ceiling * (1.0 - math.exp(-epoch * speed / 6.0)), 2)


def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
    """Report the synthetic curve each epoch; prune through the study's pruner."""
    study = cfg.study
    fault = draw_fault(trial.number, _fault_rates(study))
    path = _checkpoint_path(study)
    values = _resume(trial, path)
    ballast = b"\x01" * (study.rss_mib * 1024 * 1024)  # written, so resident
    with _child_holding(study.child_rss_mib):
        for epoch in range(len(values) + 1, study.epochs + 1):
            if epoch == study.fault_epoch:
                inject(fault, trial.number, study.hang_s)
            time.sleep(study.epoch_s)
            if epoch == 1 and _draw(trial.number) < study.error_rate:
                raise ValueError(f"toy error injected in trial {trial.number}")
            values.append(curve(trial.params, epoch))
            trial.report(values[-1], epoch)
            if path is not None:
                save_json(path, {"values": values})
            if epoch < study.epochs and trial.should_prune():
                raise optuna.TrialPruned()
    del ballast
    return max(values)


def _fault_rates(study: DictConfig) -> dict[Fault, float]:
    return {
        Fault.OOM: study.oom_rate,
        Fault.CUDA_ERROR: study.cuda_error_rate,
        Fault.SEGFAULT: study.segfault_rate,
        Fault.HANG: study.hang_rate,
    }


def _checkpoint_path(study: DictConfig) -> Path | None:
    directory = current_context().checkpoint_dir
    return directory / "curve.json" if study.checkpoint and directory is not None else None


def _resume(trial: optuna.Trial, path: Path | None) -> list[float]:
    """Values of the epochs a failed attempt saved, reported again for this trial."""
    saved = load_json(path) if path is not None else None
    values: list[float] = list(saved["values"]) if saved else []
    for epoch, value in enumerate(values, start=1):
        trial.report(value, epoch)
    if values:
        trial.set_user_attr(RESUMED_ATTR, len(values))
    return values


def _draw(number: int) -> float:
    """A reproducible number in [0, 1) for a trial number."""
    return (number * 0.6180339887498949) % 1.0


class _child_holding:
    """Keep a child process alive holding ``mib`` MiB while the block runs."""

    def __init__(self, mib: int) -> None:
        self._mib = mib
        self._proc: mp.process.BaseProcess | None = None
        self._stop: Event | None = None

    def __enter__(self) -> None:
        if self._mib <= 0:
            return
        ctx = mp.get_context("fork")
        self._stop, ready = ctx.Event(), ctx.Event()
        self._proc = ctx.Process(target=_hold, args=(self._mib, ready, self._stop), daemon=True)
        self._proc.start()
        ready.wait(30)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._stop is not None:
            self._stop.set()
            self._proc.join(10)


def _hold(mib: int, ready: Event, stop: Event) -> None:
    block = b"\x01" * (mib * 1024 * 1024)  # written, so resident
    ready.set()
    stop.wait(600)
    del block
