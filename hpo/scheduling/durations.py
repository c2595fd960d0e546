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


class DurationModel:
    """Mean duration of finished trials (completed or pruned) per group of memory params."""

    def __init__(self, groups: Sequence[str]) -> None:
        self._groups = tuple(groups)
        self._seen: dict[tuple[Any, ...], list[float]] = defaultdict(list)

    def observe(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        seconds = attrs.get(Attr.DURATION_S)
        if seconds is not None and EndReason.measured_in(attrs):
            self._seen[self._key(params)].append(float(seconds))

    def predict(self, params: Mapping[str, Any]) -> float | None:
        """Expected seconds, or None while no trial of the group has finished."""
        seen = self._seen.get(self._key(params))
        return sum(seen) / len(seen) if seen else None

    def _key(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params.get(g) for g in self._groups)
