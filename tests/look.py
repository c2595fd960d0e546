"""Helpers of the tests of the look-only commands (stats, status, dashboard, report)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import CONF, ROOT, _env, run_hpo


def look_cmd(command: str, *args: str) -> list[str]:
    """The command line of ``hpo <command>`` with the repo's config tree."""
    return [sys.executable, "-m", "hpo.cli", command, "--config-dir", str(CONF), *args]


def run_look(
    cwd: Path, command: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``hpo <command>`` to completion in ``cwd``."""
    return subprocess.run(
        look_cmd(command, *args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def make_toy_study(directory: Path, *extra: str) -> Path:
    """A finished toy study (some trials pruned, some failed) in ``directory/_optuna/toy.db``."""
    args = [
        "study=toy",
        f"storage.dir={directory / '_optuna'}",
        "study.epoch_s=0.01",
        "par=2",
        "study.n_trials=16",
        "study.error_rate=0.15",
        *extra,
    ]
    result = run_hpo(directory, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return directory / "_optuna" / "toy.db"


__all__ = ["CONF", "ROOT", "look_cmd", "make_toy_study", "run_look"]
