"""One logging set-up for the ``hpo`` package's log lines (the CLI's and the Python API's)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, quiet_if_configured: bool = False) -> None:
    """Log ``hpo.*`` to stderr as ``HH:MM:SS message`` at ``level``; Optuna's own INFO lines
    are silenced (hpo logs every trial itself). With ``quiet_if_configured`` (the Python API)
    an application that configured logging keeps its handlers."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = logging.getLogger("hpo")
    if quiet_if_configured and (root.handlers or logging.getLogger().handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
