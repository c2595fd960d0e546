"""The Python API for scripts and notebooks: the engine of ``hpo tune``, without a YAML file.

::

    import hpo

    def objective(trial, cfg): ...          # at module level, as for `hpo tune`

    if __name__ == "__main__":              # workers import this file: guard the call
        study = hpo.tune(objective, space={"lr": {"type": "float", "low": 1e-4, "high": 0.1,
                                                  "log": True}}, n_trials=20, par=2)

Mistakes raise :class:`~hpo.errors.ConfigError` with the one-line message the CLI prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError, StudyAborted

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

Objective = Callable[..., float]


def tune(
    objective: str | Objective,
    space: Mapping[str, Mapping[str, Any] | BaseDistribution],
    n_trials: int,
    *,
    par: int | str = 2,
    storage: str | None = None,
    name: str | None = None,
    config_dir: str | None = None,
    **overrides: Any,
) -> optuna.Study:
    """Run a study to ``n_trials`` finished trials with ``par`` worker processes; return it.

    ``objective`` is ``"module:function"`` or a module-level function, called as
    ``objective(trial, cfg)``. ``space`` maps parameter names to ``{"type": "float", "low": …,
    "high": …, "log": …}`` (as in a study YAML) or to Optuna distributions. ``storage`` is a
    SQLAlchemy URL or a storage option (``"postgres"``; default: ``./_optuna/<name>.db``).
    ``overrides`` are config keys, dotted keys as in ``hpo tune`` written with ``__``
    (``pruner__patience=2``, ``study__epochs=8``); ``sampler="random"`` picks a group option.
    """
    from hpo.cli.logs import setup_logging
    from hpo.config import Settings, compose
    from hpo.supervisor import Supervisor

    target, import_dir = _objective_path(objective)
    study: dict[str, Any] = {
        "name": name or target.rpartition(":")[2],
        "objective": target,
        "n_trials": n_trials,
        "space": {key: _param(key, dist) for key, dist in space.items()},
    }
    groups, values = _split_overrides(overrides)
    values["study"] = {**values.get("study", {}), **study}
    values["par"] = par
    if import_dir is not None:
        values["python_path"] = [import_dir]
    if storage is not None and "://" not in storage:  # a group option: "postgres", "sqlite"
        groups.append(f"storage={storage}")
    elif storage is not None:
        values.setdefault("storage", {})["url"] = storage
    settings = Settings.from_config(compose(["study=base_api", *groups], config_dir, values))
    setup_logging(settings.log_level, quiet_if_configured=True)
    summary = Supervisor(settings).run()
    if summary.interrupted:
        raise StudyAborted(f"study {settings.study.name!r} was interrupted")
    return load_study(settings.study.name, storage=settings.storage.url)


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


def _objective_path(objective: str | Objective) -> tuple[str, str | None]:
    """``module:function`` of the objective, and the directory to import its module from."""
    if isinstance(objective, str):
        return objective, None
    qualname = getattr(objective, "__qualname__", "")
    module_name = getattr(objective, "__module__", None)
    if not callable(objective) or not module_name or "<" in qualname or "." in qualname:
        raise ConfigError(
            f"objective must be a module-level function or 'module:function', got {objective!r}"
        )
    if module_name != "__main__":
        module = sys.modules.get(module_name)
        where = getattr(module, "__file__", None)
        return f"{module_name}:{qualname}", None if where is None else str(Path(where).parent)
    path = getattr(sys.modules["__main__"], "__file__", None)
    if path is None:
        raise ConfigError(
            "the objective is defined in a notebook or an interactive session, which worker "
            "processes cannot import: put it in a module and pass 'module:function'"
        )
    script = Path(path).resolve()
    return f"{script.stem}:{qualname}", str(script.parent)


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
