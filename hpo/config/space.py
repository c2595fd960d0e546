"""The search space declared in the study config, as Optuna distributions.

Declaring the space up front lets the supervisor ask for a trial's parameters before the trial
runs (and, later, estimate its memory from them). A study that declares none has its space
learned from its objective's ``trial.suggest_*`` calls (:mod:`hpo.execution.learned_space`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo.errors import ConfigError

_KINDS = ("categorical", "int", "float")


def build_space(space: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """Turn ``study.space`` into ``{name: distribution}``; any mistake is a ConfigError. An
    empty space is learned from the objective (see :mod:`hpo.execution.learned_space`)."""
    return {str(name): build_distribution(str(name), spec) for name, spec in space.items()}


def build_distribution(name: str, spec: Any) -> BaseDistribution:
    """Build one distribution from a ParamConf-like mapping."""
    where = f"study.space.{name}"
    kind = spec.get("type")
    if kind not in _KINDS:
        raise ConfigError(f"{where}.type must be one of {', '.join(_KINDS)}, got {kind!r}")
    if kind == "categorical":
        return _categorical(where, spec)
    if spec.get("choices") is not None:
        raise ConfigError(f"{where}.choices is only for type categorical")
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log")
    _check_bounds(where, low, high, step, bool(log))
    if kind == "int":
        for key, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and float(value) != int(value):
                raise ConfigError(f"{where}.{key} must be an integer, got {value}")
        return IntDistribution(int(low), int(high), log=bool(log), step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=bool(log), step=step)


def _categorical(where: str, spec: Any) -> CategoricalDistribution:
    choices = spec.get("choices")
    if not choices:
        raise ConfigError(f"{where}.choices must be a non-empty list, got {choices!r}")
    for key in ("low", "high", "step"):
        if spec.get(key) is not None:
            raise ConfigError(f"{where}.{key} is not allowed for type categorical")
    values = list(choices)
    for value in values:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"{where}.choices may hold only numbers and strings, got {value!r}")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}.choices has duplicates: {values}")
    return CategoricalDistribution(values)


def _check_bounds(where: str, low: Any, high: Any, step: Any, log: bool) -> None:
    if low is None or high is None:
        raise ConfigError(f"{where} needs low and high")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}: low and high must be finite, got {low}, {high}")
    if low > high:
        raise ConfigError(f"{where}: low must be <= high, got low={low} high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0, got {low}")
    if log and step is not None:
        raise ConfigError(f"{where}: step cannot be combined with log")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}.step must be > 0, got {step}")


def describe(params: Mapping[str, Any]) -> str:
    """Short human form of a parameter set, for log lines: ``model=small batch_size=32``."""
    parts = []
    for key, value in params.items():
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def suggest(trial: Any, name: str, dist: BaseDistribution) -> Any:
    """Suggest parameter ``name`` of ``dist`` on ``trial`` through Optuna's public API (what
    ``study.ask(fixed_distributions)`` does; an enqueued trial gets its fixed value)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"unsupported distribution for {name!r}: {dist!r}")
