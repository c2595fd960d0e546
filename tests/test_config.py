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
        (["study.epochs=2"], "max_resource must be an int >= min_resource"),
    ],
)
def test_bad_config_is_one_line_config_error(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        compose(overrides, str(CONF))
    assert "\n" not in str(info.value)


def test_missing_config_dir_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no config.yaml"):
        compose([], str(tmp_path))
