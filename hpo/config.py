"""Structured configs of hpo and the composition of the Hydra config tree.

The YAML files under ``conf/`` extend the dataclasses registered here (each file names its
schema in its ``defaults:`` list), so OmegaConf checks every key and type when the config is
composed. Semantic checks that types cannot express live in :func:`validate`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from hpo.errors import ConfigError


@dataclass
class ParamConf:
    """One dimension of the search space (an Optuna distribution)."""

    type: str = MISSING  # categorical | int | float
    choices: list[Any] | None = None  # categorical only
    low: float | None = None  # int/float: lower bound (inclusive)
    high: float | None = None  # int/float: upper bound (inclusive)
    log: bool = False  # int/float: sample on a log scale
    step: float | None = None  # int/float: discretisation step (not with log)


@dataclass
class DataLoaderConf:
    """torch DataLoader settings passed through to the objective."""

    num_workers: int = 0  # DataLoader worker processes per trial
    persistent_workers: bool = False  # keep DataLoader workers alive between epochs
    prefetch_factor: int | None = None  # batches prefetched per DataLoader worker


@dataclass
class StudyMemoryConf:
    """What the study tells the memory estimator about its parameters."""

    scaling: list[str] = field(default_factory=list)  # params memory grows with (batch size …)
    groups: list[str] | None = None  # params that change memory; null = categorical, not scaling
    step_builder: str | None = None  # "module:function"(params, cfg) -> (model, optimizer, batch)
    estimate_fn: str | None = None  # "module:function"(params, cfg) -> peak device bytes


@dataclass
class StudyConf:
    """A study: what to optimise, over which space, for how long."""

    name: str = MISSING  # study name; also the SQLite file name _optuna/<name>.db
    objective: str = MISSING  # "package.module:function" called as objective(trial, cfg)
    direction: str = "maximize"  # maximize | minimize
    n_trials: int = 20  # COMPLETE + PRUNED trials to reach, across workers and runs
    epochs: int = 12  # the pruner's resource: epochs of a trial that is never pruned
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | sim
    space: dict[str, ParamConf] = field(default_factory=dict)  # declared search space
    memory: StudyMemoryConf = field(default_factory=StudyMemoryConf)
    loader: DataLoaderConf = field(default_factory=DataLoaderConf)
    extra: dict[str, Any] = field(default_factory=dict)  # free settings for user objectives


@dataclass
class PatientHyperbandConf:
    """Hyperband whose decisions wait until a trial stops improving."""

    _target_: str = "hpo.pruners.PatientHyperbandPruner"
    min_resource: int = 3  # epochs before the first rung
    max_resource: int = MISSING  # epochs of a full trial (the study's epochs)
    reduction_factor: int = 3  # keep the top 1/reduction_factor at each rung
    patience: int = 4  # epochs without improvement before Hyperband may prune
    min_delta: float = 0.0  # smallest change that counts as an improvement


@dataclass
class StorageConf:
    """Where the study lives: an SQLite file per study, or any SQLAlchemy URL."""

    url: str | None = None  # SQLAlchemy URL; null = SQLite file <dir>/<study name>.db
    dir: str = "_optuna"  # directory of the SQLite files, relative to the working directory
    busy_timeout_s: float = 60.0  # SQLite: seconds a writer waits for the lock


@dataclass
class FaultConf:
    """Surviving failures: trial time limit, retries, worker recycling, stale-trial reaping."""

    trial_timeout_s: float = 0.0  # wall-clock seconds a trial may run (then killed); 0 = no limit
    max_retries: int = 2  # retries (same parameters) of one trial after infrastructure failures
    retry_on: list[str] = field(  # end reasons retried: worker_died, cuda_error, timeout
        default_factory=lambda: ["worker_died", "cuda_error"]
    )
    recycle_after: int = 50  # trials a worker runs before it is replaced; 0 = never
    heartbeat_interval_s: int = 10  # seconds between heartbeats of each running trial
    grace_period_s: int = 60  # seconds without a heartbeat before another node's trial is stale
    checkpoints: bool = True  # give each trial a checkpoint directory; retries resume from it
    checkpoint_dir: str | None = None  # root of the trial directories; null = <dir>/<study>.ckpt
    keep_best_checkpoint: bool = True  # keep the best trial's directory when cleaning up


RETRYABLE = ("worker_died", "cuda_error", "timeout")  # infrastructure end reasons


@dataclass
class MemoryConf:
    """Device memory: the budget per trial, the estimator, and the pre-pruner."""

    capacity_gib: float | None = None  # plan as if each GPU had this much memory (null: real)
    margin_frac: float = 0.05  # safety margin kept free on each GPU, as a fraction of capacity
    prune: bool = True  # pre-prune trials whose upper estimate exceeds the per-trial budget
    quantile: float = 0.95  # upper quantile of the relative residuals added to estimates
    min_uplift: float = 0.03  # the upper estimate is at least this fraction above the point
    cold_uplift: float = 0.15  # added to a prior no measurement has calibrated yet
    trace_timeout_s: float = 300.0  # limit of the subprocess that traces the step builder
    oom_retry_halved_batch: bool = False  # after an OOM, retry with half the batch size
    pack: bool = True  # admit trials by predicted memory (false: start whenever a worker is idle)
    max_bypass: int = 8  # times the oldest waiting trial may be overtaken before it goes first
    max_waiting: int = 8  # trials asked ahead that may wait for memory (backfill candidates)
    max_par: int = 8  # the most workers par=auto starts
    trial_ram_gib: float = 2.0  # host RAM a trial is assumed to need before any was measured


@dataclass
class HpoConf:
    """Top-level config of ``hpo tune``."""

    study: Any = MISSING  # a StudyConf (or a subclass)
    pruner: Any = MISSING  # a node with _target_ (an optuna BasePruner)
    sampler: Any = MISSING  # a node with _target_ (an optuna BaseSampler)
    storage: StorageConf = MISSING
    faults: FaultConf = field(default_factory=FaultConf)
    memory: MemoryConf = field(default_factory=MemoryConf)
    par: Any = 2  # worker processes (parallel trials), or "auto" (see hpo.autopar)
    max_failures_in_a_row: int = 10  # stop the study after this many consecutive FAIL trials
    log_level: str = "INFO"  # DEBUG | INFO | WARNING


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (the YAML files extend them).

    Called by :func:`compose`, not at import: study modules import :class:`StudyConf` from here.
    """
    from hpo.sim.objective import SimulatedStudyConf
    from hpo.studies.criteria.config import CriteriaStudyConf
    from hpo.studies.toy import ToyStudyConf

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=HpoConf)
    cs.store(group="study", name="base_study", node=StudyConf)
    cs.store(group="study", name="base_criteria", node=CriteriaStudyConf)
    cs.store(group="study", name="base_toy", node=ToyStudyConf)
    cs.store(group="study", name="base_simulated", node=SimulatedStudyConf)
    cs.store(group="pruner", name="base_patient_hyperband", node=PatientHyperbandConf)
    cs.store(group="storage", name="base_storage", node=StorageConf)


