"""The retry policy: which failures are retried, how often, and what a retry carries."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.config import compose
from hpo.contract import EndReason
from hpo.errors import ConfigError
from hpo.supervisor.retry import RetryDecision, RetryPolicy, enqueue_retry
from tests.conftest import CONF, settings_of

POLICY = RetryPolicy(frozenset({EndReason.WORKER_DIED, EndReason.CUDA_ERROR}), max_retries=2)


def _failed(attempt: int | None = None) -> optuna.trial.FrozenTrial:
    attrs = {"checkpoint_dir": "/ckpt/7"}
    if attempt is not None:
        attrs["attempt"] = attempt
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL,
        params={"x": 0.5},
        distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        user_attrs=attrs,
    )


@pytest.mark.parametrize(
    ("reason", "attempt", "decision"),
    [
        (EndReason.WORKER_DIED, None, RetryDecision.RETRY),
        (EndReason.CUDA_ERROR, 2, RetryDecision.RETRY),
        (EndReason.WORKER_DIED, 3, RetryDecision.EXHAUSTED),
        (EndReason.TIMEOUT, None, RetryDecision.NOT_RETRYABLE),  # not in retry_on
        (EndReason.OOM, None, RetryDecision.NOT_RETRYABLE),
        (EndReason.ERROR, None, RetryDecision.NOT_RETRYABLE),
        (EndReason.INTERRUPTED, None, RetryDecision.NOT_RETRYABLE),
    ],
)
def test_decide(reason: EndReason, attempt: int | None, decision: RetryDecision) -> None:
    assert POLICY.decide(reason, _failed(attempt)) is decision


def test_zero_retries_never_retries() -> None:
    faults = settings_of("study=toy", "faults.max_retries=0").faults
    policy = RetryPolicy(faults.retry_on, faults.max_retries)
    assert policy.decide(EndReason.WORKER_DIED, _failed()) is RetryDecision.EXHAUSTED


def test_enqueued_retry_has_the_parameters_retry_of_and_checkpoint() -> None:
    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    first = study.ask(dist)
    first.set_user_attr("checkpoint_dir", "/ckpt/0")
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    enqueue_retry(study, study.trials[0])
    retry = study.ask(dist)
    assert retry.params == first.params
    assert retry.user_attrs == {"retry_of": 0, "attempt": 2, "checkpoint_dir": "/ckpt/0"}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("faults.retry_on=[error]", "faults.retry_on may hold .*got 'error'"),
        ("faults.max_retries=-1", "faults.max_retries must be >= 0, got -1"),
        ("faults.trial_timeout_s=-5", "faults.trial_timeout_s must be >= 0, got -5"),
        ("faults.heartbeat_interval_s=0", "faults.heartbeat_interval_s must be >= 1, got 0"),
        ("faults.grace_period_s=5", "faults.grace_period_s must exceed .* got 5"),
    ],
)
def test_bad_fault_config_is_a_config_error(override: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        compose(["study=toy", override], str(CONF))
