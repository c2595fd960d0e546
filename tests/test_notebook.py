"""A notebook, executed headless with nbclient in a directory outside the repository: the
objective is defined in a cell, the progress shows in the cell, interrupting the kernel stops
the run (trials interrupted, no worker left) and running the cell again goes on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, query

CELLS = [
    "import time\nimport optuna\nimport psutil\nimport hpo\nOFFSET = 2.0",
    # the objective, defined in a cell and using another cell's global
    "def objective(trial):\n"
    "    x = trial.suggest_float('x', -10, 10)\n"
    "    time.sleep(SLEEP)\n"
    "    return (x - OFFSET) ** 2",
    "SLEEP = 0.0\nstudy = optuna.create_study(study_name='nb')\n"
    "hpo.optimize(study, objective, n_trials=4, par=2)\n"
    "print('first', len(study.trials), study.best_value >= 0)",
    # interrupted by the kernel interrupt (nbclient sends it when the cell times out)
    "SLEEP = 300.0\nhpo.optimize(study, objective, n_trials=4, par=2)",
    "kids = psutil.Process().children(recursive=True)\n"
    "kids = [p for p in kids if 'spawn_main' in str(p.cmdline())]\n"
    "print('left', [p.pid for p in kids if p.status() != psutil.STATUS_ZOMBIE])",
    "SLEEP = 0.0\nhpo.optimize(study, objective, n_trials=2, par=2)\n"
    "print('again', len([t for t in study.trials if t.state.name == 'COMPLETE']))",
]


def test_a_notebook_runs_interrupts_and_resumes(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    assert not tmp_path.resolve().is_relative_to(ROOT)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    client = nbclient.NotebookClient(
        nb,
        timeout=40,
        interrupt_on_timeout=True,
        allow_errors=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPO_CONFIG_DIR")}
    client.execute(env=env)
    out = [_text(cell) for cell in nb.cells]
    assert "first 4 True" in out[2], out[2]
    assert "trials finished" in _markdown(nb.cells[2]), nb.cells[2].outputs
    assert "KeyboardInterrupt" in out[3], out[3]
    assert "left []" in out[4], out[4]
    assert "again 6" in out[5], out[5]
    db = tmp_path / "_optuna" / "nb.db"
    ends = query(db, "select value_json from trial_user_attributes where key = 'end_reason'")
    assert ends.count(('"interrupted"',)) == 2, ends


def _text(cell: object) -> str:
    parts = []
    for output in getattr(cell, "outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("ename", "") + " " + output.get("evalue", ""))
    return "\n".join(parts)


def _markdown(cell: object) -> str:
    return "\n".join(
        str(o.get("data", {}).get("text/markdown", "")) for o in getattr(cell, "outputs", [])
    )
