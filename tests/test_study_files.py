"""A study's files stay together: its SQLite database and one folder of hpo's files beside it
(:mod:`hpo.storage.files`); a study made by the older layout still runs, resumes and retries."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest

from hpo.checkpoint import load_json, save_json
from hpo.cli.control import _log_dir
from hpo.contract import Attr
from hpo.errors import ConfigError
from hpo.storage.files import ask_lock_path, study_folder, study_subdir
from hpo.studies import toy
from hpo.supervisor.lock import StudyLock, lock_path
from hpo.supervisor.retry import enqueue_retry
from tests.conftest import ROOT, query, run_hpo, settings_of, user_attrs

SPACE = {
    "x": optuna.distributions.FloatDistribution(-5, 5),
    "family": optuna.distributions.CategoricalDistribution(["a", "b", "c"]),
    "width": optuna.distributions.IntDistribution(1, 64, log=True),
}
PARAMS = {"x": 0.5, "family": "b", "width": 8}
SQLITE_OWN = {"toy.db", "toy.db-wal", "toy.db-shm"}  # the database and SQLite's own files


def test_a_study_lists_as_its_database_and_one_folder(tmp_path: Path, toy_args: list[str]) -> None:
    run = run_hpo(tmp_path, "--node-id", "n1", *toy_args, "par=2", "study.n_trials=4")
    assert run.returncode == 0, run.stderr
    store = tmp_path / "_optuna"
    listing = {p.name for p in store.iterdir()}
    assert "toy.db" in listing and "toy" in listing
    assert listing - SQLITE_OWN == {"toy"}, listing
    folder = store / "toy"
    assert {"ask.lock", "toy.n1.lock"} <= {p.name for p in folder.iterdir()}
    assert {p.name for p in folder.iterdir()} <= {"ask.lock", "toy.n1.lock", "checkpoints"}
    db = store / "toy.db"
    for (number,) in query(db, "select number from trials"):
        recorded = user_attrs(db, number)[Attr.CHECKPOINT_DIR]
        assert recorded == str(folder / "checkpoints" / str(number))
    kept = folder / "checkpoints"
    assert not kept.exists() or all(p.name.isdigit() for p in kept.iterdir())


def test_every_file_of_an_sqlite_study_is_in_its_folder(tmp_path: Path) -> None:
    own = settings_of("study=simulated", f"storage.dir={tmp_path}", "node_id=n1")
    folder = tmp_path / "simulated"
    url = own.storage.url
    assert study_folder(url) == folder and ask_lock_path(url) == folder / "ask.lock"
    assert lock_path(url, "simulated", "n1") == folder / "simulated.n1.lock"
    assert own.faults.checkpoint_root == folder / "checkpoints"
    assert own.devices.sim_state_dir == folder / "sim"
    assert _log_dir(own) == folder
    shared = f"sqlite:///{tmp_path / 'shared.db'}"  # a database holding several studies
    other = settings_of("study=simulated", f"storage.url={shared}")
    assert other.faults.checkpoint_root == tmp_path / "shared" / "checkpoints-simulated"
    assert other.devices.sim_state_dir == tmp_path / "shared" / "sim-simulated"
    assert study_subdir(shared, "shared", "checkpoints") == tmp_path / "shared" / "checkpoints"
    assert study_folder(f"sqlite:///{tmp_path / 'plain'}") == tmp_path / "plain.hpo"


def test_a_server_storage_keeps_its_checkpoints_under_the_storage_dir(tmp_path: Path) -> None:
    url = "postgresql://hpo@127.0.0.1:5432/hpo"
    server = settings_of("study=toy", f"storage.dir={tmp_path}", f"storage.url={url}")
    assert study_folder(url) is None and ask_lock_path(url) is None
    assert server.faults.checkpoint_root == tmp_path / "toy.ckpt"
    assert lock_path(url, "toy", "n1").parent.name == "locks"  # the user's cache directory


def test_a_lock_file_of_an_older_hpo_is_still_honoured(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'toy.db'}"
    old = tmp_path / "toy.n1.lock"
    old.write_text("pid 4242 on elsewhere\n")
    with open(old) as held:  # an older supervisor, still running the study
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match=r"already run by pid 4242 on elsewhere as node"):
            StudyLock(url, "toy", "n1").acquire()
    with StudyLock(url, "toy", "n1") as lock:
        assert lock.path == tmp_path / "toy" / "toy.n1.lock"
        assert f"pid {os.getpid()}" in lock.path.read_text()
        with open(old) as late, pytest.raises(BlockingIOError):  # an older one started now
            fcntl.flock(late, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not (tmp_path / "toy.lock").exists(), "no new file beside the database"


def test_a_study_of_the_older_layout_retries_from_its_recorded_checkpoint(
    tmp_path: Path, toy_args: list[str]
) -> None:
    args = ["--node-id", "n1", *toy_args, "pruner=none"]
    assert run_hpo(tmp_path, *args, "study.n_trials=1").returncode == 0
    store, db = tmp_path / "_optuna", tmp_path / "_optuna" / "toy.db"
    old_dir = _older_layout(store, f"sqlite:///{db}")
    again = run_hpo(tmp_path, *args, "study.n_trials=2")
    assert again.returncode == 0, again.stderr
    states = query(db, "select number, state from trials order by number")
    assert states == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]
    retry = optuna.load_study(study_name="toy", storage=f"sqlite:///{db}").trials[2]
    assert retry.user_attrs[Attr.RETRY_OF] == 1
    assert retry.user_attrs[Attr.CHECKPOINT_DIR] == str(old_dir)
    assert retry.user_attrs[Attr.RESUMED_FROM_EPOCH] == 3
    assert retry.intermediate_values == {e: toy.curve(PARAMS, e) for e in range(1, 13)}
    assert (store / "toy" / "toy.n1.lock").is_file()
    if old_dir.exists():  # kept only as the best trial's checkpoint
        assert load_json(old_dir / "curve.json")["values"][-1] == toy.curve(PARAMS, 12)


def _older_layout(store: Path, url: str) -> Path:
    """Turn the study into one hpo made before the study folder: its lock files beside the
    database, and a failed trial whose checkpoint (3 epochs) lies in ``<study>.ckpt/``, its
    retry WAITING. Returns that checkpoint directory."""
    shutil.rmtree(store / "toy")
    for name in ("toy.n1.lock", "toy.ask.lock"):
        (store / name).touch()
    old_dir = store / "toy.ckpt" / "1"
    old_dir.mkdir(parents=True)
    save_json(old_dir / "curve.json", {"values": [toy.curve(PARAMS, e) for e in (1, 2, 3)]})
    study = optuna.load_study(study_name="toy", storage=url)
    study.enqueue_trial(PARAMS)
    trial = study.ask(SPACE)
    trial.set_user_attr(Attr.CHECKPOINT_DIR, str(old_dir))
    trial.set_user_attr(Attr.END_REASON, "worker_died")
    failed = study.tell(trial, state=optuna.trial.TrialState.FAIL)
    enqueue_retry(study, failed)
    return old_dir


def test_make_clean_studies_removes_the_studies_and_keeps_gitkeep(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    store = tmp_path / "_optuna"
    for path in ("toy/checkpoints/3/curve.json", "toy/ask.lock", "toy/toy.n1.lock",
                 "old.ckpt/1/curve.json", "old.sim/sim0.json"):  # fmt: skip
        (store / path).parent.mkdir(parents=True, exist_ok=True)
        (store / path).touch()
    for name in (".gitkeep", "toy.db", "toy.db-wal", "old.db", "old.n1.lock", "old.ask.lock"):
        (store / name).touch()
    make = ["make", "-s", "-f", str(ROOT / "Makefile"), "clean-studies"]
    subprocess.run(make, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    assert [p.name for p in store.iterdir()] == [".gitkeep"]
