"""Per-trial checkpoint directories: atomic writes for objectives, cleanup for the supervisor.

The supervisor gives every trial a directory ``<root>/<number of the first attempt>/`` and
records it as the ``checkpoint_dir`` user attribute; a retry of the trial inherits it, so an
objective that saves after every epoch resumes where the failed attempt stopped. An objective
that resumed records the epoch as ``resumed_from_epoch``. When a trial ends for good its
directory is removed, except the best trial's (``faults.keep_best_checkpoint``).

Nothing here imports torch: objectives pass their own writer to :func:`atomic_write`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig

logger = logging.getLogger(__name__)

DIR_ATTR = "checkpoint_dir"  # user attribute: the trial's checkpoint directory
RESUMED_ATTR = "resumed_from_epoch"  # user attribute: last epoch restored from a checkpoint


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` then rename, so readers see old or new, never half.

    The temporary file is in the same directory (a rename across file systems is not atomic)
    and is flushed to disk before the rename.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def save_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj)))


def load_json(path: Path) -> Any | None:
    """The JSON at ``path``, or None when there is none yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_root(cfg: DictConfig) -> Path | None:
    """``faults.checkpoint_dir``, else ``<storage.dir>/<study name>.ckpt``; None when off."""
    if not cfg.faults.checkpoints:
        return None
    if cfg.faults.checkpoint_dir:
        return Path(cfg.faults.checkpoint_dir).resolve()
    return (Path(cfg.storage.dir) / f"{cfg.study.name}.ckpt").resolve()


class CheckpointStore:
    """The supervisor's side: which directory a trial gets and when it is removed."""

    def __init__(self, root: Path | None, keep_best: bool = True) -> None:
        self.root = root
        self._keep_best = keep_best

    def dir_for(self, trial: optuna.Trial) -> str | None:
        """The inherited directory of a retry, else a new one named by the trial's number."""
        if self.root is None:
            return None
        inherited = trial.user_attrs.get(DIR_ATTR)
        return str(inherited) if inherited else str(self.root / str(trial.number))

    def settle(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, retried: bool) -> None:
        """A trial ended: keep its directory for a retry or as the best one, else remove it."""
        path = trial.user_attrs.get(DIR_ATTR)
        if path is None or retried:
            return
        if trial.state == TrialState.COMPLETE and self._keep_best:
            best = study.best_trial
            if best.number == trial.number:
                return  # the previous best's directory goes in the final sweep
        remove(path)

    def sweep(self, study: optuna.Study) -> None:
        """Remove directories no RUNNING or WAITING trial needs, keeping the best trial's."""
        if self.root is None or not self.root.is_dir():
            return
        keep = set()
        live = (TrialState.RUNNING, TrialState.WAITING)
        for trial in study.get_trials(deepcopy=False, states=live):
            keep.add(trial.user_attrs.get(DIR_ATTR))
        if self._keep_best and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            keep.add(study.best_trial.user_attrs.get(DIR_ATTR))
        for child in self.root.iterdir():
            if child.is_dir() and str(child) not in keep:
                remove(str(child))
        if not any(self.root.iterdir()):
            self.root.rmdir()


def remove(path: str) -> None:
    """Delete a checkpoint directory; a missing one is fine."""
    shutil.rmtree(path, ignore_errors=True)
    logger.debug("removed checkpoint %s", path)
