"""``hpo status`` and the dashboard read a running study without ever disturbing it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _env, query, start_hpo, wait_for
from tests.look import look_cmd, make_toy_study, run_look
from tests.test_dashboard import start_dashboard, stop


def test_status_once_shows_a_finished_study(tmp_path: Path) -> None:
    db = make_toy_study(tmp_path)
    result = run_look(
        tmp_path, "status", "--once", "study=toy", f"storage.dir={db.parent}", "study.n_trials=16"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    finished = query(db, "select count(*) from trials where state in ('COMPLETE', 'PRUNED')")[0][0]
    assert f"{finished}/16 finished" in out
    assert "running trials: none" in out and "last 5 finished" in out
    assert "family=" in out and "MiB" in out


def test_status_and_dashboard_never_disturb_a_running_study(tmp_path: Path) -> None:
    """Poll status and every dashboard API read while the study writes; it must end clean."""
    store = tmp_path / "_optuna"
    args = ["study=toy", f"storage.dir={store}", "par=2", "study.n_trials=24", "study.epoch_s=0.03"]
    tune = start_hpo(tmp_path, *args)
    db = store / "toy.db"
    wait_for(
        lambda: query(db, "select count(*) from trials where state = 'RUNNING'")[0][0],
        what="a running trial",
    )
    dash, url = start_dashboard(tmp_path, *args)
    api = url.replace("/dashboard/studies/", "/api/studies/")
    saw_running, saw_eta, polls = False, False, 0
    try:
        while tune.poll() is None:
            status = run_look(tmp_path, "status", "--once", *args)
            assert status.returncode == 0, status.stderr
            saw_running |= "running trials: none" not in status.stdout
            saw_eta |= "; ETA " in status.stdout and " trials/h" in status.stdout
            with urllib.request.urlopen(api, timeout=30) as response:
                assert len(json.load(response)["trials"]) >= 1
            polls += 1
    finally:
        assert stop(dash)[0] == 0
    out = tune.communicate(timeout=60)[0]
    assert tune.returncode == 0, out
    assert polls >= 2 and saw_running and saw_eta
    assert "locked" not in out and "Traceback" not in out
    states = dict(query(db, "select state, count(*) from trials group by state"))
    assert states.get("FAIL", 0) == 0 and states.get("RUNNING", 0) == 0
    assert states["COMPLETE"] + states.get("PRUNED", 0) == 24


def test_status_live_refreshes_until_ctrl_c(tmp_path: Path) -> None:
    db = make_toy_study(tmp_path)
    proc = subprocess.Popen(
        look_cmd("status", "--interval", "0.2", "study=toy", f"storage.dir={db.parent}"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "study toy" in out and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["storage.dir=nowhere"], "does not exist"),
        (["--interval", "0"], "--interval must be > 0, got 0"),
    ],
)
def test_status_user_mistakes_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_look(tmp_path, "status", "--once", "study=toy", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_shows_a_trial_waiting_for_memory(tmp_path: Path) -> None:
    import optuna

    db = make_toy_study(tmp_path)
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{db}")
    waiting = study.ask()  # asked by the supervisor, not yet admitted: no worker_pid
    waiting.set_user_attr("vram_reserved_mib", 1234.0)
    result = run_look(
        tmp_path, "status", "--once", "study=toy", f"storage.dir={db.parent}", "study.n_trials=16"
    )
    assert result.returncode == 0, result.stderr
    line = [ln for ln in result.stdout.splitlines() if "waiting" in ln]
    assert line and str(waiting.number) in line[0] and "1234" in line[0]
