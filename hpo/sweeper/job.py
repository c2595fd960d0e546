"""One trial of a sweep as a Hydra job of the app, run inside an hpo worker.

:class:`HydraJob` is the study's objective, sent to the workers by value (cloudpickle, with the
app's task function, Hydra's context and the multirun's config). For each trial it does what
Hydra's own launchers do for a job: compose the job's config from the multirun's with the
trial's overrides, number the job by the trial, and call Hydra's ``run_job``, which makes the
job's output directory (``.hydra/`` inside), sets up its logging, makes ``HydraConfig``
available to the task and honours ``hydra.job.chdir``. The task's return value is the trial's
objective value; its exception is raised again with its traceback, so the trial fails (or is
pruned, for ``optuna.TrialPruned``) as any objective's would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.sweeper.params import override_value

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig


@dataclass
class HydraJob:
    """The objective of a sweep: runs the app's task as the Hydra job of one trial."""

    hydra_context: Any  # hydra.types.HydraContext: the config loader and the app's callbacks
    task_function: Callable[[Any], Any]  # the app's @hydra.main function, undecorated
    config: DictConfig  # the multirun's config (hydra.* included)
    singletons: dict[Any, Any]  # Hydra's singletons (ConfigStore, plugins) of the app's process
    sweep_dir: str  # hydra.sweep.dir as resolved once in the app's process
    fixed: tuple[str, ...] = ()  # overrides every trial gets (fixed values, deletions)
    custom_search_space: str | None = None  # "module.function"(cfg, trial) suggesting more
    _started: bool = field(default=False, repr=False)

    def __call__(self, trial: optuna.Trial) -> Any:
        self._start()
        if self.custom_search_space:
            from hydra.utils import get_method

            get_method(self.custom_search_space)(self.config, trial)
        overrides = [f"{name}={override_value(v)}" for name, v in trial.params.items()]
        config = self._job_config([*overrides, *self.fixed], trial.number)
        ret = _run_keeping_logging(lambda: self._run(config))
        from hydra.core.utils import JobStatus

        if ret.status is JobStatus.FAILED:
            raise ret._return_value  # the task's exception, its traceback with it
        return _plain(ret.return_value)

    def _start(self) -> None:
        """Hydra's globals and singletons as in the app's process (once per worker)."""
        if self._started:
            return
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        setup_globals()
        Singleton.set_state(self.singletons)
        self._started = True

    def _job_config(self, overrides: list[str], number: int) -> DictConfig:
        from omegaconf import open_dict

        loader = self.hydra_context.config_loader
        config = loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.sweep.dir = self.sweep_dir  # one sweep directory for every trial
            config.hydra.job.id = str(number)
            config.hydra.job.num = number
        return config

    def _run(self, config: DictConfig) -> Any:
        from hydra.core.utils import run_job

        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def _run_keeping_logging(run: Callable[[], Any]) -> Any:
    """Run a Hydra job, whose logging set-up replaces the process's, and put the worker's
    logging back afterwards (the job's file handlers closed)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return run()
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _plain(value: Any) -> Any:
    """A scalar the task returned as a tensor or an array, as a Python number."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return item()
    return value
