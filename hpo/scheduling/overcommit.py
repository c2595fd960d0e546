"""Safe overcommit: reserve a quantile of a trial's memory estimate, under a cap to match.

Memory-aware admission used to reserve every trial's upper estimate (plus a margin in its
cap), so two trials that would have fit side by side often did not start together. Under safe
overcommit (``memory.overcommit``) a trial reserves, and its process is capped at, a quantile
of its estimate instead; the caps on a card never add up to more than its budget (a spike slot
apart, which the trials' declared spikes take in turns), so a trial that needs more than its
cap fails alone, at the allocation that overran (``cap_exceeded``): no neighbour loses an
epoch. It is re-queued at once with what it measured as its reservation.

Which quantile: the estimate says where the trial's need lies (the point, a median; the upper
estimate, the memory gate's 95 % quantile), read as a normal distribution. Reserving ``r``
costs the card ``r × T`` memory-seconds when the trial fits (``T`` its duration), and
``r × c + u × T`` when it does not (``c`` what a cap hit loses: its start-up and the steps
before the overrun, as measured for its group; ``u`` the retry's reservation, the upper
estimate). :func:`reservation` picks the ``r`` between the point and the upper estimate that
costs least on average per trial run to its end: memory-bound packing does the most useful
work per second where the memory-seconds per finished trial are fewest. With no spread (an
oracle's, or a trial measured again and again) it is the upper estimate, as before.
"""

from __future__ import annotations

import math
from dataclasses import replace

from hpo.memory import Estimate, EstimateSource

Z_UPPER = 1.645  # the upper estimate is the 95 % quantile of the need (the gate's quantile)
DEFAULT_COST_FRAC = 0.1  # a cap hit's loss as a share of a trial's duration, before measured
_STEPS = 40  # candidate reservations between the point and the upper estimate


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def expected_cost(r: float, point: float, upper: float, cost_frac: float) -> float:
    """Memory-seconds per trial run to its end, in units of its duration, when it reserves
    ``r`` (module docstring)."""
    sigma = (upper - point) / Z_UPPER
    if sigma <= 0:
        return r if r >= point else r * cost_frac + upper
    miss = 1.0 - _normal_cdf((r - point) / sigma)
    return r * (1.0 - miss) + miss * (r * cost_frac + upper)


def reservation(point: float, upper: float, cost_frac: float) -> float:
    """The reservation between ``point`` and ``upper`` with the least expected cost
    (:func:`expected_cost`); ``upper`` when there is no spread."""
    if upper <= point:
        return upper
    best, best_cost = upper, expected_cost(upper, point, upper, cost_frac)
    for i in range(_STEPS):
        r = point + (upper - point) * i / _STEPS
        cost = expected_cost(r, point, upper, cost_frac)
        if cost < best_cost - 1e-12 * upper:
            best, best_cost = r, cost
    return best


def shaded(estimate: Estimate, cost_frac: float | None) -> Estimate:
    """``estimate`` with its upper bytes lowered to the reservation overcommit picks (what the
    trial reserves and is capped at); unchanged for an estimate given from outside with no
    spread. ``cost_frac`` is a cap hit's loss over the trial's duration (None: not measured,
    :data:`DEFAULT_COST_FRAC`)."""
    frac = DEFAULT_COST_FRAC if cost_frac is None else max(0.0, cost_frac)
    upper = reservation(estimate.point_bytes, estimate.upper_bytes, frac)
    if upper >= estimate.upper_bytes:
        return estimate
    spike = min(estimate.spike_bytes, upper)
    floor = min(estimate.spike_floor_bytes, spike)
    return replace(estimate, upper_bytes=upper, spike_bytes=spike, spike_floor_bytes=floor)


def with_need(estimate: Estimate | None, need_bytes: float) -> Estimate:
    """The estimate of a trial re-queued after a cap hit: it needs at least ``need_bytes``
    (what its original measured), with the estimate's relative spread above that."""
    if estimate is None:
        return Estimate(need_bytes, need_bytes * 1.05, EstimateSource.OOM_BOUND, 0)
    ratio = estimate.upper_bytes / estimate.point_bytes if estimate.point_bytes > 0 else 1.0
    point = max(estimate.point_bytes, need_bytes)
    upper = max(estimate.upper_bytes, need_bytes * max(1.0, ratio))
    return replace(estimate, point_bytes=point, upper_bytes=upper)
