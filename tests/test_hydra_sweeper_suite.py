"""Hydra's own test suite for launchers and sweepers (``hydra.test_utils``), run with
``hydra/sweeper=hpo``: job names, sweep and job directories (``hydra.job.chdir``), the original
working directory and ``to_absolute_path`` inside a job, each through a real app process.

The suite's tasks write what they see to a file and return None, which is no objective value:
their one trial fails (``max_failure_rate=1.0`` lets it, and one failure ends the sweep), and
the suite checks what the job saw."""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite

HPO_SWEEP = [
    "-m",
    "hydra/sweeper=hpo",
    "hydra.sweeper.n_trials=1",
    "hydra.sweeper.n_jobs=1",
    "hydra.sweeper.max_failure_rate=1.0",
    "+hydra.sweeper.hpo.max_failures_in_a_row=1",
    # a new study each run: a suite test that runs its app twice in one directory expects job 0
    # both times, where hpo would resume the study (trial 1, in .../1)
    "hydra.sweeper.study_name=suite_${now:%H%M%S%f}",
]


@pytest.mark.parametrize(("task_launcher_cfg", "extra_flags"), [({}, HPO_SWEEP)])
class TestHpoSweeperIntegration(IntegrationTestSuite):
    """Every trial is a Hydra job as Hydra's basic launcher would run it."""
