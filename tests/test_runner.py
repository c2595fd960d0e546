from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import optuna
import pytest
from omegaconf import DictConfig

from hpo.config import compose
from hpo.contract import EndReason
from hpo.devices import CpuDevice
from hpo.execution.context import current_context
from hpo.execution.protocol import Assignment
from hpo.execution.runner import TrialRunner, classify_exception
from hpo.studies import toy
from tests.conftest import CONF, ROOT

VRAM_KEYS = {"peak_vram_allocated_mib", "peak_vram_reserved_mib", "peak_vram_mib"}


def _toy_cfg(*overrides: str) -> DictConfig:
    return compose(["study=toy", "study.epoch_s=0", *overrides], str(CONF))


def _run(objective: Any, cfg: DictConfig) -> tuple[optuna.Study, Any]:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask(
        {
            "x": optuna.distributions.FloatDistribution(0.5, 0.5),
            "family": optuna.distributions.CategoricalDistribution(["b"]),
            "width": optuna.distributions.IntDistribution(8, 8),
        }
    )
    outcome = TrialRunner(study, objective, cfg, "cpu", CpuDevice(), study._storage).run(
        Assignment(trial._trial_id, trial.number)
    )
    return study, outcome


def test_complete_trial_has_value_and_bookkeeping() -> None:
    study, outcome = _run(toy.objective, _toy_cfg())
    assert outcome.end_reason is EndReason.COMPLETE
    assert outcome.value == pytest.approx(
        max(toy.curve({"x": 0.5, "family": "b", "width": 8}, e) for e in range(1, 13))
    )
    assert outcome.attrs["device"] == "cpu"
    assert outcome.attrs["duration_s"] >= 0
    assert outcome.attrs["peak_rss_mib"] > 10
    assert VRAM_KEYS.isdisjoint(outcome.attrs), "no VRAM keys without CUDA"
    # The worker ended it in the storage itself (the supervisor only logs and learns).
    stored = study.trials[0]
    assert stored.state is optuna.trial.TrialState.COMPLETE
    assert stored.value == outcome.value
    assert stored.user_attrs["end_reason"] == "complete"
    assert stored.user_attrs["peak_rss_mib"] == outcome.attrs["peak_rss_mib"]
    assert outcome.ended is not None and outcome.ended.number == stored.number


_PEAKS_SCRIPT = """
import json
from tests.test_runner import _run, _toy_cfg
from hpo.studies import toy
peaks = [
    _run(toy.objective, _toy_cfg(*overrides))[1].attrs["peak_rss_mib"]
    for overrides in ([], ["study.rss_mib=200"], ["study.child_rss_mib=150", "study.epoch_s=0.05"])
]
print(json.dumps(peaks))
"""


def test_peak_rss_includes_the_worker_and_its_children() -> None:
    # A fresh process: memory that earlier tests left for the garbage collector would move the
    # baseline between the three trials.
    result = subprocess.run(
        [sys.executable, "-c", _PEAKS_SCRIPT], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    alone, ballast, child = json.loads(result.stdout.strip().splitlines()[-1])
    assert ballast >= alone + 190
    assert child >= alone + 140


def test_pruned_trial() -> None:
    def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
        trial.report(0.1, 1)
        raise optuna.TrialPruned()

    study, outcome = _run(objective, _toy_cfg())
    assert outcome.end_reason is EndReason.PRUNED
    assert outcome.value is None
    stored = study.trials[0]
    assert stored.state is optuna.trial.TrialState.PRUNED
    assert stored.value == 0.1, "Optuna's tell keeps a pruned trial's last reported value"
    assert stored.user_attrs["end_reason"] == "pruned"
    assert outcome.ended is not None and outcome.ended.last_step == 1


def test_error_keeps_the_traceback_tail() -> None:
    def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
        raise ValueError("bad learning rate 42")

    study, outcome = _run(objective, _toy_cfg())
    assert outcome.end_reason is EndReason.ERROR
    assert outcome.ended is None, "a failure is the supervisor's to record and retry"
    assert study.trials[0].state is optuna.trial.TrialState.RUNNING
    assert outcome.message == "ValueError: bad learning rate 42"
    assert "line" in outcome.attrs["error"]  # a frame of the traceback
    assert outcome.attrs["error"].endswith("ValueError: bad learning rate 42")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, "0.5", True])
def test_non_finite_or_non_numeric_value_is_an_error(value: Any) -> None:
    _, outcome = _run(lambda trial, cfg: value, _toy_cfg())
    assert outcome.end_reason is EndReason.ERROR
    assert "expected a" in outcome.attrs["error"]


def test_a_trial_ended_elsewhere_is_left_to_the_supervisor() -> None:
    """The supervisor (a time limit, ``hpo stop --now``) or another node's reaper may end the
    trial while it runs: the runner then writes nothing and says it did not end it."""

    def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
        trial.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        return 1.0

    study, outcome = _run(objective, _toy_cfg())
    assert outcome.end_reason is EndReason.COMPLETE
    assert outcome.ended is None
    assert study.trials[0].state is optuna.trial.TrialState.FAIL
    assert "end_reason" not in study.trials[0].user_attrs


def test_objective_sees_the_runner_context() -> None:
    seen: list[Any] = []

    def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
        seen.append(current_context())
        return 1.0

    _, outcome = _run(objective, _toy_cfg())
    assert outcome.end_reason is EndReason.COMPLETE
    assert seen[0].device == "cpu" and seen[0].trial_number == outcome.trial_number
    assert current_context().trial_number == -1  # reset after the trial


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (matched by name)."""


class AcceleratorError(RuntimeError):
    """Stands in for torch.AcceleratorError (matched by name)."""


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), EndReason.OOM),
        (RuntimeError("CUDA out of memory."), EndReason.OOM),
        (MemoryError(), EndReason.OOM),
        (RuntimeError("CUDA error: device-side assert triggered"), EndReason.CUDA_ERROR),
        (AcceleratorError("CUDA error: an illegal memory access"), EndReason.CUDA_ERROR),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), EndReason.CUDA_ERROR),
        (ValueError("shapes do not match"), EndReason.ERROR),
        (KeyError("lr"), EndReason.ERROR),
    ],
)
def test_classify_exception(exc: BaseException, reason: EndReason) -> None:
    assert classify_exception(exc) is reason
