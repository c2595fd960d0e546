"""``hydra.sweeper.params`` and the command line's overrides as an Optuna search space.

A sweep override (``choice``, ``range``, ``interval``, ``int(interval(...))``,
``tag(log, ...)``) becomes a distribution of the declared space, named by its key as written
(``data.batch_size``, ``+new_key``); any other override (``y=0``, ``~z``) is passed unchanged to
every trial. As in hydra-optuna-sweeper, ``range`` includes its end (``range(1, 3)`` is
``IntDistribution(1, 3)``) and a ``shuffle`` is a categorical. Every mistake is one
:class:`~hpo.errors.ConfigError` that names the entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo.config.validate import first_line
from hpo.errors import ConfigError


@dataclass(frozen=True)
class SweepSpace:
    """The declared space and the overrides every trial gets (fixed values, deletions)."""

    space: dict[str, BaseDistribution]
    fixed: tuple[str, ...]

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's values, for ``GridSampler``; a ConfigError for a continuous one."""
        return {name: grid_values(name, dist) for name, dist in self.space.items()}


def sweep_lines(params: Mapping[str, Any] | None, arguments: Iterable[str]) -> list[str]:
    """``hydra.sweeper.params`` as override lines, then the command line's (which win)."""
    lines = [f"{key}={_as_line(value)}" for key, value in (params or {}).items()]
    return [*lines, *arguments]


def _as_line(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def parse_space(lines: list[str]) -> SweepSpace:
    """Parse override lines; a later line for the same key replaces an earlier one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            override = parser.parse_override(line)
        except HydraException as e:
            raise ConfigError(
                f"hydra.sweeper.params: cannot parse {line!r}: {first_line(e)}"
            ) from e
        key = override.get_key_element()
        bare = key.lstrip("+~")
        for name in (bare, f"+{bare}", f"++{bare}"):  # a later line for a key replaces it
            space.pop(name, None)
        fixed.pop(bare, None)
        if override.is_sweep_override():
            space[key] = distribution(line, override)
        else:
            fixed[bare] = override.input_line or line
    return SweepSpace(space, tuple(fixed.values()))


def distribution(line: str, override: Any) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return _categorical(line, list(value.list))
    if isinstance(value, RangeSweep):
        return _range(line, value)
    if isinstance(value, IntervalSweep):
        return _interval(line, value)
    raise ConfigError(
        f"hydra.sweeper.params: {line!r} is not a sweep hpo can sample "
        "(choice, range, interval, int(interval(...)), tag(log, ...))"
    )


def _categorical(line: str, choices: list[Any]) -> CategoricalDistribution:
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise ConfigError(
                f"hydra.sweeper.params: {line!r}: a choice must be a number, a string, a bool "
                f"or null, got {choice!r}"
            )
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"hydra.sweeper.params: {line!r} has duplicate choices")
    return CategoricalDistribution([str(c) if not _primitive(c) else c for c in choices])


def _primitive(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float, str)


def _range(line: str, value: Any) -> BaseDistribution:
    start, stop, step = value.start, value.stop, value.step
    if start is None or stop is None:
        raise ConfigError(f"hydra.sweeper.params: {line!r} needs a start and a stop")
    if value.shuffle:  # shuffle(range(...)): the values in any order, as a categorical
        return _categorical(line, _range_values(start, stop, step))
    if step is not None and step <= 0:
        raise ConfigError(f"hydra.sweeper.params: {line!r}: step must be > 0, got {step}")
    if start > stop:
        raise ConfigError(f"hydra.sweeper.params: {line!r}: start must be <= stop")
    if any(isinstance(v, float) for v in (start, stop, step)):
        return FloatDistribution(float(start), float(stop), step=float(step) if step else None)
    return IntDistribution(int(start), int(stop), step=int(step or 1))


def _range_values(start: float, stop: float, step: float | None) -> list[Any]:
    step = step or 1
    count = max(0, math.ceil((stop - start) / step))
    return [start + i * step for i in range(count)]


def _interval(line: str, value: Any) -> BaseDistribution:
    start, end, log = value.start, value.end, "log" in value.tags
    if start is None or end is None:
        raise ConfigError(f"hydra.sweeper.params: {line!r} needs a start and an end")
    if start > end:
        raise ConfigError(f"hydra.sweeper.params: {line!r}: start must be <= end")
    if log and start <= 0:
        raise ConfigError(f"hydra.sweeper.params: {line!r}: a log scale needs start > 0")
    if isinstance(start, int) and isinstance(end, int):
        return IntDistribution(start, end, log=log)
    return FloatDistribution(float(start), float(end), log=log)


def grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    """The values of a discrete distribution, both ends included."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        count = int(math.floor((dist.high - dist.low) / dist.step + 1e-9)) + 1
        return [round(dist.low + i * dist.step, 12) for i in range(count)]
    raise ConfigError(
        f"hydra.sweeper.params.{name}: the grid sampler needs discrete values "
        "(choice, or range with a step), got a continuous interval"
    )


def override_value(value: Any) -> str:
    """A parameter's value as an override's value (strings escaped as Hydra's grammar wants)."""
    from hydra.core.override_parser.types import Override

    if isinstance(value, bool):
        return "true" if value else "false"
    return Override._get_value_element_as_str(value)
