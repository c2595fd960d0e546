"""The opt-in answer to an OOM: run the same configuration again with half the batch size."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna

logger = logging.getLogger(__name__)

BATCH_PARAM = "batch_size"


def halved_batch(params: Mapping[str, Any], space: Mapping[str, Any]) -> dict[str, Any] | None:
    """``params`` with half the batch size, if the space allows that value; else None."""
    if BATCH_PARAM not in params or BATCH_PARAM not in space:
        return None
    half = int(params[BATCH_PARAM]) // 2
    dist = space[BATCH_PARAM]
    allowed = (
        half in list(dist.choices)
        if dist.get("choices")
        else dist.low is not None and half >= dist.low
    )
    if half < 1 or not allowed:
        return None
    return {**params, BATCH_PARAM: half}


def retry_with_half_batch(
    study: optuna.Study, number: int, params: Mapping[str, Any], space: Mapping[str, Any]
) -> bool:
    """Queue trial ``number``'s parameters with half its batch size; False if not possible."""
    smaller = halved_batch(params, space)
    if smaller is None:
        logger.info("trial %d ran out of memory; no smaller batch size to retry with", number)
        return False
    study.enqueue_trial(smaller, user_attrs={"retry_of": number, "retry_kind": "halved_batch"})
    logger.info(
        "trial %d ran out of memory; retrying with batch_size=%s", number, smaller[BATCH_PARAM]
    )
    return True
