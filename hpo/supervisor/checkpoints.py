"""Which checkpoint directory a trial gets, and when the supervisor removes it.

Every trial gets ``<root>/<number of the first attempt>/`` (recorded as ``checkpoint_dir``); a
retry inherits its original's. When a trial ends for good its directory is removed, except the
best trial's (``faults.keep_best_checkpoint``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from hpo.contract import Attr

if TYPE_CHECKING:
    import optuna

    from hpo.execution.protocol import AskedTrial

logger = logging.getLogger(__name__)


class CheckpointStore:
    """The supervisor's side: which directory a trial gets and when it is removed."""

    def __init__(self, root: Path | None, keep_best: bool = True) -> None:
        self.root = root
        self._keep_best = keep_best

    def dir_for(self, trial: AskedTrial) -> str | None:
        """The inherited directory of a retry, else a new one named by the trial's number."""
        if self.root is None:
            return None
        inherited = trial.user_attrs.get(Attr.CHECKPOINT_DIR)
        return str(inherited) if inherited else str(self.root / str(trial.number))

    def settle(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, retried: bool) -> None:
        """A trial ended: keep its directory for a retry or as the best one, else remove it."""
        path = trial.user_attrs.get(Attr.CHECKPOINT_DIR)
        if path is None or retried:
            return
        if trial.state == TrialState.COMPLETE and self._keep_best:
            if trial.number in _best_numbers(study):
                return  # the previous best's directory goes in the final sweep
        remove(path)

    def sweep(self, study: optuna.Study) -> None:
        """Remove directories no RUNNING or WAITING trial needs, keeping the best trial's."""
        if self.root is None or not self.root.is_dir():
            return
        keep = set()
        live = (TrialState.RUNNING, TrialState.WAITING)
        for trial in study.get_trials(deepcopy=False, states=live):
            keep.add(trial.user_attrs.get(Attr.CHECKPOINT_DIR))
        if self._keep_best and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            best = set(_best_numbers(study))
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                if trial.number in best:
                    keep.add(trial.user_attrs.get(Attr.CHECKPOINT_DIR))
        for child in self.root.iterdir():
            if child.is_dir() and str(child) not in keep:
                remove(str(child))
        if not any(self.root.iterdir()):
            self.root.rmdir()


def _best_numbers(study: optuna.Study) -> list[int]:
    """The best trial's number; with several objectives, those of the Pareto front."""
    if len(study.directions) > 1:
        return [t.number for t in study.best_trials]
    return [study.best_trial.number]


def remove(path: str) -> None:
    """Delete a checkpoint directory; a missing one is fine."""
    shutil.rmtree(path, ignore_errors=True)
    logger.debug("removed checkpoint %s", path)
