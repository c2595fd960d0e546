"""The ``hpo`` sweeper's structured config, and the ``hydra/sweeper/sampler`` options.

The keys of hydra-optuna-sweeper keep their names and meanings, so its configs run when only
``override hydra/sweeper: hpo`` changes; hpo's own keys follow them.
"""

# No ``from __future__ import annotations``: Hydra runs this module without registering it in
# sys.modules while it scans for plugins, and dataclasses then cannot read string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SamplerConf:
    _target_: str = MISSING  # an optuna.samplers class


@dataclass
class TPESamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None  # seeds each trial's proposal from (seed, trial number)
    consider_prior: bool | None = None  # null: Optuna's default
    prior_weight: float | None = None
    consider_magic_clip: bool | None = None
    consider_endpoints: bool | None = None
    n_startup_trials: int = 10  # random trials before TPE models the space
    n_ei_candidates: int = 24
    multivariate: bool = False  # model the parameters jointly
    warn_independent_sampling: bool | None = None


@dataclass
class RandomSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class CmaEsSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    x0: dict[str, Any] | None = None  # the initial mean: {param: value}
    sigma0: float | None = None  # the initial step size
    n_startup_trials: int = 1
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: str | None = None
    inc_popsize: int = 2
    use_separable_cma: bool = False


@dataclass
class NSGAIISamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class GridSamplerConf(SamplerConf):
    # the grid is the values of hydra.sweeper.params (choices, ranges with a step); a grid
    # smaller than n_trials ends the sweep when every point has run
    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = None  # the order the points are visited in


@dataclass
class GPSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    warn_independent_sampling: bool = True


@dataclass
class QMCSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"  # sobol | halton
    scramble: bool = False
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


@dataclass
class SweepMemoryConf:
    """What trial memory depends on, named by the app's config keys (hpo's study.memory)."""

    scaling: list[str] = field(default_factory=list)  # params memory grows with: [data.batch_size]
    groups: list[str] | None = None  # params that change memory otherwise; null: categoricals
    accumulation: bool = False  # the task splits a batch into hpo.current_context().accum_steps
    batch_param: str = "batch_size"  # the parameter micro-batching divides
    max_accum_steps: int = 8  # the most micro-batches per step (a power of 2)


@dataclass
class HpoSweeperConf:
    _target_: str = "hydra_plugins.hpo_sweeper.hpo_sweeper.HpoSweeper"
    _recursive_: bool = False  # the sampler node reaches hpo as a config (the workers build it)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])

    # --- the keys of hydra-optuna-sweeper ---
    sampler: SamplerConf = MISSING  # hydra/sweeper/sampler: tpe random cmaes nsgaii grid gp qmc
    direction: Any = "minimize"  # minimize | maximize, or a list of them (several objectives)
    storage: Any = None  # SQLAlchemy URL or "postgres"; null: ./_optuna/<study_name>.db
    study_name: str | None = None  # null: the app's job name (hydra.job.name)
    n_trials: int = 20  # finished (complete or pruned) trials to reach, across runs
    n_jobs: int = 2  # worker processes (trials at a time)
    max_failure_rate: float = 0.0  # failed tasks / trials ended in this run that stops the sweep
    params: dict[str, Any] | None = None  # key: choice(...) | range(...) | interval(...) | value
    custom_search_space: str | None = None  # "module.function"(cfg, trial) suggesting more

    # --- hpo's own ---
    par: Any = None  # worker processes, or "auto" (sized by memory); null: n_jobs
    pruner: str = "patient_hyperband"  # hpo's pruner option: patient_hyperband, hyperband,
    # median, successive_halving, none
    epochs: int | None = None  # steps a never-pruned trial reports; null: learned (max_resource)
    memory: SweepMemoryConf = field(default_factory=SweepMemoryConf)
    hpo: dict[str, Any] = field(default_factory=dict)  # any hpo config key: {study.device: sim}


_SAMPLERS = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "nsgaii": NSGAIISamplerConf,
    "grid": GridSamplerConf,
    "gp": GPSamplerConf,
    "qmc": QMCSamplerConf,
}

_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="hpo", node=HpoSweeperConf, provider="hpo")
for _name, _node in _SAMPLERS.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="hpo")
