"""``hpo.optimize(study, objective, n_trials, par=…)``: ``optuna.Study.optimize`` run by hpo.

Porting an Optuna script is one line: ``study.optimize(objective, n_trials=100, n_jobs=4)``
becomes ``hpo.optimize(study, objective, n_trials=100, par=4)``. The study is the caller's:

- with an RDB storage (``optuna.create_study(storage="sqlite:///…")``), the trials go there;
- in memory, hpo runs it on ``./_optuna/<study_name>.db`` (its trials copied there first) and
  on return the same ``study`` object holds the trials, as after ``study.optimize``;
- its sampler and pruner are the ones the workers use (sent by value).

``n_trials`` counts this call's finished (complete or pruned) trials, so two calls add up;
None runs until ``timeout``, a callback's ``study.stop()`` or Ctrl-C. ``timeout`` (seconds)
and ``study.stop()`` let the running trials finish and start no new one. ``callbacks`` are
called in the caller's process as trials end, with a study over the run's storage. A trial
whose objective raised an exception ``catch`` does not name ends the call with
:class:`~hpo.errors.TrialFailed` once the running trials finished (OOMs, dead workers and
time limits are hpo's to handle, never raised). Ctrl-C (a notebook's interrupt) stops at
once: the running trials end interrupted and ``KeyboardInterrupt`` is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo.contract import UNLIMITED_TRIALS, Attr
from hpo.errors import ConfigError
from hpo.storage import _private

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.config import Settings
    from hpo.supervisor.signals import StopSignals

logger = logging.getLogger(__name__)


def optimize(
    study: optuna.Study,
    objective: Callable[..., Any],
    n_trials: int | None = None,
    timeout: float | None = None,
    *,
    par: int | str = 2,
    catch: Iterable[type[Exception]] | type[Exception] = (),
    callbacks: Iterable[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
    gc_after_trial: bool = False,
    show_progress_bar: bool = False,
    config_dir: str | None = None,
    **overrides: Any,
) -> None:
    """Optimize ``study`` with ``objective`` in ``par`` worker processes (see the module's
    notes); ``gc_after_trial`` and ``show_progress_bar`` are accepted for Optuna's sake (each
    trial's worker is hpo's to clean up; a notebook shows the progress, a terminal logs it).
    ``overrides`` are config keys as for :func:`hpo.tune` (``faults__trial_timeout_s=600``)."""
    from hpo.python.progress import in_notebook
    from hpo.python.watch import sequence
    from hpo.supervisor.signals import StopSignals

    _check(n_trials, timeout)
    if in_notebook():  # the cell shows the progress; the log keeps to warnings
        overrides = {"log_level": "WARNING", **overrides}
    run = _prepare(study, objective, n_trials, par, config_dir, overrides)
    signals = StopSignals(stop_at_first=True)
    watcher = _watcher(run, signals, timeout, sequence(callbacks), sequence(catch))
    interrupted = False
    try:
        watcher.start()
        interrupted = _run(run.settings, signals).interrupted
    finally:
        watcher.close()
        run.copy_back(study)
    if watcher.error is not None:
        raise watcher.error
    if interrupted and signals.ctrl_c:
        raise KeyboardInterrupt


@dataclass
class _Run:
    """A call's settings and the study over the run's storage (the caller's, or hpo's file
    for an in-memory study, whose trials are copied back from ``first`` on)."""

    settings: Settings
    view: optuna.Study  # the study in the run's storage, opened in this process
    in_memory: bool
    first: int  # in-memory: the first trial number of the file to copy back
    target: int | None  # finished trials this call runs to (None: no limit)
    copied: bool = False  # the file was created from the in-memory study: numbers match

    def copy_back(self, study: optuna.Study) -> None:
        """An in-memory study gets the trials that ended in the file (as ``study.optimize``
        leaves them in the study), its enqueued (WAITING) ones their end too."""
        if not self.in_memory:
            return
        from optuna.trial import TrialState

        ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        trials = self.view.get_trials(deepcopy=True, states=ended)
        study.add_trials([t for t in trials if t.number >= self.first and not _unstarted(t)])
        if self.copied:
            waiting = {t.number for t in study.get_trials(states=(TrialState.WAITING,))}
            for trial in trials:
                if trial.number in waiting and not _unstarted(trial):
                    _private.finish_waiting(study, trial)


def _unstarted(trial: FrozenTrial) -> bool:
    """A trial asked ahead that the run's end stopped before it started (no objective ran)."""
    return "before it started" in str(trial.user_attrs.get(Attr.ERROR, ""))


