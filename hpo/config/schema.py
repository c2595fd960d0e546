"""Structured configs of hpo: one dataclass per config group, registered with Hydra.

The YAML files under ``conf/`` extend the dataclasses registered here (each file names its
schema in its ``defaults:`` list), so OmegaConf checks every key and type when the config is
composed. Semantic checks that types cannot express live in :mod:`hpo.config.validate`; the
typed values the rest of hpo uses are :class:`hpo.config.settings.Settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
    # The objective trains with hpo.current_context().accum_steps micro-batches of
    # batch / accum_steps per optimizer step (the same effective batch and learning result),
    # so a batch that does not fit may be split; an OOM retries with twice the steps.
    accumulation: bool = False
    batch_param: str = "batch_size"  # the parameter micro-batching divides
    max_accum_steps: int = 8  # the most micro-batches per step (a power of 2)


@dataclass
class StudyConf:
    """A study: what to optimise, over which space, for how long."""

    name: str = MISSING  # study name; also the SQLite file name _optuna/<name>.db
    objective: str = MISSING  # "package.module:function" called as objective(trial, cfg)
    direction: str = "maximize"  # maximize | minimize (hpo.tune: minimize, as Optuna)
    directions: list[str] | None = None  # several objectives: one direction each (no pruning)
    n_trials: int = 20  # COMPLETE + PRUNED trials to reach, across workers and runs
    epochs: int = 12  # the pruner's resource: epochs of a trial that is never pruned
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | sim
    # declared search space; empty: learned from the objective's trial.suggest_* calls
    space: dict[str, ParamConf] = field(default_factory=dict)
    memory: StudyMemoryConf = field(default_factory=StudyMemoryConf)
    loader: DataLoaderConf = field(default_factory=DataLoaderConf)
    extra: dict[str, Any] = field(default_factory=dict)  # free settings for user objectives
    show: list[str] = field(default_factory=list)  # best trial's user attributes to print


@dataclass
class PatientHyperbandConf:
    """Hyperband that spares trials whose curves may still catch up (hpo's default pruner)."""

    _target_: str = "hpo.pruners.PatientHyperbandPruner"
    min_resource: int = 2  # epochs before the first rung
    max_resource: Any = MISSING  # epochs of a full trial (the study's epochs), or "auto"
    reduction_factor: int = 3  # keep the top 1/reduction_factor at each rung
    patience: int = 0  # epochs without improvement before Hyperband may prune (0: at once)
    min_delta: float = 0.0  # smallest change that counts as an improvement
    catch_up: float = 2.0  # spare a trial whose extrapolated curve may reach the best (0: off)
    noise_factor: float = 2.0  # margins of this many report-noise deviations (0: off)


@dataclass
class StorageConf:
    """Where the study lives: an SQLite file per study, or any SQLAlchemy URL."""

    url: str | None = None  # SQLAlchemy URL; null = SQLite file <dir>/<study name>.db
    dir: str = "_optuna"  # directory of the SQLite files, relative to the project directory
    busy_timeout_s: float = 60.0  # SQLite: seconds a writer waits for the lock
    outage_s: float = 120.0  # seconds transient storage errors are retried before giving up


@dataclass
class FaultConf:
    """Surviving failures: trial time limit, retries, worker recycling, stale-trial reaping."""

    trial_timeout_s: float = 0.0  # wall-clock seconds a trial may run (then killed); 0 = no limit
    max_retries: int = 2  # retries (same parameters) of one trial after infrastructure failures
    retry_on: list[str] = field(  # end reasons retried: worker_died, cuda_error, timeout
        default_factory=lambda: ["worker_died", "cuda_error"]
    )
    recycle_after: int = 0  # trials a worker runs before it is replaced; 0 = when it leaks
    heartbeat_interval_s: int = 10  # seconds between heartbeats of each running trial
    grace_period_s: int = 60  # seconds without a heartbeat before another node's trial is stale
    checkpoints: bool = True  # give each trial a checkpoint directory; retries resume from it
    checkpoint_dir: str | None = None  # trial directories' root; null = <dir>/<study>/checkpoints
    keep_best_checkpoint: bool = True  # keep the best trial's directory when cleaning up


@dataclass
class MemoryConf:
    """Device memory: the budget per trial, the estimator, and the pre-pruner."""

    capacity_gib: float | None = None  # plan as if each GPU had this much memory (null: real)
    margin_frac: float = 0.05  # device memory kept free on each GPU, as a fraction of capacity
    ram_margin_frac: float = 0.05  # host RAM kept free, as a fraction of the host's total
    prune: bool = True  # pre-prune trials whose upper estimate exceeds the per-trial budget
    quantile: float = 0.95  # upper quantile of the relative residuals added to estimates
    min_uplift: float = 0.03  # the upper estimate is at least this fraction above the point
    cold_uplift: float = 0.15  # added to a prior no measurement has calibrated yet
    trace_timeout_s: float = 300.0  # limit of the subprocess that traces the step builder
    oom_retry_halved_batch: bool = False  # after an OOM, retry with half the batch size
    pack: bool = True  # admit trials by predicted memory (false: start whenever a worker is idle)
    settle: bool = True  # a running trial whose peak stopped growing gives back the rest
    # safe overcommit: reserve a quantile of each estimate under a cap to match (the caps on a
    # card add up to at most its budget); a trial over its cap is re-queued (cap_exceeded).
    # false: reserve each upper estimate (docs/memory.md says when that pays)
    overcommit: bool = True
    max_bypass: int = 8  # times the oldest waiting trial may be overtaken before it goes first
    max_waiting: int = 8  # trials asked ahead that may wait for memory (backfill candidates)
    max_par: int = 8  # the most workers par=auto starts
    trial_ram_gib: float = 2.0  # host RAM a trial is assumed to need before any was measured


@dataclass
class HpoConf:
    """Top-level config of ``hpo tune``."""

    study: StudyConf = MISSING  # a study file is merged onto StudyConf (or its subclass)
    pruner: Any = MISSING  # a node with _target_ (an optuna BasePruner)
    sampler: Any = MISSING  # a node with _target_ (an optuna BaseSampler)
    storage: StorageConf = MISSING
    faults: FaultConf = field(default_factory=FaultConf)
    memory: MemoryConf = field(default_factory=MemoryConf)
    par: Any = 2  # worker processes (parallel trials), or "auto" (see hpo.scheduling.autopar)
    max_failures_in_a_row: int = 10  # stop the study after this many consecutive FAIL trials
    log_level: str = "INFO"  # DEBUG | INFO | WARNING
    project_dir: str | None = None  # set by compose: where _optuna/ and the objective live
    user_config_dir: str | None = None  # set by compose: the user's conf/ over the built-ins
    python_path: list[str] = field(default_factory=list)  # more dirs to import objectives from
    node_id: str | None = None  # this node's name in the study (--node-id, HPO_NODE_ID, host)


def register_schemas(cs: ConfigStore | None = None) -> None:
    """Register hpo's schemas with Hydra's ConfigStore (the YAML files extend them).

    Study-specific schemas are registered by :func:`hpo.studies.register_schemas`.
    """
    cs = cs or ConfigStore.instance()
    cs.store(name="base_config", node=HpoConf)
    cs.store(group="study", name="base_study", node=StudyConf)
    cs.store(group="pruner", name="base_patient_hyperband", node=PatientHyperbandConf)
    cs.store(group="storage", name="base_storage", node=StorageConf)