def find_config_dir(explicit: str | None = None) -> Path:
    """Locate the ``conf/`` tree: explicit path, $HPO_CONFIG_DIR, ./conf, or the source tree."""
    if explicit:
        if not (Path(explicit) / "config.yaml").is_file():
            raise ConfigError(f"--config-dir {explicit!r} holds no config.yaml")
        return Path(explicit).resolve()
    candidates = [os.environ.get("HPO_CONFIG_DIR"), "conf"]
    candidates.append(str(Path(__file__).resolve().parents[1] / "conf"))
    for cand in candidates:
        if cand and (Path(cand) / "config.yaml").is_file():
            return Path(cand).resolve()
    raise ConfigError("no conf/config.yaml found: run from the project root or pass --config-dir")


def compose(overrides: list[str], config_dir: str | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides and validate the result."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    directory = find_config_dir(config_dir)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_describe_compose_error(e)) from e
    finally:
        GlobalHydra.instance().clear()
    _fill_from_workload(cfg, directory)
    validate(cfg)
    return cfg


def _fill_from_workload(cfg: DictConfig, config_dir: Path) -> None:
    """A simulated study: resolve its workload file and take the search space from it."""
    workload = cfg.study.get("workload")
    if not workload:
        return
    from hpo.sim.workload import load_workload

    path = Path(workload)
    if not path.is_absolute() and not path.exists():
        path = config_dir.parent / path  # relative to the project, like the conf/ tree
    cfg.study.workload = str(path.resolve())
    if not cfg.study.space:
        from omegaconf.errors import OmegaConfBaseException

        space = load_workload(cfg.study.workload).space
        try:
            with open_dict(cfg.study):
                cfg.study.space = {
                    name: OmegaConf.merge(OmegaConf.structured(ParamConf), dist)
                    for name, dist in space.items()
                }
        except OmegaConfBaseException as e:
            raise ConfigError(f"workload {workload!r}: space: {_first_line(e)}") from e


def _describe_compose_error(e: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error: what failed and why."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, option = e.missing_cfg_file.rpartition("/")
        options = [o for o in e.options if not o.startswith("base_")]
        return f"unknown {group or 'config'} {option!r} (options: {', '.join(options)})"
    text = _first_line(e)
    if e.__cause__ is not None:
        text = f"{text.rstrip('.')}: {_first_line(e.__cause__)}"
    return text


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def validate(cfg: DictConfig) -> None:
    """Check what the types cannot: ranges, names, the search space, the pruner's arguments."""
    from hpo.space import build_space

    if str(cfg.par) != "auto" and (
        isinstance(cfg.par, bool) or not isinstance(cfg.par, int) or cfg.par < 1
    ):
        raise ConfigError(f"par must be an integer >= 1 or 'auto', got {cfg.par!r}")
    study = cfg.study
    if study.n_trials < 0:
        raise ConfigError(f"study.n_trials must be >= 0, got {study.n_trials}")
    if study.epochs < 1:
        raise ConfigError(f"study.epochs must be >= 1, got {study.epochs}")
    if study.direction not in ("maximize", "minimize"):
        raise ConfigError(f"study.direction must be maximize or minimize, got {study.direction!r}")
    if study.device not in ("auto", "cpu", "cuda", "sim"):
        raise ConfigError(f"study.device must be auto, cpu, cuda or sim, got {study.device!r}")
    if study.device == "sim" and not study.get("workload"):
        raise ConfigError("study.device=sim needs a study with a workload file (study=simulated)")
    _validate_memory(cfg)
    if not study.name or "/" in study.name or study.name.startswith("."):
        raise ConfigError(f"study.name must be a plain file name, got {study.name!r}")
    if ":" not in study.objective:
        raise ConfigError(f"study.objective must be 'module:function', got {study.objective!r}")
    if cfg.max_failures_in_a_row < 1:
        raise ConfigError(f"max_failures_in_a_row must be >= 1, got {cfg.max_failures_in_a_row}")
    if study.loader.num_workers < 0:
        raise ConfigError(f"study.loader.num_workers must be >= 0, got {study.loader.num_workers}")
    build_space(study.space)
    validate_faults(cfg.faults)
    instantiate_pruner(cfg)
    instantiate_sampler(cfg)


def validate_faults(faults: DictConfig) -> None:
    """Ranges of ``faults.*`` and the end reasons it may retry."""
    for key in ("trial_timeout_s", "max_retries", "recycle_after"):
        if faults[key] < 0:
            raise ConfigError(f"faults.{key} must be >= 0, got {faults[key]}")
    for key in ("heartbeat_interval_s", "grace_period_s"):
        if faults[key] < 1:
            raise ConfigError(f"faults.{key} must be >= 1, got {faults[key]}")
    if faults.grace_period_s <= faults.heartbeat_interval_s:
        raise ConfigError(
            f"faults.grace_period_s must exceed faults.heartbeat_interval_s "
            f"({faults.heartbeat_interval_s}), got {faults.grace_period_s}"
        )
    for reason in faults.retry_on:
        if reason not in RETRYABLE:
            raise ConfigError(
                f"faults.retry_on may hold {', '.join(RETRYABLE)}, got {reason!r} "
                "(oom and error come from the parameters: retrying them repeats the failure)"
            )


def _validate_memory(cfg: DictConfig) -> None:
    mem, study = cfg.memory, cfg.study
    if mem.capacity_gib is not None and mem.capacity_gib <= 0:
        raise ConfigError(f"memory.capacity_gib must be > 0, got {mem.capacity_gib}")
    if not 0 <= mem.margin_frac < 1:
        raise ConfigError(f"memory.margin_frac must be in [0, 1), got {mem.margin_frac}")
    if not 0.5 <= mem.quantile <= 1:
        raise ConfigError(f"memory.quantile must be in [0.5, 1], got {mem.quantile}")
    if mem.max_bypass < 0:
        raise ConfigError(f"memory.max_bypass must be >= 0, got {mem.max_bypass}")
    if mem.max_waiting < 1:
        raise ConfigError(f"memory.max_waiting must be >= 1, got {mem.max_waiting}")
    if mem.max_par < 1:
        raise ConfigError(f"memory.max_par must be >= 1, got {mem.max_par}")
    if mem.trial_ram_gib <= 0:
        raise ConfigError(f"memory.trial_ram_gib must be > 0, got {mem.trial_ram_gib}")
    for name in list(study.memory.scaling) + list(study.memory.groups or []):
        if name not in study.space:
            raise ConfigError(
                f"study.memory names param {name!r} that is not in study.space "
                f"({', '.join(study.space)})"
            )


def instantiate_pruner(cfg: DictConfig) -> Any:
    """Build the configured pruner; bad arguments become a ConfigError."""
    return _instantiate(cfg.pruner, "pruner")


def instantiate_sampler(cfg: DictConfig, constraints_func: Any = None) -> Any:
    """Build the configured sampler; bad arguments become a ConfigError.

    ``constraints_func`` (Optuna's feasibility callback) is passed to samplers that take one.
    """
    if constraints_func is None or not _accepts(cfg.sampler, "constraints_func"):
        return _instantiate(cfg.sampler, "sampler")
    return _instantiate(cfg.sampler, "sampler", constraints_func=constraints_func)


def _accepts(node: Any, argument: str) -> bool:
    import inspect

    from hydra.utils import get_class

    try:
        return argument in inspect.signature(get_class(node._target_)).parameters
    except Exception:  # an unknown target fails, with its own message, when instantiated
        return False


def _instantiate(node: Any, what: str, **kwargs: Any) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        raise ConfigError(f"{what}: {_first_line(cause)}") from e
