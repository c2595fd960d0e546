"""Any callable is an objective: Optuna's ``objective(trial)`` and ``objective(trial, cfg)``,
lambdas, closures, bound methods and functions of a script with no main guard, sent to the
workers by value. Real processes, scripts in a directory outside the repository, no
PYTHONPATH: the installed package only."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hpo
from hpo.config.by_value import pack, takes_cfg
from hpo.execution.context import current_trial
from tests.conftest import ROOT


def run_script(directory: Path, text: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``text`` as ``script.py`` in ``directory`` the way a user does (no PYTHONPATH)."""
    assert not directory.resolve().is_relative_to(ROOT)
    script = directory / "script.py"
    script.write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPO_CONFIG_DIR")}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )


NO_MAIN_GUARD = """
import threading

import hpo

OFFSET = 2.0  # a global of __main__ the objective uses


def one_arg(trial):
    x = trial.suggest_float("x", -10, 10)
    assert hpo.current_trial() is trial
    return (x - OFFSET) ** 2


def two_args(trial, cfg):
    return (trial.suggest_float("x", -10, 10) - OFFSET) ** 2 + cfg.study.n_trials


class Model:
    def __init__(self, shift):
        self.shift = shift

    def loss(self, trial):
        return abs(trial.suggest_int("k", 0, 9) - self.shift)


def make(scale):
    return lambda trial: scale * trial.suggest_float("x", -10, 10) ** 2


space = {"x": {"type": "float", "low": -10, "high": 10}}
for name, objective in [
    ("one_arg", one_arg),
    ("two_args", two_args),
    ("closure", make(3.0)),
    ("lambda", lambda trial: trial.suggest_float("x", -10, 10)),
    ("method", Model(4).loss),
]:
    study = hpo.tune(objective, n_trials=3, par=2, sampler="random", name=name)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    print(name, len(done), study.direction.name)
print("outside", hpo.current_trial())
"""


def test_any_callable_runs_from_a_script_without_a_main_guard(tmp_path: Path) -> None:
    proc = run_script(tmp_path, NO_MAIN_GUARD, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("one_arg", "two_args", "closure", "lambda", "method"):
        assert f"{name} 3 MINIMIZE" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "outside None" in proc.stdout
    assert "bootstrapping" not in proc.stderr


UNPICKLABLE = """
import threading

import hpo

lock = threading.Lock()


def objective(trial):
    with lock:
        return trial.suggest_float("x", 0, 1)


hpo.tune(objective, n_trials=2, par=2)
"""


def test_an_objective_that_cannot_be_pickled_is_one_line_and_nothing_starts(
    tmp_path: Path,
) -> None:
    proc = run_script(tmp_path, UNPICKLABLE)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hpo.errors.ConfigError: objective cannot be sent to the worker"), last
    assert "cannot pickle '_thread.lock' object" in last
    assert "worker" not in proc.stderr.replace(last, "")  # no worker started, no trial
    assert not (tmp_path / "_optuna").exists()


def test_an_unpicklable_objective_raises_before_anything_is_written(tmp_path: Path) -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(hpo.ConfigError, match=r"objective cannot be sent .* '_thread.lock'"):
        hpo.tune(lambda trial: bool(lock), n_trials=1, config_dir=str(tmp_path))
    with pytest.raises(hpo.ConfigError, match="sampler cannot be sent"):
        pack("sampler", lock)


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        (lambda trial: 0.0, False),
        (lambda trial, cfg: 0.0, True),
        (lambda trial, cfg=None: 0.0, True),
        (lambda *args: 0.0, True),
        (lambda trial, *, cfg=None: 0.0, False),
        (len, False),
    ],
)
def test_the_objective_gets_cfg_when_it_takes_a_second_argument(
    objective: object, expected: bool
) -> None:
    assert takes_cfg(objective) is expected  # type: ignore[arg-type]


def test_current_trial_is_none_outside_a_trial() -> None:
    assert current_trial() is None and hpo.current_trial() is None


@pytest.mark.parametrize(
    ("value", "n_objectives", "expected", "why"),
    [
        (1, 1, 1.0, None),
        ((1, 2.5), 2, [1.0, 2.5], None),
        ([0.5, float("inf")], 2, None, "expected 2 floats, finite"),
        ((1.0,), 2, None, "expected 2 floats"),
        ((1.0, 2.0), 1, None, "expected a float"),
        (float("nan"), 1, None, "expected a float, finite"),
    ],
)
def test_the_objective_returns_one_float_per_direction(
    value: object, n_objectives: int, expected: object, why: str | None
) -> None:
    from hpo.execution.runner import check_value

    checked, message = check_value(value, n_objectives)
    assert checked == expected
    assert (message is None) if why is None else (why in str(message))
