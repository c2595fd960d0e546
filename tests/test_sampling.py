"""FeasibleSampler: proposals the memory model says cannot fit are drawn again."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hpo.memory.sampling import FeasibleSampler

SPACE = {
    "model": CategoricalDistribution(["small", "large"]),
    "batch_size": CategoricalDistribution([8, 64]),
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
}


def _fits(params: dict) -> bool:
    return not (params["model"] == "large" and params["batch_size"] == 64)


def _proposals(sampler: optuna.samplers.BaseSampler, n: int) -> list[dict]:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask(SPACE)
        out.append(trial.params)
        # as the supervisor reports a pre-pruned trial: infeasible through set_constraint
        trial.set_constraint("memory", -1.0 if _fits(trial.params) else 1.0)
        study.tell(
            trial,
            trial.params["lr"] if _fits(trial.params) else None,
            state=None if _fits(trial.params) else optuna.trial.TrialState.PRUNED,
        )
    return out


def test_relative_proposals_that_cannot_fit_are_redrawn() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def tpe() -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(n_startup_trials=4, multivariate=True, seed=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate
        sampler = FeasibleSampler(tpe(), _fits)
        wrapped = sum(not _fits(p) for p in _proposals(sampler, 40)[4:])
        plain = sum(not _fits(p) for p in _proposals(tpe(), 40)[4:])
    assert sampler.redrawn > 0 and wrapped < plain


def test_after_max_tries_the_last_proposal_is_returned() -> None:
    class Always(optuna.samplers.RandomSampler):
        def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
            return SPACE

        def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
            return {"model": "large", "batch_size": 64, "lr": 1e-3}

    sampler = FeasibleSampler(Always(seed=0), _fits, max_tries=3)
    (params,) = _proposals(sampler, 1)
    assert params["model"] == "large" and sampler.redrawn == 3


def test_max_tries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tries must be >= 1, got 0"):
        FeasibleSampler(optuna.samplers.RandomSampler(), _fits, max_tries=0)
