"""Opening a study for a run: the devices, the memory gate and the scheduling models, all
taught from the trials the study already has; the finished count of an existing study; and the
worker cap of ``par=auto`` derived from those models."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.study import StudyDirection

from hpo.contract import FINISHED, RUN_BASE_ATTR, RUN_TARGET_ATTR
from hpo.devices import context_bytes, open_devices
from hpo.errors import ConfigError
from hpo.execution.procs import available_cpus
from hpo.scheduling import AdmissionScheduler, Backlog, DurationModel, RamBudget, auto_par
from hpo.scheduling.settle import SettleModel
from hpo.storage import StudyStore, check_writable  # noqa: F401 (the supervisor calls it here)
from hpo.supervisor.launcher import LaunchModels, Split

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

    from hpo.config.settings import Settings, StudySettings
    from hpo.devices import Device
    from hpo.execution.pool import WorkerPool
    from hpo.execution.worker import WorkerSpec
    from hpo.memory import MemoryGate

logger = logging.getLogger("hpo.supervisor")


@dataclass
class OpenedStudy:
    study: optuna.Study
    store: StudyStore
    models: LaunchModels
    backlog: Backlog


def count_finished(study_settings: StudySettings, storage: RDBStorage) -> int | None:
    """COMPLETE + PRUNED trials of the study (None: no such study yet); a ConfigError if it
    exists with the other direction."""
    try:
        study = optuna.load_study(study_name=study_settings.name, storage=storage)
    except KeyError:
        return None
    stored = ", ".join(d.name.lower() for d in study.directions)
    wanted = ", ".join(study_settings.directions)
    if stored != wanted:
        raise ConfigError(
            f"study {study_settings.name!r} exists with direction {stored}, config says {wanted}"
        )
    trials = study.get_trials(deepcopy=False)
    check_space(study_settings, trials)
    return sum(t.state in FINISHED for t in trials)


def check_space(study_settings: StudySettings, trials: list[FrozenTrial]) -> None:
    """Compare the config's search space with the distributions the study's trials used: an
    incompatible change is a ConfigError (nothing is written), a compatible one a warning."""
    from optuna.distributions import check_distribution_compatibility

    stored: dict[str, BaseDistribution] = {}
    for trial in trials:  # the latest trial's distribution of each parameter
        stored.update(trial.distributions)
    for name, new in study_settings.space.items():
        old = stored.get(name)
        if old is None:
            if stored:
                logger.warning("study.space.%s is new to study %r", name, study_settings.name)
            continue
        try:
            check_distribution_compatibility(old, new)
        except ValueError as e:
            raise ConfigError(
                f"study.space.{name} cannot change in study {study_settings.name!r} "
                f"({str(e).rstrip('.')}: stored {old}, config {new}); use a new study.name"
            ) from e
        if old != new:
            logger.warning("study.space.%s changed from %s to %s", name, old, new)


def open_study(
    settings: Settings,
    storage: RDBStorage,
    gate_factory: Callable[[Settings, list[Device]], MemoryGate],
) -> OpenedStudy:
    """Create or load the study in ``storage`` with models learned from its trials."""
    devices = open_devices(settings.devices)
    gate = gate_factory(settings, devices)
    mem, space = settings.memory, settings.study
    admission = AdmissionScheduler(
        devices,
        mem.device_margin_frac,
        context_bytes(devices),
        pack=mem.pack,
        overcommit=mem.overcommit,
    )
    ram = RamBudget(space.scaling, space.groups, mem.trial_ram_gib, mem.ram_margin_frac)
    durations = DurationModel(space.groups)
    study = optuna.create_study(
        study_name=space.name,
        storage=storage,
        sampler=settings.make_sampler(),  # for tell only: the workers sample
        pruner=settings.make_pruner(),
        directions=[StudyDirection[d.upper()] for d in space.directions],
        load_if_exists=True,
    )
    earlier = study.get_trials(deepcopy=False)
    for trial in earlier:  # what RAM and how long trials of each kind took
        ram.observe(trial.params, trial.user_attrs)
        durations.observe(trial.params, trial.user_attrs)
    if gate.active:
        learned = gate.observe_trials(earlier)
        logger.info(
            "memory: budget %.0f MiB per trial; learned from %d earlier trials",
            (gate.budget_bytes or 0) / 2**20,
            learned,
        )
    split = Split(space.batch_param, space.max_accum_steps)
    settle = SettleModel(mem.settle and admission.packing)
    models = LaunchModels(devices, gate, admission, ram, durations, split, settle)
    backlog = Backlog(mem.max_bypass, mem.max_waiting)
    store = StudyStore(storage, space.name, settings.storage.url)
    finished = sum(t.state in FINISHED for t in earlier)
    storage.set_study_system_attr(store.study_id, RUN_TARGET_ATTR, space.n_trials)
    storage.set_study_system_attr(store.study_id, RUN_BASE_ATTR, finished)
    return OpenedStudy(study, store, models, backlog)


def grow_to_auto_par(
    pool: WorkerPool,
    models: LaunchModels,
    settings: Settings,
    spec_for: Callable[[int], WorkerSpec],
) -> int:
    """``par=auto``: derive the worker cap from what the models know, start the workers it
    allows, and replace the first one, which started with every CPU's threads."""
    study = settings.study
    par, why = auto_par(
        models.devices,
        models.gate,
        models.ram,
        study.space_conf,
        (study.scaling, study.groups),
        settings.memory.max_par,
    )
    logger.info("%s", why)
    first = list(pool.workers)
    spec = spec_for(par)
    pool.grow(par, spec)
    if spec.threads != max(1, available_cpus()):  # what the first worker got (par 1)
        for worker in first:  # started with every CPU's threads: oversubscribed now
            pool.retire(worker)
    return par


def warn_if_oversubscribed(par: int) -> None:
    """One line when ``par`` workers exceed the CPUs: they share them, one thread each."""
    cpus = available_cpus()
    if par > cpus:
        logger.warning(
            "par=%d on %d CPUs: the workers share them (1 thread each); par=auto sizes it",
            par,
            cpus,
        )
