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
    what a trial that ran out of its memory lost (its start-up and steps until then).

    A trial holds its reservation a little longer than its worker measures it running: from
    its admission, through its dispatch to the worker, to its end reaching the supervisor.
    That overhead (:meth:`held`) is paid by every attempt, a cap hit's too, which is what makes
    a cap hit of a trial with no start-up cost more than nothing."""

    def __init__(self, groups: Sequence[str]) -> None:
        self._groups = tuple(groups)
        self._seen: dict[tuple[Any, ...], list[float]] = defaultdict(list)
        self._lost: dict[tuple[Any, ...], list[float]] = defaultdict(list)
        self._overhead: list[float] = []  # held minus measured seconds, per ended attempt

    def held(self, held_s: float, attrs: Mapping[str, Any]) -> None:
        """An attempt held its reservation ``held_s`` seconds (admission to its end, as the
        supervisor saw them); ``attrs`` are what its worker measured."""
        seconds = attrs.get(Attr.DURATION_S)
        if seconds is not None and held_s >= 0:
            self._overhead.append(max(0.0, held_s - float(seconds)))

    def overhead_s(self) -> float:
        """Mean seconds an attempt holds its reservation beyond its measured duration (0 while
        none was seen)."""
        recent = self._overhead[-50:]
        return sum(recent) / len(recent) if recent else 0.0

    def observe(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        seconds = attrs.get(Attr.DURATION_S)
        if seconds is None:
            return
        if EndReason.measured_in(attrs):
            self._seen[self._key(params)].append(float(seconds))
        elif EndReason.of(attrs) in _LOST:
            self._lost[self._key(params)].append(float(seconds))

    def cap_hit_frac(self, params: Mapping[str, Any]) -> float | None:
        """What a cap hit of ``params``'s group holds its reservation for, over what a trial
        run to its end holds it for, each with the overhead of an attempt (:meth:`held`): from
        its group's cap hits and OOMs, else every group's (the start-up is much the same);
        None while nothing says."""
        expected = self.predict(params)
        lost = self._lost.get(self._key(params)) or [s for v in self._lost.values() for s in v]
        if expected is None or expected <= 0 or not lost:
            return None
        overhead = self.overhead_s()
        return min(1.0, (sum(lost) / len(lost) + overhead) / (expected + overhead))

    def predict(self, params: Mapping[str, Any]) -> float | None:
        """Expected seconds, or None while no trial of the group has finished."""
        seen = self._seen.get(self._key(params))
        return sum(seen) / len(seen) if seen else None

    def _key(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params.get(g) for g in self._groups)
