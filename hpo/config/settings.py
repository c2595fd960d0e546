"""Typed, frozen settings built once from a composed and validated config.

The supervisor, the scheduler, the memory gate and the devices receive these values, not the
whole Hydra config: each setting has one type and one meaning, and derived values (the storage
URL, the memory groups, the checkpoint root) are computed here, once. The worker still hands
the objective the config it was written against (``objective(trial, cfg)``), which
:attr:`Settings.objective_cfg` carries as plain containers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.config.by_value import ByValue, unpack
from hpo.config.space import build_space
from hpo.contract import EndReason

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from optuna.distributions import BaseDistribution


@dataclass(frozen=True)
class StudySettings:
    """What to optimise, over which space, for how long, and what memory depends on."""

    name: str
    objective: str  # "module:function"
    direction: str  # maximize | minimize (the first objective's with several)
    n_trials: int  # COMPLETE + PRUNED trials to reach, across workers and runs
    epochs: int
    space: Mapping[str, BaseDistribution]
    space_conf: Mapping[str, Mapping[str, Any]]  # the declared space as written (type, low …)
    scaling: tuple[str, ...]  # params memory grows with
    groups: tuple[str, ...]  # params that change memory otherwise (declared or categorical)
    # gradient accumulation the objective supports: split batch_param up to max_accum_steps
    # ways (0: it does not)
    max_accum_steps: int = 0
    batch_param: str = "batch_size"
    directions: tuple[str, ...] = ()  # one per objective (a single objective: (direction,))
    show: tuple[str, ...] = ()  # user attributes of the best trial a finished run prints


@dataclass(frozen=True)
class DeviceSettings:
    """Where trials run: what ``study.device`` names and how much memory hpo may plan with."""

    kind: str  # auto | cpu | cuda | sim
    capacity_gib: float | None  # plan as if each GPU had this much (None: what it has)
    workload: str | None = None  # the simulated workload file (kind sim)
    sim_state_dir: Path | None = None  # where simulated cards keep their ledgers


@dataclass(frozen=True)
class StorageSettings:
    url: str  # SQLAlchemy URL (the SQLite default resolved to <dir>/<study>.db)
    busy_timeout_s: float  # SQLite: seconds a writer waits for the lock
    outage_s: float = 120.0  # seconds transient storage errors are retried before giving up


@dataclass(frozen=True)
class FaultSettings:
    trial_timeout_s: float  # 0 = no limit
    max_retries: int
    retry_on: frozenset[EndReason]
    recycle_after: int  # 0 = never
    heartbeat_interval_s: int
    grace_period_s: int
    checkpoint_root: Path | None  # None: checkpoints off
    keep_best_checkpoint: bool


@dataclass(frozen=True)
class MemorySettings:
    device_margin_frac: float  # device memory kept free on each GPU (fraction of capacity)
    ram_margin_frac: float  # host RAM kept free (fraction of the host's total)
    prune: bool
    quantile: float
    min_uplift: float
    cold_uplift: float
    trace_timeout_s: float
    oom_retry_halved_batch: bool
    pack: bool
    settle: bool
    overcommit: bool
    max_bypass: int
    max_waiting: int
    max_par: int
    trial_ram_gib: float
    step_builder: str | None = None
    estimate_fn: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything ``hpo tune`` and the look commands need, typed."""

    study: StudySettings
    devices: DeviceSettings
    storage: StorageSettings
    faults: FaultSettings
    memory: MemorySettings
    par: int | None  # worker processes; None = par=auto
    max_failures_in_a_row: int
    log_level: str
    pruner: Mapping[str, Any]  # the pruner node (_target_ and arguments)
    sampler: Mapping[str, Any]  # the sampler node
    objective_cfg: dict[str, Any] = field(repr=False)  # the resolved config, for objectives
    project_dir: Path = field(default_factory=Path.cwd)  # where _optuna/ and the objective live
    # Directories the objective, step builder and estimate function are imported from (the
    # project and the user's conf/), in the supervisor, every worker and the prior's tracer.
    import_paths: tuple[str, ...] = ()
    node_id: str = ""  # this node's name in the study (several supervisors, one per node)
    # The Python API's objective, sampler and pruner, pickled (they replace the config's)
    by_value: ByValue = field(default_factory=ByValue, repr=False)

    @property
    def auto_par(self) -> bool:
        return self.par is None

    def objective_config(self) -> DictConfig:
        """The config the objective receives (and step builders, estimate functions)."""
        from omegaconf import OmegaConf

        return OmegaConf.create(self.objective_cfg)

    def make_pruner(self) -> Any:
        from hpo.config.validate import instantiate_node

        if self.by_value.pruner is not None:
            return unpack(self.by_value.pruner)
        return instantiate_node(self.pruner, "pruner")

    def make_sampler(self, seed: int | None = None) -> Any:
        """The configured sampler; ``seed`` replaces its seed."""
        from hpo.config.validate import instantiate_node

        if self.by_value.sampler is not None:  # the study's own (its seed is its own)
            return unpack(self.by_value.sampler)
        if seed is None:
            return instantiate_node(self.sampler, "sampler")
        return instantiate_node({**self.sampler, "seed": seed}, "sampler")

    @property
    def sampler_seed(self) -> int | None:
        """The sampler's seed, if the config sets one (reproducible proposals)."""
        seed = self.sampler.get("seed")
        if seed is None or self.by_value.sampler is not None:
            return None
        return int(seed)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Settings:
        """Build the settings of a composed, validated config."""
        from omegaconf import OmegaConf

        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        plain: dict[str, Any] = {str(k): v for k, v in container.items()}
        study, mem, faults = plain["study"], plain["memory"], plain["faults"]
        project = Path(plain.get("project_dir") or Path.cwd()).resolve()
        storage_dir = (project / Path(plain["storage"]["dir"]).expanduser()).resolve()
        name = str(study["name"])
        url = storage_url(plain["storage"].get("url"), storage_dir, name)
        user_conf = plain.get("user_config_dir")
        return cls(
            study=_study(study),
            devices=DeviceSettings(
                kind=str(study["device"]),
                capacity_gib=mem["capacity_gib"],
                workload=study.get("workload"),
                sim_state_dir=study_dir(url, storage_dir, name, "sim"),
            ),
            storage=StorageSettings(
                url=url,
                busy_timeout_s=float(plain["storage"]["busy_timeout_s"]),
                outage_s=float(plain["storage"].get("outage_s", 120.0)),
            ),
            faults=_faults(faults, project, study_dir(url, storage_dir, name, "checkpoints")),
            memory=_memory(mem, study.get("memory") or {}),
            par=None if str(plain["par"]) == "auto" else int(plain["par"]),
            max_failures_in_a_row=int(plain["max_failures_in_a_row"]),
            log_level=str(plain["log_level"]),
            pruner=plain["pruner"],
            sampler=plain["sampler"],
            objective_cfg=plain,
            node_id=str(
                plain.get("node_id") or os.environ.get("HPO_NODE_ID") or socket.gethostname()
            ),
            project_dir=project,
            import_paths=tuple(
                str(p) for p in (project, user_conf, *plain.get("python_path", ())) if p
            ),
        )


