"""Retries of trials that failed for infrastructure reasons, with the same parameters.

A worker that died, a poisoned CUDA context or (if configured) a timeout says nothing about
the parameters, so the trial is run again: the supervisor enqueues a copy of its parameters
with ``retry_of`` (the number of the failed trial), ``attempt`` and the failed trial's
``checkpoint_dir``. The copy is a WAITING trial in the storage, so it survives a supervisor
restart and any supervisor of the study may pick it up. ``oom`` and ``error`` come from the
parameters and are never retried.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpo.checkpoint import DIR_ATTR
from hpo.outcome import EndReason

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

RETRY_OF_ATTR = "retry_of"  # user attribute of a retry: the number of the trial it repeats
ATTEMPT_ATTR = "attempt"  # user attribute of a retry: 2 for the first retry, 3 for the next...


class RetryDecision(str, enum.Enum):
    """What happens after a trial failed."""

    RETRY = "retry"  # enqueue the same parameters again
    NOT_RETRYABLE = "not_retryable"  # the failure comes from the parameters or the user
    EXHAUSTED = "exhausted"  # the trial already had faults.max_retries retries


@dataclass(frozen=True)
class RetryPolicy:
    """Which end reasons are retried, and how often."""

    retry_on: frozenset[EndReason]
    max_retries: int  # retries after the first attempt

    @classmethod
    def from_conf(cls, faults: object) -> RetryPolicy:
        reasons = frozenset(EndReason(r) for r in faults.retry_on)  # type: ignore[attr-defined]
        return cls(reasons, int(faults.max_retries))  # type: ignore[attr-defined]

    def decide(self, reason: EndReason, trial: optuna.trial.FrozenTrial) -> RetryDecision:
        if reason not in self.retry_on:
            return RetryDecision.NOT_RETRYABLE
        if attempt_of(trial) > self.max_retries:
            return RetryDecision.EXHAUSTED
        return RetryDecision.RETRY


def attempt_of(trial: optuna.trial.FrozenTrial) -> int:
    """1 for a first attempt, 2 for its first retry, ..."""
    return int(trial.user_attrs.get(ATTEMPT_ATTR, 1))


def enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue the failed ``trial``'s parameters again, carrying its checkpoint directory."""
    attrs: dict[str, object] = {RETRY_OF_ATTR: trial.number, ATTEMPT_ATTR: attempt_of(trial) + 1}
    if DIR_ATTR in trial.user_attrs:
        attrs[DIR_ATTR] = trial.user_attrs[DIR_ATTR]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    logger.info(
        "trial %d will be retried (attempt %d) with the same parameters",
        trial.number,
        attrs[ATTEMPT_ATTR],
    )
