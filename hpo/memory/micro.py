"""Micro-batching as a memory lever: a batch that does not fit runs as ``k`` micro-batches.

An objective that supports gradient accumulation (``study.memory.accumulation``) trains each
optimizer step on ``k`` micro-batches of ``batch / k`` examples, the same effective batch and
learning result with the memory of the micro-batch. Admission picks the fewest micro-batches
(``k`` a power of 2) whose estimate can run at all; a trial is pre-pruned only when none
can. Memory is estimated, measured and learned at the micro-batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpo.contract import Decision
from hpo.memory.gate import MemoryGate, Verdict


def split(params: Mapping[str, Any], batch_param: str, k: int) -> dict[str, Any] | None:
    """``params`` with ``batch_param`` divided ``k`` ways, if it divides evenly; else None."""
    batch = int(params[batch_param])
    if k < 1 or batch % k or batch // k < 1:
        return None
    return {**params, batch_param: batch // k}


@dataclass(frozen=True)
class Choice:
    """How a trial runs: ``steps`` micro-batches of ``params`` (at the micro-batch), and the
    gate's verdict on that."""

    steps: int
    params: dict[str, Any]
    verdict: Verdict


def choose(
    gate: MemoryGate,
    params: Mapping[str, Any],
    batch_param: str,
    max_steps: int,
    min_steps: int = 1,
) -> Choice:
    """The fewest micro-batches from ``min_steps`` (a retry after an OOM asks for more) whose
    point estimate fits what a lone trial may hold (a whole batch estimated beyond that, by
    an extrapolation too loose to pre-prune it, would most likely run out of memory where a
    split would not). Without one,
    the fewest the gate does not pre-prune; with none, the first tried (pre-pruned).
    ``max_steps`` 0 or a parameter without ``batch_param``: whole."""
    if max_steps < 1 or batch_param not in params:
        return Choice(1, dict(params), gate.check(params))
    tried: list[Choice] = []
    k = max(1, min_steps)
    while k <= max(max_steps, min_steps):
        run = split(params, batch_param, k)
        if run is None:
            break
        choice = Choice(k, run, gate.check(run))
        tried.append(choice)
        if choice.verdict.decision is not Decision.PRE_PRUNE and _fits(gate, choice.verdict):
            return choice
        k *= 2
    runnable = [t for t in tried if t.verdict.decision is not Decision.PRE_PRUNE]
    if runnable:
        return runnable[0]
    if not tried:  # not even min_steps divides the batch: run it whole
        return Choice(1, dict(params), gate.check(params))
    return tried[0]


def _fits(gate: MemoryGate, verdict: Verdict) -> bool:
    """Nothing measured (it runs whole to be measured; an estimate from settled trials alone,
    source ``settled``, is no measurement), or its point estimate within what a lone trial
    may hold (an upper estimate over the budget only makes it run alone)."""
    estimate, alone = verdict.estimate, gate.alone_bytes
    if estimate is None or alone is None or estimate.source.provisional:
        return True
    return estimate.point_bytes <= alone
