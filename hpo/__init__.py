"""hpo: memory-aware Optuna hyperparameter optimisation.

A supervisor asks Optuna for trials from a search space declared in a Hydra config, runs them
in worker processes, measures their memory, and records how every trial ended.
"""

from hpo.errors import ConfigError, HpoError, StudyAborted
from hpo.execution.context import TrialContext, current_context

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "HpoError",
    "StudyAborted",
    "TrialContext",
    "__version__",
    "current_context",
]
