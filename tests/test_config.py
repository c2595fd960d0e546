from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config import compose, instantiate_pruner
from hpo.errors import ConfigError
from hpo.pruners import PatientHyperbandPruner
from tests.conftest import CONF


def test_defaults_compose_the_criteria_study() -> None:
    cfg = compose([], str(CONF))
    assert cfg.study.name == "criteria"
    assert cfg.par == 2
    assert set(cfg.study.space) >= {"model", "batch_size", "lr", "dropout"}
    assert list(cfg.study.space.batch_size.choices) == [8, 16, 32, 64]
    assert cfg.pruner.max_resource == cfg.study.epochs
    assert cfg.storage.dir == "_optuna"


def test_issue_overrides_reach_the_config() -> None:
    cfg = compose(["study=criteria", "par=2", "study.n_trials=20", "pruner.patience=4"], str(CONF))
    assert (cfg.par, cfg.study.n_trials, cfg.pruner.patience) == (2, 20, 4)
    pruner = instantiate_pruner(cfg)
    assert isinstance(pruner, PatientHyperbandPruner)
    assert pruner.patience == 4


def test_max_resource_follows_epochs() -> None:
    cfg = compose(["study.epochs=27"], str(CONF))
    assert instantiate_pruner(cfg).n_brackets == 3


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ["study=nope"],
            r"unknown study 'nope' \(options: criteria, criteria_gpu, simulated, toy\)",
        ),
        (["sampler=nope"], "unknown sampler 'nope'"),
        (["par=0"], "par must be an integer >= 1 or .auto., got 0"),
        (["par=-3"], "par must be an integer >= 1 or .auto., got -3"),
        (["par=two"], "par must be an integer >= 1 or .auto., got .two."),
        (["nonsense=1"], "Key 'nonsense' not in 'HpoConf'"),
        (["study.direction=up"], "study.direction must be maximize or minimize"),
        (["study.space.lr.low=1"], "study.space.lr: low must be <= high"),
        (["study.objective=no_colon"], "must be 'module:function'"),
        (["pruner.patience=-1"], "pruner: patience must be >= 0, got -1"),
        (["pruner.reduction_factor=1"], "reduction_factor must be >= 2"),
        (["study.epochs=1"], "max_resource must be an int >= min_resource"),
    ],
)
def test_bad_config_is_one_line_config_error(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        compose(overrides, str(CONF))
    assert "\n" not in str(info.value)


def test_missing_config_dir_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config-dir '.*nope' is not a directory"):
        compose([], str(tmp_path / "nope"))


def test_a_user_config_dir_without_config_yaml_is_layered_over_the_builtins(
    tmp_path: Path,
) -> None:
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "mine.yaml").write_text(
        "name: mine\nobjective: mine:objective\nn_trials: 3\nepochs: 2\n"
        "space:\n  lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
    )
    cfg = compose(["study=mine", "pruner=none", "study.memory.scaling=[]"], str(tmp_path))
    assert cfg.study.n_trials == 3 and cfg.study.loader.num_workers == 0  # StudyConf defaults
    assert cfg.project_dir == str(tmp_path.parent) and cfg.user_config_dir == str(tmp_path)


def test_a_user_option_named_like_a_builtin_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "toy.yaml").write_text("name: toy\n")
    with pytest.raises(ConfigError, match="has the name of a built-in study option"):
        compose(["study=toy"], str(tmp_path))
