"""The supervisor: asks for trials, hands them to workers, and records how each one ended.

It owns the trial lifecycle and never imports torch: parameters come from the declared search
space, results and measurements come back from the workers as :class:`~hpo.outcome.Outcome`
messages. A worker that dies fails its trial with ``end_reason=worker_died`` and is replaced at
once (the pool waits on the process sentinels, so a death is seen within one poll); a trial past
``faults.trial_timeout_s`` is killed with its worker (``timeout``); infrastructure failures are
retried with the same parameters; workers are recycled after ``faults.recycle_after`` trials.
The supervisor records an RDB heartbeat for every trial it runs and reaps RUNNING trials that a
vanished supervisor left behind (see :mod:`hpo.reaper`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from hpo.admission import AdmissionScheduler
from hpo.autopar import auto_par
from hpo.backlog import Backlog
from hpo.checkpoint import CheckpointStore, checkpoint_root
from hpo.config import instantiate_pruner, instantiate_sampler
from hpo.devices import Device, open_devices
from hpo.durations import DurationModel
from hpo.errors import ConfigError
from hpo.launch import LaunchPath
from hpo.memory import (
    MemoryGate,
    build_gate,
    context_bytes,
    memory_groups,
    retry_with_half_batch,
)
from hpo.memory.sampling import feasible_sampler
from hpo.outcome import Assignment, EndReason, Outcome
from hpo.pool import DIED, WorkerHandle, WorkerPool
from hpo.procs import available_cpus
from hpo.ram import RamBudget
from hpo.reaper import Heartbeats, Reaper
from hpo.recorder import FINISHED, RunSummary, TrialRecorder
from hpo.retry import RetryPolicy
from hpo.signals import StopSignals, describe_exit
from hpo.space import build_space
from hpo.storage import open_storage, prepare_storage, storage_exists, storage_url
from hpo.worker import WorkerSpec

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from optuna.storages import RDBStorage

logger = logging.getLogger(__name__)

__all__ = ["FINISHED", "RunSummary", "Supervisor", "describe_exit"]

# Trials other supervisors finish are noticed within this time (several nodes on one study
# may overshoot n_trials by what they finish meanwhile, as by their running trials).
_COUNT_EVERY_S = 2.0


class Supervisor(LaunchPath):
    """Runs a study to ``study.n_trials`` finished trials with ``par`` worker processes."""

    def __init__(
        self,
        cfg: DictConfig,
        poll_s: float = 0.5,
        gate_factory: Callable[[DictConfig, list[Device]], MemoryGate] | None = None,
    ) -> None:
        """``gate_factory`` replaces :func:`~hpo.memory.build_gate` (benchmarks plug in an
        oracle that knows the true memory of a simulated workload)."""
        self._cfg = cfg
        self._gate_factory = gate_factory or build_gate
        self._space = build_space(cfg.study.space)
        self._url = storage_url(cfg)
        self._target = int(cfg.study.n_trials)
        self._poll_s = poll_s
        self._signals = StopSignals()
        faults = cfg.faults
        self._timeout_s = float(faults.trial_timeout_s)  # 0 = no limit
        self._recycle_after = int(faults.recycle_after)  # 0 = never
        self._reap_every_s = float(faults.heartbeat_interval_s)
        self._next_reap = 0.0
        self._next_count = 0.0  # when to count the storage's finished trials again
        self._summary = RunSummary(cfg.study.name, self._url, self._target, 0, 0.0)
        self._checkpoints = CheckpointStore(checkpoint_root(cfg), bool(faults.keep_best_checkpoint))
        self._recorder = TrialRecorder(
            self._summary,
            RetryPolicy.from_conf(faults),
            self._checkpoints,
            int(cfg.max_failures_in_a_row),
        )
        self._storage: RDBStorage | None = None  # opened once, by the first step that needs it
        self._gate: MemoryGate | None = None  # built with the study (it may trace a prior)
        self._params: dict[int, dict[str, Any]] = {}  # running trials' params, by number
        self._backlog = Backlog(int(cfg.memory.max_bypass), int(cfg.memory.max_waiting))
        self._bound: dict[WorkerHandle, int | None] = {}  # worker -> device it touched
        self._devices: list[Device] = []
        self._admission = AdmissionScheduler([], 0.0, 0, pack=False)  # set with the study
        self._ram = RamBudget([], [], 0.0, 0.0)  # set with the study
        # The parameters memory depends on: (scaling, groups), for every estimator of the study.
        self._memory_params = (list(cfg.study.memory.scaling), memory_groups(cfg))
        self._durations = DurationModel(self._memory_params[1])
        self._beats: Heartbeats | None = None
        self._reaper: Reaper | None = None

    def run(self) -> RunSummary:
        """Run until the target is reached, the user stops it, or failures pile up."""
        start = time.monotonic()
        self._recorder.done = self._finished_before()
        if self._recorder.done >= self._target:
            logger.info(
                "study %r already has %d/%d finished trials: nothing to do",
                self._cfg.study.name,
                self._recorder.done,
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
        auto = str(self._cfg.par) == "auto"
        par = 1 if auto else int(self._cfg.par)  # par=auto: one worker until the cap is known
        pool = WorkerPool(par, self._worker_spec(par))
        study: optuna.Study | None = None
        stopped_by = "stopped by the user"
        try:
            pool.start()
            pool.wait_ready()  # a broken objective is a ConfigError before the storage is touched
            study = self._open_study()
            self._reap(study, exclude=set())  # what a killed supervisor left RUNNING
            if auto:
                par = self._auto_par(pool)
            logger.info(
                "study %r: %d/%d finished, running with par=%d on %s",
                study.study_name,
                self._recorder.done,
                self._target,
                par,
                self._url,
            )
            self._signals.install()
            self._loop(study, pool)
        except BaseException as e:
            stopped_by = f"the supervisor stopped: {type(e).__name__}: {e}"
            raise
        finally:
            self._signals.restore()
            in_flight = [w for w in pool.workers if w.assignment is not None]
            pool.shutdown()
            if study is not None:
                self._interrupt_all(study, in_flight, stopped_by)
                self._finish_summary(study)

    def _auto_par(self, pool: WorkerPool) -> int:
        """Derive the worker cap (``par=auto``) and start the workers it allows."""
        par, why = auto_par(
            self._devices,
            self._gate,
            self._ram,
            self._cfg.study.space,
            self._memory_params,
            int(self._cfg.memory.max_par),
        )
        logger.info("%s", why)
        first = list(pool.workers)
        spec = self._worker_spec(par)
        pool.grow(par, spec)
        if spec.threads != max(1, available_cpus()):  # what the first worker got (par 1)
            for worker in first:  # started with every CPU's threads: oversubscribed now
                pool.retire(worker)
        return par

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
        storage = self._open_storage()
        self._beats = Heartbeats(storage, float(self._cfg.faults.heartbeat_interval_s))
        self._reaper = Reaper(storage, float(self._cfg.faults.grace_period_s))
        self._devices = devices = open_devices(self._cfg)
        self._gate = gate = self._gate_factory(self._cfg, devices)
        mem = self._cfg.memory
        self._admission = AdmissionScheduler(
            devices, float(mem.margin_frac), context_bytes(devices), pack=bool(mem.pack)
        )
        ram_gib, margin = float(mem.trial_ram_gib), float(mem.margin_frac)
        self._ram = RamBudget(*self._memory_params, ram_gib, margin)
        constraints = {"constraints_func": gate.constraints} if gate.active else {}
        study = optuna.create_study(
            study_name=self._cfg.study.name,
            storage=storage,
            sampler=feasible_sampler(instantiate_sampler(self._cfg, **constraints), gate),
            pruner=instantiate_pruner(self._cfg),
            direction=self._cfg.study.direction,
            load_if_exists=True,
        )
        earlier = study.get_trials(deepcopy=False)
        for trial in earlier:  # what RAM and how long trials of each kind took
            attrs = trial.user_attrs
            self._ram.observe(trial.params, attrs)
            self._durations.observe(trial.params, attrs)
        if gate.active:
            learned = gate.observe_trials(earlier)
            logger.info(
                "memory: budget %.0f MiB per trial; learned from %d earlier trials",
                (gate.budget_bytes or 0) / 2**20,
                learned,
            )
        return study

    def _open_storage(self) -> RDBStorage:
        if self._storage is None:
            faults = self._cfg.faults
            self._storage = open_storage(
                self._url,
                self._cfg.storage.busy_timeout_s,
                heartbeat_interval_s=int(faults.heartbeat_interval_s),
                grace_period_s=int(faults.grace_period_s),
            )
        return self._storage

    def _loop(self, study: optuna.Study, pool: WorkerPool) -> None:
        rec = self._recorder
        while not self._signals.stop_now:
            busy = sum(w.assignment is not None for w in pool.workers)
            idle = any(w.idle for w in pool.workers)
            if not self._signals.draining and idle and rec.done + busy < self._target:
                self._catch_up(study)
                self._schedule(study, pool)
            elif busy == 0 and (self._signals.draining or rec.done >= self._target):
                self._summary.interrupted = self._signals.draining
                return
            for worker, payload in pool.poll(self._poll_s):
                if worker not in pool.workers:
                    continue  # retired after a CUDA error while this batch was handled
                if payload is DIED:
                    self._on_died(study, pool, worker)
                elif isinstance(payload, Outcome):
                    self._on_outcome(study, pool, worker, payload)
            self._enforce_timeouts(study, pool)
            self._keep_alive(study, pool)
        self._summary.interrupted = True

    def _catch_up(self, study: optuna.Study) -> None:
        """Count the finished trials in storage (other supervisors' too), at most every
        ``_COUNT_EVERY_S``: reading them costs a query of every trial, and this run counts its
        own as it records them."""
        now = time.monotonic()
        if now < self._next_count:
            return
        self._next_count = now + _COUNT_EVERY_S
        rec = self._recorder
        rec.done = max(rec.done, study._storage.get_n_trials(study._study_id, FINISHED))

    # --- events ---------------------------------------------------------------------------------

    def _on_outcome(
        self, study: optuna.Study, pool: WorkerPool, worker: WorkerHandle, outcome: Outcome
    ) -> None:
        assignment = worker.assignment
        worker.assignment = None
        if assignment is None or assignment.trial_number != outcome.trial_number:
            logger.error(
                "worker %d reported an unexpected trial %d", worker.pid, outcome.trial_number
            )
            return
        worker.trials_done += 1
        self._release(outcome.trial_number)
        self._learn(study, outcome)
        if not (self._signals.draining or self._signals.stop_now):
            self._retire_if_spent(pool, worker, outcome)
            self._start_waiting(study, pool)  # the freed memory works while this one is recorded
        self._recorder.record(
            study, assignment, outcome.end_reason, outcome.value, outcome.attrs, outcome.message
        )

    def _retire_if_spent(self, pool: WorkerPool, worker: WorkerHandle, outcome: Outcome) -> None:
        if outcome.end_reason.poisons_worker:  # the worker exits on its own; never reuse it
            logger.info("replacing worker %d after a CUDA error", worker.pid)
            pool.retire(worker)
        elif self._recycle_after and worker.trials_done >= self._recycle_after:
            logger.info("recycling worker %d after %d trials", worker.pid, worker.trials_done)
            pool.retire(worker)

    def _learn(self, study: optuna.Study, outcome: Outcome) -> None:
        """Teach the memory gate what the trial measured; after an OOM, maybe retry smaller."""
        params = self._params.pop(outcome.trial_number, None)
        if params is None or self._gate is None:
            return
        attrs = {"end_reason": outcome.end_reason.value, **outcome.attrs}
        learned = self._gate.estimator.n_observations
        self._gate.observe(params, attrs)
        if self._gate.estimator.n_observations != learned:
            self._reestimate(study)
        self._ram.observe(params, attrs)
        self._durations.observe(params, attrs)
        if outcome.end_reason is EndReason.OOM and self._cfg.memory.oom_retry_halved_batch:
            retry_with_half_batch(study, outcome.trial_number, params, self._cfg.study.space)

    def _on_died(self, study: optuna.Study, pool: WorkerPool, worker: WorkerHandle) -> None:
        code = worker.process.exitcode
        if worker.assignment is not None:
            error = f"worker process {describe_exit(code)} while running the trial"
            self._fail_running(study, worker, EndReason.WORKER_DIED, error)
        elif not worker.ready:
            self._recorder.count_failure(f"worker {describe_exit(code)} while starting")
        self._respawn(pool, worker)

    def _enforce_timeouts(self, study: optuna.Study, pool: WorkerPool) -> None:
        """Kill the worker (and its children) of a trial past ``faults.trial_timeout_s``."""
        if not self._timeout_s:
            return
        now = time.monotonic()
        for worker in list(pool.workers):
            if worker.assignment is None or now - worker.started_at <= self._timeout_s:
                continue
            pool.kill(worker)
            error = f"trial ran past faults.trial_timeout_s={self._timeout_s:g} s; worker killed"
            self._fail_running(study, worker, EndReason.TIMEOUT, error)
            self._respawn(pool, worker)

    def _fail_running(
        self, study: optuna.Study, worker: WorkerHandle, reason: EndReason, error: str
    ) -> None:
        assert worker.assignment is not None
        attrs = {
            "worker_pid": worker.pid,
            "duration_s": round(time.monotonic() - worker.started_at, 3),
            "error": error,
        }
        assignment, worker.assignment = worker.assignment, None
        self._release(assignment.trial_number)
        self._params.pop(assignment.trial_number, None)  # nothing measured to learn from
        self._recorder.record(study, assignment, reason, None, attrs, error)

    def _respawn(self, pool: WorkerPool, worker: WorkerHandle) -> None:
        if self._signals.draining or self._signals.stop_now:
            pool.remove(worker)
        else:
            pool.replace(worker)

    # --- liveness -------------------------------------------------------------------------------

    def _keep_alive(self, study: optuna.Study, pool: WorkerPool) -> None:
        """Heartbeats for the running trials; now and then, reap other supervisors' orphans."""
        running = [w.assignment.trial_id for w in pool.workers if w.assignment is not None]
        running += [item.trial._trial_id for item in self._backlog.items]
        assert self._beats is not None
        self._beats.beat(running)
        if time.monotonic() >= self._next_reap:
            self._reap(study, exclude=set(running))

    def _reap(self, study: optuna.Study, exclude: set[int]) -> None:
        assert self._reaper is not None
        self._next_reap = time.monotonic() + self._reap_every_s
        for trial_id, _, why in self._reaper.find(study, exclude):
            self._recorder.reap(study, trial_id, why)

    def _record_interrupted(
        self, study: optuna.Study, assignment: Assignment, attrs: dict[str, Any], why: str
    ) -> None:
        try:
            self._recorder.record(study, assignment, EndReason.INTERRUPTED, None, attrs, why)
        except Exception as e:  # the study is being torn down; say what was left
            logger.error("could not record trial %d as interrupted: %s", assignment.trial_number, e)

    def _interrupt_all(self, study: optuna.Study, in_flight: list[WorkerHandle], why: str) -> None:
        """Record the running trials, and those still waiting for memory, as interrupted."""
        now = time.monotonic()
        for worker in in_flight:
            assert worker.assignment is not None
            attrs = {"worker_pid": worker.pid, "duration_s": round(now - worker.started_at, 3)}
            self._record_interrupted(study, worker.assignment, attrs, why)
        for item in self._backlog.items:
            trial = item.trial
            attrs = {"admit_wait_s": round(now - item.since, 3)}
            assignment = Assignment(trial._trial_id, trial.number, None)
            self._record_interrupted(study, assignment, attrs, f"{why} (before it started)")
        self._backlog.items.clear()

    def _finish_summary(self, study: optuna.Study) -> None:
        self._summary.finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if complete:
            self._summary.best = study.best_trial
        try:
            self._checkpoints.sweep(study)
        except OSError as e:
            logger.warning("could not clean up checkpoints: %s", e)
