"""The Python API for scripts and notebooks: the engine of ``hpo tune``, without a YAML file.

::

    import hpo

    def objective(trial):                   # any callable: sent to the workers by value
        lr = trial.suggest_float("lr", 1e-4, 0.1, log=True)
        ...
        return loss

    study = hpo.tune(objective, n_trials=20, par=2)   # minimizes, as Optuna does

``hpo.optimize(study, objective, n_trials, par=…)`` (:mod:`hpo.python.optimize`) runs an
Optuna study the same way.

Mistakes raise :class:`~hpo.errors.ConfigError` with the one-line message the CLI prints.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError, StudyAborted

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

    from hpo.config import Settings
    from hpo.config.by_value import ByValue
    from hpo.supervisor.recorder import RunSummary
    from hpo.supervisor.signals import StopSignals

Objective = Callable[..., Any]
_OBJECTS = ("sampler", "pruner")  # keys that take an Optuna object (sent by value) or an option


def tune(
    objective: str | Objective,
    space: Mapping[str, Mapping[str, Any] | BaseDistribution] | None = None,
    n_trials: int = 20,
    *,
    direction: str = "minimize",
    directions: Sequence[str] | None = None,
    par: int | str = 2,
    storage: str | None = None,
    name: str | None = None,
    config_dir: str | None = None,
    **overrides: Any,
) -> optuna.Study:
    """Run a study to ``n_trials`` finished trials with ``par`` worker processes; return it.

    ``objective`` is any callable, called as ``objective(trial)`` (Optuna's way) or
    ``objective(trial, cfg)`` when it takes two arguments, sent to the workers by value (a
    lambda, a closure or a notebook cell's function work); or ``"module:function"``.
    ``space`` maps parameter names to ``{"type": "float", "low": …, "high": …, "log": …}`` (as
    in a study YAML) or to Optuna distributions; without it hpo learns the space from the
    objective's ``trial.suggest_*`` calls. ``direction`` (default ``"minimize"``, as Optuna's)
    or ``directions`` for several objectives. ``storage`` is a SQLAlchemy URL or a storage
    option (``"postgres"``; default: ``./_optuna/<name>.db``). ``overrides`` are config keys,
    dotted keys as in ``hpo tune`` written with ``__`` (``pruner__patience=2``,
    ``study__epochs=8``); ``sampler="random"`` picks a group option, and ``sampler=`` /
    ``pruner=`` also take Optuna sampler and pruner objects.
    """
    settings = api_settings(
        objective,
        space,
        n_trials,
        directions=list(directions) if directions else [direction],
        par=par,
        storage=storage,
        name=name,
        config_dir=config_dir,
        overrides=overrides,
    )
    from hpo.supervisor.signals import StopSignals

    summary = run_settings(settings, StopSignals(stop_at_first=True))
    if summary.interrupted:
        raise StudyAborted(f"study {settings.study.name!r} was interrupted")
    return load_study(settings.study.name, storage=settings.storage.url)


def api_settings(
    objective: str | Objective,
    space: Mapping[str, Mapping[str, Any] | BaseDistribution] | None,
    n_trials: int,
    *,
    directions: list[str],
    par: int | str,
    storage: str | None,
    name: str | None,
    config_dir: str | None,
    overrides: Mapping[str, Any],
) -> Settings:
    """The settings of a run of the Python API (its objects pickled into them): nothing is
    started or written; every mistake is one ConfigError."""
    from hpo.config import Settings, compose

    by_value, objective_name = _by_value(objective, overrides)
    study: dict[str, Any] = {
        "name": name or _study_name(objective_name),
        "objective": objective_name,
        "n_trials": n_trials,
        "space": {key: _param(key, dist) for key, dist in (space or {}).items()},
        **_directions(directions),
    }
    options = {k: v for k, v in overrides.items() if isinstance(v, str) or k not in _OBJECTS}
    groups, values = _split_overrides(options)
    values["study"] = {**values.get("study", {}), **study}
    values["par"] = par
    if storage is not None and "://" not in storage:  # a group option: "postgres", "sqlite"
        groups.append(f"storage={storage}")
    elif storage is not None:
        values.setdefault("storage", {})["url"] = storage
    settings = Settings.from_config(compose(["study=base_api", *groups], config_dir, values))
    return dataclasses.replace(settings, by_value=by_value)


def run_settings(settings: Settings, signals: StopSignals) -> RunSummary:
    """Run the supervisor of ``settings`` in this process (logging set up as the API's);
    ``signals`` is how Ctrl-C and the caller's own stop requests reach it."""
    from hpo.cli.logs import setup_logging
    from hpo.supervisor import Supervisor

    setup_logging(settings.log_level, quiet_if_configured=True)
    return Supervisor(settings, signals=signals).run()


def load_study(
    name: str, storage: str | None = None, config_dir: str | None = None
) -> optuna.Study:
    """The study ``name`` from ``storage`` (default: the project's ``_optuna/<name>.db``);
    a ConfigError if it does not exist (nothing is created)."""
    import optuna

    from hpo.config import compose
    from hpo.config.settings import storage_url
    from hpo.storage import display_url, open_storage, storage_exists

    if storage is None:  # where `hpo tune` would keep it, from this project's storage config
        cfg = compose(["study=base_api"], config_dir, {"study": {"name": name}}, check=False)
        directory = Path(str(cfg.project_dir)) / str(cfg.storage.dir)
        storage = storage_url(cfg.storage.url, directory, name)
    if not storage_exists(storage):
        raise ConfigError(f"no study {name!r}: {display_url(storage)} does not exist")
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage, 60.0))
    except KeyError as e:
        raise ConfigError(f"no study {name!r} in {display_url(storage)}") from e