def _check(n_trials: int | None, timeout: float | None) -> None:
    if n_trials is not None and (isinstance(n_trials, bool) or n_trials < 0):
        raise ConfigError(f"n_trials must be None or an integer >= 0, got {n_trials!r}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout must be None or > 0 seconds, got {timeout!r}")


def _prepare(
    study: optuna.Study,
    objective: Callable[..., Any],
    n_trials: int | None,
    par: int | str,
    config_dir: str | None,
    overrides: dict[str, Any],
) -> _Run:
    """The run's settings and its study, created in the run's storage if it is new (an
    in-memory study's trials copied into it)."""
    from hpo.api import api_settings

    try:
        url = _private.rdb_url(study)
    except ValueError as e:
        raise ConfigError(
            f"hpo.optimize needs a study in memory or in an RDB storage, got {e}"
        ) from None
    settings = api_settings(
        objective,
        None,
        UNLIMITED_TRIALS,
        directions=[d.name.lower() for d in study.directions],
        par=par,
        storage=url,
        name=study.study_name,
        config_dir=config_dir,
        overrides={"sampler": study.sampler, "pruner": study.pruner, **overrides},
    )
    view, created = _open(settings, study)  # a new file gets the in-memory trials
    first = len(study.trials)
    if url is None and created:
        view.add_trials(study.trials)
    elif url is None and first:  # the file had this study already: copy what this call adds
        first = len(view.trials)
    done = _finished(view)
    target = None if n_trials is None else done + n_trials
    study_settings = _replace_target(settings, UNLIMITED_TRIALS if target is None else target)
    in_memory = url is None
    return _Run(study_settings, view, in_memory, first if in_memory else 0, target, created)


def _open(settings: Settings, study: optuna.Study) -> tuple[optuna.Study, bool]:
    """The study in the run's storage, created (empty) if it is not there; and whether it was."""
    import optuna

    from hpo.storage import open_storage, prepare_storage

    url = settings.storage.url
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpo logs what it does itself
    prepare_storage(url, settings.storage.busy_timeout_s)
    storage = open_storage(url, settings.storage.busy_timeout_s)
    try:
        return optuna.load_study(study_name=study.study_name, storage=storage), False
    except KeyError:
        pass
    created = optuna.create_study(
        study_name=study.study_name, storage=storage, directions=study.directions
    )
    return created, True


def _finished(study: optuna.Study) -> int:
    from hpo.contract import FINISHED

    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _replace_target(settings: Settings, target: int) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, study=dataclasses.replace(settings.study, n_trials=target))


def _watcher(
    run: _Run,
    signals: StopSignals,
    timeout: float | None,
    callbacks: tuple[Any, ...],
    catch: tuple[Any, ...],
) -> Any:
    from hpo.python.progress import NotebookProgress, in_notebook
    from hpo.python.watch import RunWatcher

    progress = NotebookProgress(run.view.study_name, run.target) if in_notebook() else None
    return RunWatcher(
        run.view,
        signals,
        timeout=timeout,
        callbacks=callbacks,
        catch=catch,
        target=run.target,
        progress=progress,
    )


def _run(settings: Settings, signals: StopSignals) -> Any:
    from hpo.api import run_settings

    return run_settings(settings, signals)
