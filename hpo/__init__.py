"""hpo: memory-aware Optuna hyperparameter optimisation.

A supervisor runs trials of a search space declared in a Hydra config in worker processes (the
workers ask Optuna for them; the supervisor decides whether, where and when each runs),
measures their memory, and records how every trial ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError, HpoError, StudyAborted, TrialFailed
from hpo.execution.context import TrialContext, current_context, current_trial

if TYPE_CHECKING:  # the lazy exports below, as editors and type checkers should see them
    from hpo.api import load_study, tune
    from hpo.execution.spike import memory_spike
    from hpo.python import optimize

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``hpo.tune`` and ``hpo.load_study``, imported on first use: an objective that imports
    hpo for ``current_context`` does not load the supervisor."""
    if name in ("tune", "load_study"):
        from hpo import api

        return getattr(api, name)
    if name == "optimize":
        from hpo.python import optimize

        return optimize
    if name == "memory_spike":
        from hpo.execution.spike import memory_spike

        return memory_spike
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "HpoError",
    "StudyAborted",
    "TrialContext",
    "TrialFailed",
    "__version__",
    "current_context",
    "current_trial",
    "load_study",
    "memory_spike",
    "optimize",
    "tune",
]