def _by_value(objective: str | Objective, overrides: Mapping[str, Any]) -> tuple[ByValue, str]:
    """The objective (and an Optuna sampler or pruner object among ``overrides``) pickled for
    the workers, and the objective's name; a ConfigError if one cannot be pickled."""
    from hpo.config.by_value import ByValue, display_name, pack

    objects = {k: overrides[k] for k in _OBJECTS if k in overrides}
    packed = {k: pack(k, v) for k, v in objects.items() if not isinstance(v, str)}
    if isinstance(objective, str):
        return ByValue(**packed), objective
    if not callable(objective):
        raise ConfigError(f"objective must be a callable or 'module:function', got {objective!r}")
    return ByValue(objective=pack("objective", objective), **packed), display_name(objective)


def _study_name(objective_name: str) -> str:
    """A study name from the objective's: ``objective``, ``lambda``, ``Model.fit``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", objective_name.rpartition(":")[2]) or "study"


def _directions(directions: list[str]) -> dict[str, Any]:
    """``study.direction`` (one objective) or ``study.directions`` (several)."""
    for d in directions:
        if d not in ("minimize", "maximize"):
            raise ConfigError(f"direction must be 'minimize' or 'maximize', got {d!r}")
    if len(directions) == 1:
        return {"direction": directions[0]}
    return {"direction": directions[0], "directions": directions}


def _param(name: str, dist: Mapping[str, Any] | BaseDistribution) -> dict[str, Any]:
    """A search-space entry as the study YAML writes it."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(dist, Mapping):
        return dict(dist)
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        kind = "float" if isinstance(dist, FloatDistribution) else "int"
        out = {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log}
        return out if dist.step is None or dist.log else {**out, "step": dist.step}
    raise ConfigError(f"space[{name!r}] must be a mapping or an Optuna distribution, got {dist!r}")


def _split_overrides(overrides: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Group options (``sampler="random"``) as Hydra overrides; other keys as nested values."""
    groups: list[str] = []
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        path = key.split("__")
        if (
            len(path) == 1
            and path[0] in ("pruner", "sampler", "storage")
            and isinstance(value, str)
        ):
            groups.append(f"{path[0]}={value}")
            continue
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return groups, values
