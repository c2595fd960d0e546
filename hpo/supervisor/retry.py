"""Running a failed trial again: infrastructure retries, and the opt-in smaller-batch retry.

A worker that died, a poisoned CUDA context or (if configured) a timeout says nothing about the
parameters, so the trial is run again with the same ones: the supervisor enqueues a copy with
``retry_of`` (the failed trial's number), ``attempt`` and the failed trial's ``checkpoint_dir``.
The copy is a WAITING trial in the storage, so it survives a supervisor restart and any
supervisor of the study may pick it up. ``oom`` and ``error`` come from the parameters and are
never retried as they are, but an OOM of an objective that accumulates gradients
(``study.memory.accumulation``) is retried with the same parameters and twice the micro-batches
(``retry_kind=accumulation``), and with ``memory.oom_retry_halved_batch`` one is retried once
with half the batch size instead (``retry_kind=halved_batch``). A trial that needed more than
its own cap under safe overcommit (``cap_exceeded``) is re-queued at once with the same
parameters and what it measured it needs (``retry_kind=cap_exceeded``, ``cap_need_mib``), which
it then reserves; it uses up no retry budget and never counts as a failure of the study.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.distributions import CategoricalDistribution, IntDistribution

from hpo.contract import Attr, EndReason
from hpo.memory.micro import split

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

    from hpo.config.settings import Settings

logger = logging.getLogger(__name__)

BATCH_PARAM = "batch_size"  # the parameter the halved-batch retry halves


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

    def decide(
        self, reason: EndReason, trial: optuna.trial.FrozenTrial, charged: bool = True
    ) -> RetryDecision:
        """``charged=False``: the failure was not the trial's (its supervisor died), so its
        retry budget is not consumed."""
        if reason not in self.retry_on:
            return RetryDecision.NOT_RETRYABLE
        if charged and attempt_of(trial) > self.max_retries:
            return RetryDecision.EXHAUSTED
        return RetryDecision.RETRY


def attempt_of(trial: optuna.trial.FrozenTrial) -> int:
    """1 for a first attempt, 2 for its first retry, ..."""
    return int(trial.user_attrs.get(Attr.ATTEMPT, 1))


def enqueue_retry(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, charged: bool = True
) -> None:
    """Queue the failed ``trial``'s parameters again, carrying its checkpoint directory; an
    uncharged retry keeps the failed trial's attempt number."""
    attempt = attempt_of(trial) + (1 if charged else 0)
    attrs: dict[str, object] = {Attr.RETRY_OF: trial.number, Attr.ATTEMPT: attempt}
    if Attr.CHECKPOINT_DIR in trial.user_attrs:
        attrs[Attr.CHECKPOINT_DIR] = trial.user_attrs[Attr.CHECKPOINT_DIR]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    logger.info(
        "trial %d will be retried (attempt %d) with the same parameters",
        trial.number,
        attrs[Attr.ATTEMPT],
    )


def halved_batch(
    params: Mapping[str, Any], space: Mapping[str, BaseDistribution]
) -> dict[str, Any] | None:
    """``params`` with half the batch size, if the space allows that value; else None."""
    dist = space.get(BATCH_PARAM)
    if BATCH_PARAM not in params or dist is None:
        return None
    half = int(params[BATCH_PARAM]) // 2
    if isinstance(dist, CategoricalDistribution):
        allowed = half in dist.choices
    elif isinstance(dist, IntDistribution):
        allowed = half >= dist.low
    else:
        allowed = False
    if half < 1 or not allowed:
        return None
    return {**params, BATCH_PARAM: half}


def as_asked(run_params: Mapping[str, Any], batch: str, steps: int) -> dict[str, Any]:
    """A trial's parameters as the sampler asked them: the batch it ran in ``steps``
    micro-batches whole again."""
    params = dict(run_params)
    if steps > 1 and batch in params:
        params[batch] = int(params[batch]) * steps
    return params


def retry_after_oom(
    study: optuna.Study,
    number: int,
    run_params: Mapping[str, Any],
    attrs: Mapping[str, Any],
    settings: Settings,
) -> bool:
    """After trial ``number`` ran out of memory: for an objective that accumulates gradients,
    queue the same parameters with twice the micro-batches (while the batch divides); else,
    if ``memory.oom_retry_halved_batch``, with half the batch size. False if neither."""
    study_settings = settings.study
    batch, most = study_settings.batch_param, study_settings.max_accum_steps
    steps = int(attrs.get(Attr.ACCUM_STEPS, 1))
    if most and batch in run_params:
        params = as_asked(run_params, batch, steps)
        if steps * 2 <= most and split(params, batch, steps * 2) is not None:
            more = {Attr.RETRY_OF: number, Attr.RETRY_KIND: "accumulation"}
            study.enqueue_trial(params, user_attrs={**more, Attr.ACCUM_STEPS: steps * 2})
            logger.info("trial %d ran out of memory; retrying with %d micro-batches of %s",
                        number, steps * 2, int(params[batch]) // (steps * 2))  # fmt: skip
            return True
        run_params = params
    if settings.memory.oom_retry_halved_batch:
        return retry_with_half_batch(study, number, run_params, study_settings.space)
    return False


def retry_with_half_batch(
    study: optuna.Study,
    number: int,
    params: Mapping[str, Any],
    space: Mapping[str, BaseDistribution],
) -> bool:
    """Queue trial ``number``'s parameters with half its batch size; False if not possible."""
    smaller = halved_batch(params, space)
    if smaller is None:
        logger.info("trial %d ran out of memory; no smaller batch size to retry with", number)
        return False
    study.enqueue_trial(
        smaller, user_attrs={Attr.RETRY_OF: number, Attr.RETRY_KIND: "halved_batch"}
    )
    logger.info(
        "trial %d ran out of memory; retrying with batch_size=%s", number, smaller[BATCH_PARAM]
    )
    return True


def requeue_after_cap(
    study: optuna.Study,
    number: int,
    run_params: Mapping[str, Any],
    attrs: Mapping[str, Any],
    need_bytes: float,
    settings: Settings,
) -> None:
    """Queue trial ``number``, which needed more than its cap (``cap_exceeded``), again at
    once: the same parameters (as the sampler asked them, split as they ran), its checkpoint
    directory, and ``need_bytes``, what it measured it needs, as its new reservation."""
    steps = int(attrs.get(Attr.ACCUM_STEPS, 1))
    params = as_asked(run_params, settings.study.batch_param, steps)
    more: dict[str, Any] = {
        Attr.RETRY_OF: number,
        Attr.RETRY_KIND: EndReason.CAP_EXCEEDED.value,
        Attr.CAP_NEED_MIB: round(need_bytes / 2**20, 1),
        Attr.ATTEMPT: int(attrs.get(Attr.ATTEMPT, 1)),
    }
    if steps > 1:
        more[Attr.ACCUM_STEPS] = steps
    if attrs.get(Attr.CHECKPOINT_DIR) is not None:
        more[Attr.CHECKPOINT_DIR] = attrs[Attr.CHECKPOINT_DIR]
    study.enqueue_trial(params, user_attrs=more)
    logger.info(
        "trial %d needed more than its cap (%.0f MiB); re-queued to reserve that",
        number,
        need_bytes / 2**20,
    )
