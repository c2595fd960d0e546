"""Semantic checks of a composed config (what the schema's types cannot say), and building
the configured pruner and sampler.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig

from hpo.contract import RETRYABLE
from hpo.errors import ConfigError


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name if it has none)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def validate(cfg: DictConfig) -> None:
    """Check what the types cannot: ranges, names, the search space, the pruner's arguments."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{missing[0]} is required: set it in the study file or as {missing[0]}=..."
        )
    from hpo.config.space import build_space

    if str(cfg.par) != "auto" and (
        isinstance(cfg.par, bool) or not isinstance(cfg.par, int) or cfg.par < 1
    ):
        raise ConfigError(f"par must be an integer >= 1 or 'auto', got {cfg.par!r}")
    study = cfg.study
    if study.n_trials < 0:
        raise ConfigError(f"study.n_trials must be >= 0, got {study.n_trials}")
    if study.epochs < 1:
        raise ConfigError(f"study.epochs must be >= 1, got {study.epochs}")
    for key, value in (("direction", study.direction), *_each("directions", study.directions)):
        if value not in ("maximize", "minimize"):
            raise ConfigError(f"study.{key} must be maximize or minimize, got {value!r}")
    if study.device not in ("auto", "cpu", "cuda", "sim"):
        raise ConfigError(f"study.device must be auto, cpu, cuda or sim, got {study.device!r}")
    if study.device == "sim" and not study.get("workload"):
        raise ConfigError("study.device=sim needs a study with a workload file (study=simulated)")
    _validate_memory(cfg)
    if not study.name or "/" in study.name or study.name.startswith("."):
        raise ConfigError(f"study.name must be a plain file name, got {study.name!r}")
    if ":" not in study.objective:
        raise ConfigError(f"study.objective must be 'module:function', got {study.objective!r}")
    node = cfg.get("node_id")
    if node is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(node)):
        raise ConfigError(f"node_id must be letters, digits, '.', '_' or '-', got {node!r}")
    if cfg.max_failures_in_a_row < 1:
        raise ConfigError(f"max_failures_in_a_row must be >= 1, got {cfg.max_failures_in_a_row}")
    if study.loader.num_workers < 0:
        raise ConfigError(f"study.loader.num_workers must be >= 0, got {study.loader.num_workers}")
    build_space(study.space)
    validate_faults(cfg.faults)
    instantiate_pruner(cfg)
    instantiate_sampler(cfg)


def _each(key: str, values: Any) -> list[tuple[str, Any]]:
    """``(key[i], value)`` of a list setting (none when unset)."""
    return [(f"{key}[{i}]", v) for i, v in enumerate(values or ())]


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
        if reason not in {r.value for r in RETRYABLE}:
            names = ", ".join(r.value for r in RETRYABLE)
            raise ConfigError(
                f"faults.retry_on may hold {names}, got {reason!r} "
                "(oom and error come from the parameters: retrying them repeats the failure)"
            )


def _validate_memory(cfg: DictConfig) -> None:
    mem, study = cfg.memory, cfg.study
    if mem.capacity_gib is not None and mem.capacity_gib <= 0:
        raise ConfigError(f"memory.capacity_gib must be > 0, got {mem.capacity_gib}")
    for key in ("margin_frac", "ram_margin_frac"):
        if not 0 <= mem[key] < 1:
            raise ConfigError(f"memory.{key} must be in [0, 1), got {mem[key]}")
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
    steps = study.memory.max_accum_steps
    if steps < 1 or steps & (steps - 1):
        raise ConfigError(f"study.memory.max_accum_steps must be a power of 2, got {steps}")
    batch = study.memory.batch_param
    if study.memory.accumulation and batch not in study.memory.scaling:
        raise ConfigError(
            f"study.memory.accumulation splits {batch!r} (study.memory.batch_param), which "
            f"must be one of study.memory.scaling ({', '.join(study.memory.scaling) or 'none'})"
        )


def instantiate_pruner(cfg: DictConfig) -> Any:
    """Build the configured pruner; bad arguments become a ConfigError."""
    return instantiate_node(cfg.pruner, "pruner")


def instantiate_sampler(cfg: DictConfig) -> Any:
    """Build the configured sampler; bad arguments become a ConfigError.

    Feasibility reaches the sampler through ``trial.set_constraint`` (see
    :mod:`hpo.memory.gate`), not through the deprecated ``constraints_func``.
    """
    return instantiate_node(cfg.sampler, "sampler")


def instantiate_node(node: Any, what: str, **kwargs: Any) -> Any:
    """Instantiate a `_target_` node; bad arguments become a ConfigError."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        raise ConfigError(f"{what}: {first_line(cause)}") from e
