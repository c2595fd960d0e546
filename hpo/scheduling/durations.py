"""How long a trial is expected to run, learned per memory group from finished trials.

Admission uses it for backfill around a protected trial (see :mod:`hpo.scheduling.backlog`): a later
trial may use memory set aside for the protected one if it is expected to end before the
running trials in the protected one's way do, like EASY backfilling on batch clusters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from hpo.contract import Attr, EndReason

_LOST = (EndReason.CAP_EXCEEDED, EndReason.OOM)  # what a cap hit loses is measured on these


class DurationModel:
    """Mean duration of finished trials (completed or pruned) per group of memory params, and
    what a trial that ran out of its memory lost (its start-up and steps until then)."""

    def __init__(self, groups: Sequence[str]) -> None:
        self._groups = tuple(groups)
        self._seen: dict[tuple[Any, ...], list[float]] = defaultdict(list)
        self._lost: dict[tuple[Any, ...], list[float]] = defaultdict(list)

    def observe(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        seconds = attrs.get(Attr.DURATION_S)
        if seconds is None:
            return
        if EndReason.measured_in(attrs):
            self._seen[self._key(params)].append(float(seconds))
        elif EndReason.of(attrs) in _LOST:
            self._lost[self._key(params)].append(float(seconds))

    def cap_hit_frac(self, params: Mapping[str, Any]) -> float | None:
        """What a cap hit of ``params``'s group loses, over its expected duration: from its
        group's cap hits and OOMs, else every group's (the start-up is much the same); None
        while nothing says."""
        expected = self.predict(params)
        lost = self._lost.get(self._key(params)) or [s for v in self._lost.values() for s in v]
        if expected is None or expected <= 0 or not lost:
            return None
        return min(1.0, sum(lost) / len(lost) / expected)

    def predict(self, params: Mapping[str, Any]) -> float | None:
        """Expected seconds, or None while no trial of the group has finished."""
        seen = self._seen.get(self._key(params))
        return sum(seen) / len(seen) if seen else None

    def _key(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params.get(g) for g in self._groups)
