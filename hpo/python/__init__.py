"""The Python door onto hpo's engine for Optuna users: ``hpo.optimize(study, objective, …)``,
a drop-in for ``study.optimize``, with its run watcher and its progress in a notebook."""

from __future__ import annotations

from hpo.python.optimize import optimize

__all__ = ["optimize"]
