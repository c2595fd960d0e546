"""A ``--multirun`` with ``hydra/sweeper=hpo``: the sweep's keys turned into hpo's settings, the
supervisor run on them, and the results file Hydra users know.

The study is hpo's: its declared space comes from ``params``, its objective is a
:class:`~hpo.sweeper.job.HydraJob` sent to the workers by value, its storage defaults to
``./_optuna/<study_name>.db`` in the directory the app is launched from, and ``n_trials``
counts finished trials across runs (the same command resumes; failed trials do not count,
and a sweep gives up after ``max(10, n_trials)`` failures in a row). ``max_failure_rate`` is
checked as trials end: once ``par`` trials of this run have ended (or the run ends), a share of
failed tasks above it stops the sweep (running trials finish) and raises. Only the task's own
exceptions count (``end_reason=error``); OOMs, dead workers and time limits are hpo's to handle.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.contract import Attr, EndReason
from hpo.errors import ConfigError, StudyAborted, TrialFailed
from hpo.sweeper.params import SweepSpace, parse_space, sweep_lines

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig
    from optuna.trial import FrozenTrial

    from hpo.config import Settings

logger = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
_GRID = "optuna.samplers.GridSampler"
_POLL_S = 0.2  # seconds between the looks at the trials that ended (max_failure_rate)
_AUTO_MAX_RESOURCE = ("patient_hyperband",)  # pruner options whose max_resource may be "auto"


@dataclass(frozen=True)
class SweepConf:
    """The ``hydra.sweeper`` keys (see ``hydra_plugins/hpo_sweeper/config.py`` for each)."""

    sampler: Mapping[str, Any]
    direction: Any = "minimize"
    storage: str | None = None
    study_name: str | None = None
    n_trials: int = 20
    n_jobs: int = 2
    max_failure_rate: float = 0.0
    params: Mapping[str, Any] | None = None
    custom_search_space: str | None = None
    par: Any = None
    pruner: str = "patient_hyperband"
    epochs: int | None = None
    memory: Mapping[str, Any] = field(default_factory=dict)
    hpo: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """A sweep ready to run: hpo's settings, where Hydra's outputs go, and its limits."""

    settings: Settings
    sweep_dir: Path
    max_failure_rate: float

    @classmethod
    def build(
        cls,
        conf: SweepConf,
        hydra_context: Any,
        task_function: Any,
        config: DictConfig,
        arguments: Sequence[str],
    ) -> Sweep:
        """Check every key and build the settings; nothing is written. A ConfigError says
        what is wrong in one line."""
        from hydra.core.singleton import Singleton

        from hpo.sweeper.job import HydraJob

        rate = _failure_rate(conf.max_failure_rate)
        directions = _directions(conf.direction)
        space = parse_space(sweep_lines(conf.params, arguments))
        _check_composes(hydra_context, config, space)
        sampler, n_trials = _sampler(conf, space)
        sweep_dir = str(config.hydra.sweep.dir)  # resolved here once (its ${now:...} too)
        job = HydraJob(
            hydra_context=hydra_context,
            task_function=task_function,
            config=config,
            singletons=Singleton.get_state(),
            sweep_dir=sweep_dir,
            fixed=space.fixed,
            custom_search_space=conf.custom_search_space,
        )
        name = conf.study_name or str(config.hydra.job.name)
        settings = replace(_settings(conf, job, space, directions, n_trials, name), sampler=sampler)
        if sampler["_target_"] == _GRID:  # one grid, in one order, in every worker
            from hpo.config.by_value import pack
            from hpo.config.validate import instantiate_node

            grid = pack("sampler", instantiate_node({"seed": 0, **sampler}, "sampler"))
            settings = replace(settings, by_value=replace(settings.by_value, sampler=grid))
        return cls(settings, Path(sweep_dir), rate)

    def run(self, config: DictConfig) -> None:
        """Run the study to its target; write the results file; raise when too many tasks
        failed."""
        from omegaconf import OmegaConf

        from hpo.api import run_settings
        from hpo.python.watch import RunWatcher
        from hpo.supervisor.signals import StopSignals

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, self.sweep_dir / "multirun.yaml")
        study = _open_study(self.settings)
        signals = StopSignals()
        rate = FailureRate(self.max_failure_rate, self.settings.par or 1)
        watcher = RunWatcher(
            study, signals, callbacks=[rate], catch=(BaseException,), poll_s=_POLL_S
        )
        watcher.start()
        interrupted = False
        try:
            interrupted = run_settings(self.settings, signals).interrupted
        except StudyAborted as e:  # max_failures_in_a_row: failed tasks never reach n_trials
            logger.warning("the sweep stops: %s", e)
        finally:
            watcher.close()
        write_results(study, self.sweep_dir / RESULTS_FILE)
        error = watcher.error or rate.check(final=True)
        if error is not None:
            raise error
        if interrupted and signals.ctrl_c:
            raise KeyboardInterrupt


class FailureRate:
    """Counts the trials of this run as they end (a callback of the run's watcher); raises
    :class:`~hpo.errors.TrialFailed` once failed tasks exceed ``limit`` of those that ended,
    from ``min_ended`` ended trials on."""

    def __init__(self, limit: float, min_ended: int) -> None:
        self.limit, self.min_ended = limit, min_ended
        self.ended = 0
        self.failed: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if _unstarted(trial):
            return
        self.ended += 1
        if trial.user_attrs.get(Attr.END_REASON) == EndReason.ERROR.value:
            self.failed.append(trial)
        error = self.check(final=False)
        if error is not None:
            raise error

    def check(self, final: bool) -> TrialFailed | None:
        if not self.failed or (self.ended < self.min_ended and not final):
            return None
        if len(self.failed) / self.ended <= self.limit:
            return None
        last = self.failed[-1]
        tail = str(last.user_attrs.get(Attr.ERROR, "")).strip()
        return TrialFailed(
            f"{len(self.failed)} of {self.ended} trials failed, more than max_failure_rate="
            f"{self.limit}; trial {last.number}:\n{tail}"
        )


def _unstarted(trial: FrozenTrial) -> bool:
    """A trial asked ahead that the run's end stopped before its task ran."""
    return "before it started" in str(trial.user_attrs.get(Attr.ERROR, ""))


def _check_composes(hydra_context: Any, config: DictConfig, space: SweepSpace) -> None:
    """Compose one trial's config (every parameter at its low end or first choice) as the
    workers will: a key the app's config lacks is one line now, not a failure per trial."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hpo.config.validate import first_line
    from hpo.sweeper.params import override_value

    overrides = [f"{name}={override_value(_low_end(d))}" for name, d in space.space.items()]
    try:
        hydra_context.config_loader.load_sweep_config(config, [*overrides, *space.fixed])
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"hydra.sweeper.params: {first_line(e)}") from e


def _low_end(dist: Any) -> Any:
    choices = getattr(dist, "choices", None)
    return choices[0] if choices is not None else dist.low


def _failure_rate(value: Any) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = math.nan
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {value!r}")
    return rate


def _directions(direction: Any) -> list[str]:
    """``direction``: a string (or an enum with a name), or a list of them."""
    from omegaconf import ListConfig

    items = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    names = [str(getattr(d, "name", d)).lower() for d in items]
    if not names or any(n not in ("minimize", "maximize") for n in names):
        raise ConfigError(
            "hydra.sweeper.direction must be minimize, maximize or a list of them, "
            f"got {direction!r}"
        )
    return names


def _sampler(conf: SweepConf, space: SweepSpace) -> tuple[dict[str, Any], int]:
    """The sampler node the workers instantiate (a grid's values filled in) and the trials
    to reach (a grid's size when it is smaller). A seeded sampler is seeded anew for each
    trial (hpo's way); a grid sampler, whose order of points is drawn when it is made, goes to
    the workers made once instead."""
    from hpo.config.validate import instantiate_node

    node = {str(k): v for k, v in conf.sampler.items() if v is not None and k != "_partial_"}
    if "_target_" not in node:
        raise ConfigError("hydra.sweeper.sampler needs a _target_ (e.g. hydra/sweeper/sampler=tpe)")
    n_trials = _n_trials(conf.n_trials)
    if node["_target_"] == _GRID:
        grid = space.grid()
        node["search_space"] = grid
        size = math.prod(len(v) for v in grid.values())
        if size < n_trials:
            logger.info("grid sampler: %d points, so n_trials %d -> %d", size, n_trials, size)
            n_trials = size
    instantiate_node(node, "hydra.sweeper.sampler")  # a bad key is one line now, not later
    return node, n_trials


def _n_trials(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"hydra.sweeper.n_trials must be an integer >= 0, got {value!r}")
    return value


def _settings(
    conf: SweepConf,
    job: Any,
    space: SweepSpace,
    directions: list[str],
    n_trials: int,
    name: str,
) -> Settings:
    """hpo's settings of the sweep, composed from hpo's built-in groups alone (an app's own
    ``conf/`` is Hydra's, not hpo's)."""
    from hpo.api import api_settings
    from hpo.config.compose import builtin_conf_dir

    overrides: dict[str, Any] = {"pruner": str(conf.pruner)}
    if conf.epochs is not None:
        overrides["study__epochs"] = conf.epochs
    elif conf.pruner in _AUTO_MAX_RESOURCE:  # learned from the first completed trial's steps
        overrides["pruner__max_resource"] = "auto"
    # Failed tasks do not count toward n_trials: a sweep whose every task fails gives up
    # after n_trials of them in a row (at least hpo's 10), max_failure_rate permitting.
    overrides["max_failures_in_a_row"] = max(10, n_trials)
    for key, value in conf.memory.items():
        overrides[f"study__memory__{key}"] = value
    script_dir = str(Path(sys.path[0] or ".").resolve())  # custom_search_space's module
    overrides["python_path"] = [script_dir]
    for key, value in conf.hpo.items():
        overrides[str(key).replace(".", "__")] = value
    return api_settings(
        job,
        dict(space.space),
        n_trials,
        directions=directions,
        par=_par(conf),
        storage=str(conf.storage) if conf.storage is not None else None,
        name=name,
        config_dir=str(builtin_conf_dir()),
        overrides=overrides,
    )


def _par(conf: SweepConf) -> int | str:
    value = conf.n_jobs if conf.par is None else conf.par
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        key = "n_jobs" if conf.par is None else "par"
        raise ConfigError(f"hydra.sweeper.{key} must be an integer >= 1 or 'auto', got {value!r}")
    return value


def _open_study(settings: Settings, tries: int = 3) -> optuna.Study:
    """The sweep's study, created in its storage if new (the watcher reads it as trials end).
    The same command started on several nodes at once may race to create the tables or the
    study: the loser tries again and finds them."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(tries):
        try:
            return _open_or_create(settings)
        except (SQLAlchemyError, optuna.exceptions.DuplicatedStudyError) as e:
            if attempt == tries - 1:
                raise
            logger.info("opening the study raced another node (%s); again", type(e).__name__)
    raise AssertionError("unreachable")


def _open_or_create(settings: Settings) -> optuna.Study:
    import optuna

    from hpo.storage import open_storage, prepare_storage

    url, timeout = settings.storage.url, settings.storage.busy_timeout_s
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpo logs what it does itself
    prepare_storage(url, timeout)
    storage = open_storage(url, timeout)
    directions: list[Any] = list(settings.study.directions)
    try:
        study = optuna.load_study(study_name=settings.study.name, storage=storage)
    except KeyError:
        return optuna.create_study(
            study_name=settings.study.name, storage=storage, directions=directions
        )
    found = [d.name.lower() for d in study.directions]
    if found != directions:
        raise ConfigError(
            f"study {settings.study.name!r} exists with direction {found}, the sweep says "
            f"{directions}: name another hydra.sweeper.study_name"
        )
    return study


def write_results(study: optuna.Study, path: Path) -> None:
    """``optimization_results.yaml`` as hydra-optuna-sweeper writes it: the best trial's
    ``best_params`` and ``best_value``, or the Pareto ``solutions`` of several objectives."""
    from omegaconf import OmegaConf
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        logger.warning("no trial completed: %s not written", path)
        return
    results: dict[str, Any] = {"name": "hpo"}
    if len(study.directions) == 1:
        best = study.best_trial
        results.update(best_params=dict(best.params), best_value=best.value)
        logger.info("best trial %d: value %s, params %s", best.number, best.value, best.params)
    else:
        front = study.best_trials
        results["solutions"] = [{"params": dict(t.params), "values": t.values} for t in front]
        logger.info("%d Pareto solutions", len(front))
    OmegaConf.save(OmegaConf.create(results), path)
    logger.info("results: %s", path)
