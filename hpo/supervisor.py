"""The supervisor: asks for trials, hands them to workers, and records how each one ended.

It owns the trial lifecycle and never imports torch: parameters come from the declared search
space, results and measurements come back from the workers as :class:`~hpo.outcome.Outcome`
messages, and a worker that dies fails its trial with ``end_reason=worker_died``.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from hpo.config import instantiate_pruner, instantiate_sampler
from hpo.errors import ConfigError, StudyAborted
from hpo.outcome import Assignment, EndReason, Outcome
from hpo.pool import DIED, WorkerHandle, WorkerPool
from hpo.procs import available_cpus
from hpo.space import build_space, describe
from hpo.storage import open_storage, prepare_storage, storage_exists, storage_url
from hpo.worker import WorkerSpec

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from optuna.storages import RDBStorage

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards n_trials


@dataclass
class RunSummary:
    """What one ``hpo tune`` run did."""

    study_name: str
    storage_url: str
    target: int
    finished: int  # COMPLETE + PRUNED trials in the study at the end
    elapsed_s: float
    end_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    interrupted: bool = False
    best: optuna.trial.FrozenTrial | None = None


class _StopSignals:
    """Ctrl-C once: finish running trials, start no more. Twice, or SIGTERM: stop now."""

    def __init__(self) -> None:
        self.interrupts = 0
        self.terminated = False
        self._previous: dict[int, Any] = {}

    @property
    def draining(self) -> bool:
        return self.interrupts >= 1

    @property
    def stop_now(self) -> bool:
        return self.terminated or self.interrupts >= 2

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in ((signal.SIGINT, self._on_int), (signal.SIGTERM, self._on_term)):
            self._previous[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            logger.warning("interrupted: finishing running trials (Ctrl-C again to stop now)")
        else:
            logger.warning("interrupted again: stopping now")

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        logger.warning("terminated: stopping now")


class Supervisor:
    """Runs a study to ``study.n_trials`` finished trials with ``par`` worker processes."""

    def __init__(self, cfg: DictConfig, poll_s: float = 0.5) -> None:
        self._cfg = cfg
        self._space = build_space(cfg.study.space)
        self._url = storage_url(cfg)
        self._target = int(cfg.study.n_trials)
        self._poll_s = poll_s
        self._signals = _StopSignals()
        self._failures_in_a_row = 0
        self._done = 0
        self._summary = RunSummary(cfg.study.name, self._url, self._target, 0, 0.0)
        self._storage: RDBStorage | None = None  # opened once, by the first step that needs it

    def run(self) -> RunSummary:
        """Run until the target is reached, the user stops it, or failures pile up."""
        start = time.monotonic()
        self._done = self._finished_before()
        if self._done >= self._target:
            logger.info(
                "study %r already has %d/%d finished trials: nothing to do",
                self._cfg.study.name,
                self._done,
                self._target,
            )
        else:
            self._run_workers()
        self._summary.elapsed_s = time.monotonic() - start
        return self._summary

    def _finished_before(self) -> int:
        """Finished trials of an existing study (the storage is not created for this)."""
        if not storage_exists(self._url):
            return 0
        try:
            study = optuna.load_study(study_name=self._cfg.study.name, storage=self._open_storage())
        except KeyError:
            return 0
        if study.direction.name.lower() != self._cfg.study.direction:
            raise ConfigError(
                f"study {self._cfg.study.name!r} exists with direction "
                f"{study.direction.name.lower()}, config says {self._cfg.study.direction}"
            )
        self._summary.finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        return self._summary.finished

    def _run_workers(self) -> None:
        par = int(self._cfg.par)
        pool = WorkerPool(par, self._worker_spec(par))
        study: optuna.Study | None = None
        try:
            pool.start()
            pool.wait_ready()
            study = self._open_study()
            logger.info(
                "study %r: %d/%d finished, running with par=%d on %s",
                study.study_name,
                self._done,
                self._target,
                par,
                self._url,
            )
            self._signals.install()
            self._loop(study, pool)
        finally:
            self._signals.restore()
            in_flight = [w for w in pool.workers if w.assignment is not None]
            pool.shutdown()
            if study is not None:
                for worker in in_flight:
                    self._record_interrupted(study, worker)
                self._finish_summary(study)

    def _worker_spec(self, par: int) -> WorkerSpec:
        from omegaconf import OmegaConf

        container = OmegaConf.to_container(self._cfg, resolve=True)
        assert isinstance(container, dict)
        return WorkerSpec(
            cfg={str(key): value for key, value in container.items()},
            storage_url=self._url,
            busy_timeout_s=float(self._cfg.storage.busy_timeout_s),
            threads=max(1, available_cpus() // par),
            log_level=str(self._cfg.log_level),
        )

    def _open_study(self) -> optuna.Study:
        prepare_storage(self._url)
        return optuna.create_study(
            study_name=self._cfg.study.name,
            storage=self._open_storage(),
            sampler=instantiate_sampler(self._cfg),
            pruner=instantiate_pruner(self._cfg),
            direction=self._cfg.study.direction,
            load_if_exists=True,
        )

    def _open_storage(self) -> RDBStorage:
        if self._storage is None:
            self._storage = open_storage(self._url, self._cfg.storage.busy_timeout_s)
        return self._storage

    def _loop(self, study: optuna.Study, pool: WorkerPool) -> None:
        while not self._signals.stop_now:
            busy = sum(w.assignment is not None for w in pool.workers)
            idle = [w for w in pool.workers if w.idle]
            if not self._signals.draining and idle and self._done + busy < self._target:
                self._done = max(self._done, study._storage.get_n_trials(study._study_id, FINISHED))
                for worker in idle[: max(0, self._target - self._done - busy)]:
                    self._launch(study, pool, worker)
            elif busy == 0 and (self._signals.draining or self._done >= self._target):
                self._summary.interrupted = self._signals.draining
                return
            for worker, payload in pool.poll(self._poll_s):
                if payload is DIED:
                    self._on_died(study, pool, worker)
                elif isinstance(payload, Outcome):
                    self._on_outcome(study, worker, payload)
        self._summary.interrupted = True

    def _launch(self, study: optuna.Study, pool: WorkerPool, worker: WorkerHandle) -> None:
        trial = study.ask(self._space)
        study._storage.set_trial_user_attr(trial._trial_id, "worker_pid", worker.pid)
        logger.debug("trial %d -> worker %d: %s", trial.number, worker.pid, describe(trial.params))
        pool.assign(worker, Assignment(trial._trial_id, trial.number))  # a dead pipe shows as DIED

    def _on_outcome(self, study: optuna.Study, worker: WorkerHandle, outcome: Outcome) -> None:
        assignment = worker.assignment
        worker.assignment = None
        if assignment is None or assignment.trial_number != outcome.trial_number:
            logger.error(
                "worker %d reported an unexpected trial %d", worker.pid, outcome.trial_number
            )
            return
        self._record(
            study, assignment, outcome.end_reason, outcome.value, outcome.attrs, outcome.message
        )

    def _on_died(self, study: optuna.Study, pool: WorkerPool, worker: WorkerHandle) -> None:
        code = worker.process.exitcode
        if worker.assignment is not None:
            error = f"worker process {describe_exit(code)} while running the trial"
            attrs = {
                "worker_pid": worker.pid,
                "duration_s": round(time.monotonic() - worker.started_at, 3),
                "error": error,
            }
            self._record(study, worker.assignment, EndReason.WORKER_DIED, None, attrs, error)
            worker.assignment = None
        elif not worker.ready:
            self._count_failure(f"worker {describe_exit(code)} while starting")
        if self._signals.draining or self._signals.stop_now:
            pool.remove(worker)
        else:
            pool.replace(worker)

    def _record(
        self,
        study: optuna.Study,
        assignment: Assignment,
        reason: EndReason,
        value: float | None,
        attrs: dict[str, Any],
        message: str | None = None,
    ) -> None:
        storage = study._storage
        for key, item in {"end_reason": reason.value, **attrs}.items():
            storage.set_trial_user_attr(assignment.trial_id, key, item)
        values = value if reason is EndReason.COMPLETE else None
        frozen = study.tell(
            assignment.trial_number, values, state=reason.state, skip_if_finished=True
        )
        self._summary.end_reasons[reason.value] += 1
        if frozen.state in FINISHED:
            self._done += 1
            self._failures_in_a_row = 0
        logger.info("%s", self._progress_line(frozen, reason, attrs, message))
        if frozen.state == TrialState.FAIL and reason is not EndReason.INTERRUPTED:
            self._count_failure(message or reason.value)

    def _count_failure(self, message: str) -> None:
        self._failures_in_a_row += 1
        limit = int(self._cfg.max_failures_in_a_row)
        if self._failures_in_a_row >= limit:
            raise StudyAborted(f"{limit} trials failed in a row; last: {message}")

    def _record_interrupted(self, study: optuna.Study, worker: WorkerHandle) -> None:
        assert worker.assignment is not None
        attrs = {
            "worker_pid": worker.pid,
            "duration_s": round(time.monotonic() - worker.started_at, 3),
        }
        try:
            self._record(
                study, worker.assignment, EndReason.INTERRUPTED, None, attrs, "stopped by the user"
            )
        except Exception as e:  # the study is being torn down; say what was left
            logger.error(
                "could not record trial %d as interrupted: %s", worker.assignment.trial_number, e
            )

    def _progress_line(
        self,
        trial: optuna.trial.FrozenTrial,
        reason: EndReason,
        attrs: dict[str, Any],
        message: str | None,
    ) -> str:
        head = f"[{self._done:>{len(str(self._target))}}/{self._target}] trial {trial.number}"
        state = trial.state.name
        if trial.state == TrialState.COMPLETE:
            state += f" {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            state += f" at epoch {trial.last_step}"
        else:
            state += f" ({reason.value}: {message})" if message else f" ({reason.value})"
        extra = f" {attrs['duration_s']:.1f}s" if "duration_s" in attrs else ""
        if "peak_rss_mib" in attrs:
            extra += f" rss {attrs['peak_rss_mib']:.0f} MiB"
        if "peak_vram_mib" in attrs:
            extra += f" vram {attrs['peak_vram_mib']:.0f} MiB"
        return f"{head} {state}{extra} | {describe(trial.params)}"

    def _finish_summary(self, study: optuna.Study) -> None:
        self._summary.finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            self._summary.best = study.best_trial


def describe_exit(code: int | None) -> str:
    """``exited with code 1`` / ``was killed by SIGKILL``."""
    if code is None:
        return "vanished"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
