from __future__ import annotations

from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.config.space import build_space, describe
from hpo.errors import ConfigError


def test_build_space_maps_each_kind() -> None:
    space = build_space(
        {
            "model": {"type": "categorical", "choices": ["tiny", "base"]},
            "batch_size": {"type": "categorical", "choices": [8, 16]},
            "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "layers": {"type": "int", "low": 1, "high": 8, "step": 1},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        }
    )
    assert space["model"] == CategoricalDistribution(["tiny", "base"])
    assert space["batch_size"] == CategoricalDistribution([8, 16])
    assert space["lr"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert space["layers"] == IntDistribution(1, 8)
    assert space["dropout"] == FloatDistribution(0.0, 0.5, step=0.1)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"type": "normal", "low": 0, "high": 1}, "type must be one of"),
        ({"type": "categorical", "choices": []}, "non-empty list"),
        ({"type": "categorical", "choices": [1, 1]}, "duplicates"),
        ({"type": "categorical", "choices": [1], "low": 0}, "not allowed for type categorical"),
        ({"type": "float", "low": 2.0, "high": 1.0}, "low must be <= high"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log scale needs low > 0"),
        ({"type": "float", "low": 1e-3, "high": 1.0, "log": True, "step": 0.1}, "step cannot"),
        ({"type": "int", "low": 1, "high": 2.5}, "must be an integer"),
        ({"type": "int", "low": 1}, "needs low and high"),
        ({"type": "float", "low": 0, "high": 1, "choices": [1]}, "only for type categorical"),
        ({"type": "float", "low": 0, "high": 1, "step": -1}, "step must be > 0"),
    ],
)
def test_malformed_parameter_is_a_config_error(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_space({"p": spec})


def test_an_empty_space_is_learned_from_the_objective() -> None:
    assert build_space({}) == {}  # hpo.execution.learned_space


def test_describe_shortens_floats() -> None:
    assert describe({"model": "tiny", "lr": 0.000123456, "bs": 8}) == "model=tiny lr=0.000123 bs=8"
