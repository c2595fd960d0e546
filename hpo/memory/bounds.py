"""Bounds on a configuration's memory from what ran, whatever a fit says.

Memory is monotone in each scaling parameter and its run-to-run noise relative: a
configuration needs at least what one no larger in any parameter measured
(:func:`dominated_mean`) and, up to one run's noise, no more than one at least as large in
every parameter (:func:`dominating_mean`, :func:`capped_by_runs`). Where a group was measured at
fewer than :data:`CURVED` values of a parameter, nothing shows how memory grows in it
(:func:`unshown`), and the upper estimate allows up to :data:`MAX_POWER` there
(:func:`unshown_floor`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hpo.memory.fit import Point


def dominated_mean(means: Sequence[Point], s: Sequence[float]) -> float:
    """The largest mean measured peak (``means``: one per configuration) of a configuration no
    larger than ``s`` in any scaling parameter: memory is monotone, so ``s`` needs at least
    that on average."""
    below = [y for c, y in means if all(a <= b for a, b in zip(c, s, strict=True))]
    return max(below, default=0.0)


def dominating_mean(means: Sequence[Point], s: Sequence[float]) -> float | None:
    """The smallest mean measured peak of a configuration at least as large as ``s`` in every
    scaling parameter (memory is monotone: ``s`` needs no more on average), or None."""
    above = [y for c, y in means if all(a >= b for a, b in zip(c, s, strict=True))]
    return min(above, default=None)


def capped_by_runs(
    configs: Mapping[tuple[float, ...], Sequence[float]],
    s: Sequence[float],
    single: float,
    floor: float,
) -> float | None:
    """The least upper bound, from its own runs, of a configuration run at least as large as
    ``s`` in every scaling parameter (``s`` itself included), or None: the mean of its runs
    plus the noise of one run about that mean (at least ``floor``), never below a run it
    had. Memory is monotone and its noise relative, so a run of ``s`` stays under it as a new
    run of that configuration would. ``single`` is the noise of one run about its true mean;
    the mean's own error adds to it: in full after one run (the two quantiles add; nothing
    averages out, and adding them in quadrature falls short under flat-tailed noise), and
    in quadrature over several runs, whose mean averages it."""

    def bound(ys: Sequence[float]) -> float:
        n = len(ys)
        noise = single * (2.0 if n == 1 else math.sqrt(1 + 1 / n))
        return max(max(ys), sum(ys) / n * (1 + max(floor, noise)))

    caps = [
        bound(ys)
        for c, ys in configs.items()
        if ys and all(a >= b for a, b in zip(c, s, strict=True))
    ]
    return min(caps, default=None)


CURVED = 3  # values of a parameter a fit needs to see curvature in it
MAX_POWER = 3  # the steepest growth assumed in one such parameter (a volume: its side cubed)


def unshown(means: Sequence[Point]) -> set[int]:
    """The scaling parameters (by index) measured at fewer than :data:`CURVED` values."""
    n = len(means[0][0]) if means else 0
    return {i for i in range(n) if len({c[i] for c, _ in means}) < CURVED}


def unshown_floor(means: Sequence[Point], s: Sequence[float]) -> float:
    """The least the upper estimate of ``s`` may be where it is larger than what its group
    measured in a scaling parameter measured at fewer than :data:`CURVED` values, which
    cannot tell a line from a curve (``means``: each configuration's mean; 0.0: no such
    parameter). From a configuration that differs from ``s`` only by being smaller in such
    parameters, its mean grown up to :data:`MAX_POWER` in each: a bound of ``s`` if memory
    grows no faster (the least of them); else, beyond the largest value of such a parameter,
    the group's largest mean grown as much (no fit knows that direction)."""
    if not means:
        return 0.0
    few = unshown(means)

    def growth(c: Sequence[float]) -> float:
        return math.prod((s[i] / c[i]) ** MAX_POWER for i in few if s[i] > c[i] > 0)

    bounds = [
        y * growth(c)
        for c, y in means
        if all(c[i] == s[i] if i not in few else c[i] <= s[i] for i in range(len(s)))
    ]
    if bounds:
        return min(bounds)
    tops = [max(c[i] for c, _ in means) for i in range(len(s))]
    beyond = growth(tops)
    return max(y for _, y in means) * beyond if beyond > 1 else 0.0