def storage_url(url: str | None, directory: Path, study_name: str) -> str:
    """The configured URL, or ``sqlite:///<dir>/<study name>.db``."""
    return str(url) if url else f"sqlite:///{directory / study_name}.db"


_SERVER_SUFFIX = {"checkpoints": "ckpt", "sim": "sim"}  # <storage dir>/<study>.<suffix>


def study_dir(url: str, storage_dir: Path, study_name: str, kind: str) -> Path:
    """The study's folder ``kind`` (``checkpoints``: the default checkpoint root, ``sim``: the
    simulated cards' ledgers): in an SQLite database's folder (:mod:`hpo.storage.files`), else
    (a server storage) ``<storage dir>/<study>.ckpt`` or ``<storage dir>/<study>.sim``."""
    from hpo.storage.files import study_subdir

    folder = study_subdir(url, study_name, kind)
    if folder is not None:
        return folder
    return (storage_dir / f"{study_name}.{_SERVER_SUFFIX[kind]}").resolve()


def memory_groups(space_conf: Mapping[str, Any], memory: Mapping[str, Any]) -> tuple[str, ...]:
    """Params that change memory: declared, or every categorical param that does not scale."""
    declared = memory.get("groups")
    if declared is not None:
        return tuple(declared)
    scaling = set(memory.get("scaling") or ())
    return tuple(
        n for n, d in space_conf.items() if d.get("type") == "categorical" and n not in scaling
    )


def _study(study: Mapping[str, Any]) -> StudySettings:
    space_conf = {str(k): dict(v) for k, v in study["space"].items()}
    memory = study.get("memory") or {}
    return StudySettings(
        name=str(study["name"]),
        objective=str(study["objective"]),
        direction=str(study["direction"]),
        n_trials=int(study["n_trials"]),
        epochs=int(study["epochs"]),
        space=build_space(space_conf),
        space_conf=space_conf,
        scaling=tuple(memory.get("scaling") or ()),
        groups=memory_groups(space_conf, memory),
        max_accum_steps=int(memory.get("max_accum_steps", 8)) if memory.get("accumulation") else 0,
        batch_param=str(memory.get("batch_param", "batch_size")),
        directions=tuple(study.get("directions") or [study["direction"]]),
        show=tuple(str(key) for key in study.get("show") or ()),
    )


def _faults(faults: Mapping[str, Any], project: Path, default_root: Path) -> FaultSettings:
    root: Path | None = None
    if faults["checkpoints"]:
        chosen = faults.get("checkpoint_dir")
        root = (project / chosen).resolve() if chosen else default_root
    return FaultSettings(
        trial_timeout_s=float(faults["trial_timeout_s"]),
        max_retries=int(faults["max_retries"]),
        retry_on=frozenset(EndReason(r) for r in faults["retry_on"]),
        recycle_after=int(faults["recycle_after"]),
        heartbeat_interval_s=int(faults["heartbeat_interval_s"]),
        grace_period_s=int(faults["grace_period_s"]),
        checkpoint_root=root,
        keep_best_checkpoint=bool(faults["keep_best_checkpoint"]),
    )


def _memory(mem: Mapping[str, Any], study_memory: Mapping[str, Any]) -> MemorySettings:
    return MemorySettings(
        device_margin_frac=float(mem["margin_frac"]),
        ram_margin_frac=float(mem["ram_margin_frac"]),
        prune=bool(mem["prune"]),
        quantile=float(mem["quantile"]),
        min_uplift=float(mem["min_uplift"]),
        cold_uplift=float(mem["cold_uplift"]),
        trace_timeout_s=float(mem["trace_timeout_s"]),
        oom_retry_halved_batch=bool(mem["oom_retry_halved_batch"]),
        pack=bool(mem["pack"]),
        settle=bool(mem["settle"]),
        overcommit=bool(mem["overcommit"]),
        max_bypass=int(mem["max_bypass"]),
        max_waiting=int(mem["max_waiting"]),
        max_par=int(mem["max_par"]),
        trial_ram_gib=float(mem["trial_ram_gib"]),
        step_builder=study_memory.get("step_builder"),
        estimate_fn=study_memory.get("estimate_fn"),
    )
