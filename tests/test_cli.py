"""User mistakes: one line on stderr, exit code 2, no database created or touched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import hpo_cmd, run_hpo


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["study=nope"], "unknown study 'nope'"),
        (["pruner=nope"], "unknown pruner 'nope'"),
        (["study=toy", "par=0"], "par must be an integer >= 1 or 'auto', got 0"),
        (
            ["study=toy", "study.objective=hpo.no_such_module:objective"],
            "cannot import objective 'hpo.no_such_module:objective'",
        ),
        (
            ["study=toy", "study.objective=hpo.studies.toy:no_such_function"],
            "has no attribute 'no_such_function'",
        ),
        (["study=toy", "study.space.x.low=10"], "study.space.x: low must be <= high"),
        (["study=toy", "study.space.family.choices=[]"], "study.space.family.choices"),
        (["study=toy", "study.space.x.type=gauss"], "study.space.x.type must be one of"),
    ],
)
def test_user_mistake_exits_2_with_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    result = run_hpo(tmp_path, *args, f"storage.dir={tmp_path / 'db'}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpo: error: "), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "db").exists()


def test_bad_objective_leaves_an_existing_database_untouched(
    tmp_path: Path, toy_args: list[str]
) -> None:
    assert run_hpo(tmp_path, *toy_args, "study.n_trials=2").returncode == 0
    db = tmp_path / "_optuna" / "toy.db"
    before = db.read_bytes()
    result = run_hpo(tmp_path, *toy_args, "study.n_trials=4", "study.objective=nope.nope:f")
    assert result.returncode == 2
    assert db.read_bytes() == before


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    cmd = hpo_cmd("study=nope")
    cmd.insert(cmd.index("tune"), "--debug")
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("hpo: error: unknown study")


def test_the_best_trial_line_shows_what_the_study_names_and_nothing_else(
    tmp_path: Path, toy_args: list[str]
) -> None:
    """The generic CLI names no study's attribute: ``study.show`` lists what to print."""
    plain = run_hpo(tmp_path, *toy_args, "study.n_trials=2")
    assert plain.returncode == 0, plain.stderr
    best = [line for line in plain.stdout.splitlines() if line.startswith("best trial")]
    assert len(best) == 1 and "(" not in best[0].split("|")[0], best
    shown = run_hpo(tmp_path, *toy_args, "study.n_trials=3", "study.show=[duration_s,nope]")
    assert shown.returncode == 0, shown.stderr
    best = [line for line in shown.stdout.splitlines() if line.startswith("best trial")]
    assert len(best) == 1 and "(duration_s " in best[0] and "nope" not in best[0], best
