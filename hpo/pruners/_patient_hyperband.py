"""Hyperband that holds its fire while a trial is still improving."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from optuna.pruners import HyperbandPruner
from optuna.study import StudyDirection

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


class PatientHyperbandPruner(HyperbandPruner):
    """Hyperband that may prune a trial only after ``patience`` epochs without improvement.

    A trial that improved within its last ``patience`` reports is never pruned. Once it has
    stalled, Hyperband decides exactly as it would alone: the trial's latest value is ranked
    against the other trials of its bracket at the rung it has reached.

    This is one class and not ``PatientPruner(HyperbandPruner(...))`` on purpose: Optuna hands a
    sampler only the trials of the trial's own bracket when ``isinstance(study.pruner,
    HyperbandPruner)``, and a wrapper silently loses that. The brackets are also set up eagerly
    (plain Hyperband does it on its first ``prune`` call), so trials asked for before any
    pruning, as the supervisor does, already get their own bracket.

    Args:
        min_resource: Epochs before the first rung.
        max_resource: Epochs of a trial that is never pruned.
        reduction_factor: A rung keeps the best ``1 / reduction_factor`` of its trials.
        patience: Reports without improvement before Hyperband is consulted (0 = plain Hyperband).
        min_delta: Smallest change of the value that counts as an improvement.
        bootstrap_count: Trials a rung needs before it can prune (as in Hyperband).
    """

    def __init__(
        self,
        min_resource: int = 3,
        max_resource: int = 12,
        reduction_factor: int = 3,
        patience: int = 4,
        min_delta: float = 0.0,
        bootstrap_count: int = 0,
    ) -> None:
        if min_resource < 1:
            raise ValueError(f"min_resource must be >= 1, got {min_resource}")
        if not isinstance(max_resource, int) or max_resource < min_resource:
            raise ValueError(f"max_resource must be an int >= min_resource, got {max_resource!r}")
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {reduction_factor}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        if not (min_delta >= 0 and math.isfinite(min_delta)):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta}")
        super().__init__(
            min_resource=min_resource,
            max_resource=max_resource,
            reduction_factor=reduction_factor,
            bootstrap_count=bootstrap_count,
        )
        self._patience = patience
        self._min_delta = min_delta
        self._try_initialization(None)  # type: ignore[arg-type]  # unused for an int max_resource

    @property
    def patience(self) -> int:
        return self._patience

    @property
    def n_brackets(self) -> int:
        assert self._n_brackets is not None
        return self._n_brackets

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        values = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        if not self.stalled(values, study.direction):
            return False
        return super().prune(study, trial)

    def bracket_of(self, study: Study, trial: Any) -> int:
        """The Hyperband bracket of ``trial`` (anything with its ``number``; stable for a study
        name and trial number)."""
        # Hyperband reads only the trial's number (and the study's name) to pick its bracket.
        return self._get_bracket_id(study, trial)  # type: ignore[arg-type]

    def stalled(self, values: list[float], direction: StudyDirection) -> bool:
        """True when the last ``patience`` values brought no improvement over the best before.

        A value improves on the best so far when it is better by more than ``min_delta``;
        NaN never improves. With fewer than ``patience + 1`` values a trial is not stalled.
        """
        sign = 1.0 if direction == StudyDirection.MAXIMIZE else -1.0
        best: float | None = None
        best_index = -1
        for index, value in enumerate(values):
            if math.isnan(value):
                continue
            if best is None or sign * (value - best) > self._min_delta:
                best, best_index = value, index
        if best is None:
            return len(values) > self._patience
        return len(values) - 1 - best_index >= self._patience
