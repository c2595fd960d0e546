"""Checkpoint directories: atomic writes, resume of the toy and criteria objectives, cleanup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from omegaconf import DictConfig

from hpo.checkpoint import atomic_write, load_json, save_json
from hpo.config import compose
from hpo.contract import EndReason
from hpo.devices import CpuDevice
from hpo.execution.context import TrialContext, trial_context
from hpo.execution.protocol import Assignment
from hpo.execution.runner import TrialRunner
from hpo.studies import toy
from hpo.supervisor.checkpoints import CheckpointStore
from tests.conftest import CONF

SPACE = {
    "x": optuna.distributions.FloatDistribution(-5, 5),
    "family": optuna.distributions.CategoricalDistribution(["a", "b", "c"]),
    "width": optuna.distributions.IntDistribution(1, 64, log=True),
}
PARAMS = {"x": 0.5, "family": "b", "width": 8}


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    save_json(target, {"values": [1]})
    save_json(target, {"values": [1, 2]})
    assert load_json(target) == {"values": [1, 2]}
    assert load_json(tmp_path / "missing.json") is None

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert load_json(target) == {"values": [1, 2]}, "a failed write keeps the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def _toy_cfg(*overrides: str) -> DictConfig:
    return compose(["study=toy", "study.epoch_s=0", "pruner=none", *overrides], str(CONF))


def _run_toy(study: optuna.Study, cfg: DictConfig, directory: Path) -> Any:
    study.enqueue_trial(PARAMS)
    trial = study.ask(SPACE)
    runner = TrialRunner(study, toy.objective, cfg, "cpu", CpuDevice(), study._storage)
    return runner.run(Assignment(trial._trial_id, trial.number, str(directory)))


def test_toy_retry_resumes_after_the_last_saved_epoch(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    directory = tmp_path / "ckpt" / "0"
    first = _run_toy(study, _toy_cfg("study.oom_rate=1.0", "study.fault_epoch=4"), directory)
    assert first.end_reason is EndReason.OOM
    assert load_json(directory / "curve.json")["values"] == [
        toy.curve(PARAMS, e) for e in (1, 2, 3)
    ]
    again = _run_toy(study, _toy_cfg(), directory)
    assert again.end_reason is EndReason.COMPLETE
    resumed = study.trials[1]
    assert resumed.user_attrs["resumed_from_epoch"] == 3
    assert resumed.intermediate_values == {e: toy.curve(PARAMS, e) for e in range(1, 13)}


def test_store_keeps_retries_and_the_best_and_sweeps_the_rest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_best=True)
    study = optuna.create_study(direction="maximize")
    ends = [
        (0.5, "COMPLETE", False),  # best so far: kept until the sweep
        (0.9, "COMPLETE", False),  # the best
        (None, "FAIL", True),  # its retry needs it
        (0.1, "COMPLETE", False),  # worse than the best: removed at once
        (None, "PRUNED", False),  # removed at once
    ]
    for value, state, retried in ends:
        trial = study.ask(SPACE)
        path = store.dir_for(trial)
        assert path == str(tmp_path / str(trial.number))
        Path(path).mkdir()
        trial.set_user_attr("checkpoint_dir", path)
        ended = study.tell(trial, value, state=optuna.trial.TrialState[state])
        store.settle(study, ended, retried=retried)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2"]
    study.enqueue_trial(PARAMS, user_attrs={"checkpoint_dir": str(tmp_path / "2")})
    store.sweep(study)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def test_criteria_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    from tests.test_criteria import SMALL_DATA, _ask, _cfg

    torch = pytest.importorskip("torch")
    from hpo.studies.criteria.objective import objective

    fixed = {"model": "tiny", "batch_size": 32, "lr": 3e-3, "dropout": 0.2}

    def run(epochs: int, directory: Path | None) -> optuna.trial.FrozenTrial:
        study = optuna.create_study(direction="maximize")
        trial = _ask(study, **fixed)
        with trial_context(TrialContext("cpu", trial.number, directory)):
            study.tell(trial, objective(trial, _cfg(epochs=epochs, threads=1, **SMALL_DATA)))
        return study.trials[0]

    torch.set_num_threads(1)
    whole = run(3, None)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    crashed = run(1, directory)  # an attempt that stopped after its first epoch
    assert (directory / "state.pt").is_file()
    resumed = run(3, directory)
    assert resumed.user_attrs["resumed_from_epoch"] == 1
    assert resumed.intermediate_values[1] == crashed.intermediate_values[1]
    assert resumed.intermediate_values == whole.intermediate_values
    assert resumed.value == whole.value
    assert resumed.user_attrs["test_accuracy"] == whole.user_attrs["test_accuracy"]
