"""The supervisor's event loop: starts trials through its launcher, ends them through its
recorder, and keeps workers and trials alive.

It owns the trial lifecycle and never imports torch: results and measurements come back from
the workers as :class:`~hpo.execution.protocol.Outcome` messages. A worker that dies fails its
trial (``worker_died``) and is replaced at once; a trial past ``faults.trial_timeout_s`` is
killed with its worker (``timeout``); infrastructure failures are retried with the same
parameters; a worker whose memory grows across trials is recycled. It records an RDB heartbeat
for every trial it runs and reaps RUNNING trials nobody runs any more (liveness).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

from hpo.contract import Attr, EndReason
from hpo.execution import procs
from hpo.execution.pool import DIED, WorkerHandle, WorkerPool
from hpo.execution.procs import available_cpus
from hpo.execution.protocol import Outcome
from hpo.execution.worker import WorkerSpec
from hpo.memory import MemoryGate, build_gate
from hpo.storage import StudyStore, display_url, open_storage, prepare_storage, storage_exists
from hpo.supervisor import study as setup
from hpo.supervisor.checkpoints import CheckpointStore
from hpo.supervisor.launcher import Launcher
from hpo.supervisor.liveness import Heartbeats, Reaper
from hpo.supervisor.lock import StudyLock
from hpo.supervisor.nodes import NodeRegistry
from hpo.supervisor.recorder import RunSummary, TrialRecorder
from hpo.supervisor.retry import RetryPolicy, retry_after_oom
from hpo.supervisor.signals import StopSignals, describe_exit

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

    from hpo.config.settings import Settings
    from hpo.devices import Device

logger = logging.getLogger(__name__)

GateFactory = Callable[["Settings", list["Device"]], MemoryGate]

# Trials other supervisors finish are noticed within this time (several nodes on one study
# may overshoot n_trials by what they finish meanwhile, as by their running trials).
_COUNT_EVERY_S = 2.0


class Supervisor:
    """Runs a study to ``study.n_trials`` finished trials with ``par`` worker processes."""

    def __init__(
        self, settings: Settings, poll_s: float = 0.5, gate_factory: GateFactory | None = None
    ) -> None:
        """``gate_factory`` replaces :func:`~hpo.memory.build_gate` (benchmarks plug in an
        oracle that knows the true memory of a simulated workload)."""
        self._settings = settings
        self._gate_factory = gate_factory or build_gate
        self._target = settings.study.n_trials
        self._poll_s = poll_s
        self._signals = StopSignals()
        faults = settings.faults
        self._next_reap = self._next_count = 0.0  # when to reap, to count finished trials
        url = display_url(settings.storage.url)
        self._summary = RunSummary(settings.study.name, url, self._target, 0, 0.0)
        self._history = "new"  # or "resumed with N finished trials"
        self._checkpoints = CheckpointStore(faults.checkpoint_root, faults.keep_best_checkpoint)
        retry = RetryPolicy(faults.retry_on, faults.max_retries)
        fails = settings.max_failures_in_a_row
        self._recorder = TrialRecorder(self._summary, retry, self._checkpoints, fails)
        self._rdb: RDBStorage | None = None  # opened once, by the first step that needs it
        self._launcher: Launcher | None = None  # built with the study (it may trace a prior)
        self._beats: Heartbeats | None = None
        self._reaper: Reaper | None = None
        self._lock = StudyLock(settings.storage.url, settings.study.name, settings.node_id)
        self._node: NodeRegistry | None = None  # this node's record in the study
        self._run_id = uuid.uuid4().hex  # marks this run's worker processes and their children

    def run(self) -> RunSummary:
        """Run until the target is reached, the user stops it, or failures pile up."""
        start = time.monotonic()
        self._recorder.recorded = self._finished_before()
        if self._recorder.done >= self._target:
            logger.info(
                "study %r in %s already has %d/%d finished trials: nothing to do",
                self._settings.study.name,
                self._summary.storage_url,
                self._recorder.done,
                self._target,
            )
        else:
            self._run_workers()
        self._summary.elapsed_s = time.monotonic() - start
        return self._summary

    def _finished_before(self) -> int:
        """Finished trials of an existing study (the storage is not created for this)."""
        setup.check_writable(self._settings.storage.url)
        found = None
        if storage_exists(self._settings.storage.url):
            found = setup.count_finished(self._settings.study, self._open_storage())
        self._history = "new" if found is None else f"resumed with {found} finished trials"
        self._summary.finished = found or 0
        return self._summary.finished

    def _run_workers(self) -> None:
        par = self._settings.par or 1  # par=auto: one worker until the cap is known
        setup.warn_if_oversubscribed(par)
        procs.become_subreaper()  # what a dying worker leaves is re-parented to us, and ended
        pool = WorkerPool(par, self._worker_spec(par))
        study: optuna.Study | None = None
        stopped_by = "stopped by the user"
        try:
            pool.start()
            pool.wait_ready()  # a broken objective is a ConfigError before the storage is touched
            self._lock.acquire()  # a second supervisor of this study on this node stops here
            study, store = self._open_study()
            self._reap(study, store, exclude=set())  # what a killed supervisor left RUNNING
            if self._settings.auto_par:
                par = self._auto_par(pool)
            logger.info(
                "study %r (%s) in %s: target %d finished trials, par=%d",
                study.study_name,
                self._history,
                display_url(self._settings.storage.url),
                self._target,
                par,
            )
            assert self._node is not None
            self._node.register(par)
            self._signals.install()
            self._loop(study, store, pool)
        except BaseException as e:
            stopped_by = f"the supervisor stopped: {type(e).__name__}: {e}"
            raise
        finally:
            self._signals.restore()
            in_flight = [w for w in pool.workers if w.assignment is not None]
            pool.shutdown()
            procs.stop_being_subreaper()
            if study is not None:
                self._interrupt_all(study, in_flight, stopped_by)
                with contextlib.suppress(Exception):  # trials workers were asking for (or the
                    self._reap(study, store, set(), stopped_by)  # next run reaps them, at once)
                self._recorder.finish(study)
            if self._node is not None:
                self._node.leave()
            self._lock.release()

    def _auto_par(self, pool: WorkerPool) -> int:
        """Derive the worker cap (``par=auto``) and start the workers it allows."""
        assert self._launcher is not None
        return setup.grow_to_auto_par(
            pool, self._launcher.models, self._settings, self._worker_spec
        )

    def _worker_spec(self, par: int) -> WorkerSpec:
        threads = max(1, available_cpus() // par)
        return WorkerSpec(self._settings, threads=threads, run_id=self._run_id)

    def _open_study(self) -> tuple[optuna.Study, StudyStore]:
        prepare_storage(self._settings.storage.url, self._settings.storage.busy_timeout_s)
        storage = self._open_storage()
        faults = self._settings.faults
        opened = setup.open_study(self._settings, storage, self._gate_factory, self._recorder)
        self._beats = Heartbeats(opened.store, faults.heartbeat_interval_s)
        self._reaper = Reaper(opened.store, faults.grace_period_s, self._settings.node_id)
        self._launcher = Launcher(
            opened.study,
            opened.store,
            opened.models,
            opened.backlog,
            self._recorder,
            self._checkpoints,
            self._target,
            self._settings.node_id,
        )
        devices, interval = opened.models.devices, faults.heartbeat_interval_s
        self._node = NodeRegistry(opened.store, self._settings.node_id, devices, interval)
        return opened.study, opened.store

    def _open_storage(self) -> RDBStorage:
        if self._rdb is None:
            settings = self._settings
            self._rdb = open_storage(
                settings.storage.url,
                settings.storage.busy_timeout_s,
                heartbeat_interval_s=settings.faults.heartbeat_interval_s,
                grace_period_s=settings.faults.grace_period_s,
                outage_s=settings.storage.outage_s,
            )
        return self._rdb

    def _loop(self, study: optuna.Study, store: StudyStore, pool: WorkerPool) -> None:
        rec, launcher = self._recorder, self._launcher
        assert launcher is not None
        while not self._signals.stop_now:
            busy = sum(w.assignment is not None or w.proposing for w in pool.workers)
            idle = any(w.idle for w in pool.workers)
            if not self._signals.draining and idle and rec.done + busy < self._target:
                self._catch_up(store)
                launcher.schedule(pool, self._target - rec.done - busy, self._signals.stopping)
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
                else:  # a Proposal, or a running trial's Settled
                    launcher.on_message(pool, worker, payload, self._signals.stopping())
            self._enforce_timeouts(study, pool)
            self._keep_alive(study, store, pool)
        self._summary.interrupted = True

    def _catch_up(self, store: StudyStore) -> None:
        """Count the finished trials in storage (other supervisors' too), at most every
        ``_COUNT_EVERY_S``: this run counts its own as it records them."""
        now = time.monotonic()
        if now < self._next_count:
            return
        self._next_count = now + _COUNT_EVERY_S
        self._recorder.stored = store.n_finished()

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
        self._learn(study, outcome)
        if not (self._signals.draining or self._signals.stop_now):
            self._retire_if_spent(pool, worker, outcome)
            assert self._launcher is not None
            self._launcher.start_waiting(pool)  # the freed memory works while this is recorded
        self._recorder.record_outcome(study, assignment, outcome)

    def _learn(self, study: optuna.Study, outcome: Outcome) -> None:
        """Free the trial's reservations, teach the launcher's models what it measured; after
        an OOM, maybe retry it smaller."""
        assert self._launcher is not None
        params, reserved = self._launcher.release(outcome.trial_number)
        if params is None:
            return
        attrs = {Attr.END_REASON: outcome.end_reason.value, **reserved, **outcome.attrs}
        self._launcher.learn(params, attrs)
        if outcome.end_reason is EndReason.OOM:  # more micro-batches, or opt-in a smaller batch
            retry_after_oom(study, outcome.trial_number, params, attrs, self._settings)

    def _retire_if_spent(self, pool: WorkerPool, worker: WorkerHandle, outcome: Outcome) -> None:
        if outcome.end_reason.poisons_worker:  # the worker exits on its own; never reuse it
            logger.info("replacing worker %d after a CUDA error", worker.pid)
            pool.retire(worker)
        elif outcome.leaking or 0 < self._settings.faults.recycle_after <= worker.trials_done:
            why = outcome.leaking or f"after {worker.trials_done} trials"
            logger.info("recycling worker %d: %s", worker.pid, why)
            pool.retire(worker)

    def _on_died(self, study: optuna.Study, pool: WorkerPool, worker: WorkerHandle) -> None:
        code = worker.process.exitcode
        if worker.assignment is not None:
            error = f"worker process {describe_exit(code)} while running the trial"
            self._fail_running(study, worker, EndReason.WORKER_DIED, error)
        elif not worker.ready or worker.proposing:  # its trial, if any, is reaped after grace
            doing = "asking for a trial" if worker.proposing else "starting"
            self._recorder.count_failure(f"worker {describe_exit(code)} while {doing}")
        self._respawn(pool, worker)

    def _enforce_timeouts(self, study: optuna.Study, pool: WorkerPool) -> None:
        """Kill the worker (and its children) of a trial past ``faults.trial_timeout_s``."""
        timeout_s = self._settings.faults.trial_timeout_s
        if not timeout_s:
            return
        now = time.monotonic()
        for worker in list(pool.workers):
            if worker.assignment is None or now - worker.started_at <= timeout_s:
                continue
            pool.kill(worker)
            error = f"trial ran past faults.trial_timeout_s={timeout_s:g} s; worker killed"
            self._fail_running(study, worker, EndReason.TIMEOUT, error)
            self._respawn(pool, worker)

    def _fail_running(
        self, study: optuna.Study, worker: WorkerHandle, reason: EndReason, error: str
    ) -> None:
        assert worker.assignment is not None and self._launcher is not None
        attrs = {
            Attr.WORKER_PID: worker.pid,
            Attr.DURATION_S: round(time.monotonic() - worker.started_at, 3),
            Attr.ERROR: error,
        }
        assignment, worker.assignment = worker.assignment, None
        self._launcher.release(assignment.trial_number)  # nothing measured to learn from
        self._recorder.record(study, assignment, reason, None, attrs, error)

    def _respawn(self, pool: WorkerPool, worker: WorkerHandle) -> None:
        if self._signals.draining or self._signals.stop_now:
            pool.remove(worker)
        else:
            pool.replace(worker)

    # --- liveness -------------------------------------------------------------------------------

    def _keep_alive(self, study: optuna.Study, store: StudyStore, pool: WorkerPool) -> None:
        """Heartbeats for the running trials; now and then, reap other supervisors' orphans."""
        assert self._beats is not None and self._launcher is not None and self._node is not None
        running = [w.assignment.trial_id for w in pool.workers if w.assignment is not None]
        self._node.tick(len(running), self._signals)  # this node's record; stop requests
        running += [item.trial_id for item in self._launcher.backlog.items]
        self._beats.beat(running)
        if time.monotonic() >= self._next_reap:
            self._reap(study, store, exclude=set(running))

    def _reap(
        self, study: optuna.Study, store: StudyStore, exclude: set[int], stopping: str | None = None
    ) -> None:
        assert self._reaper is not None
        self._next_reap = time.monotonic() + self._settings.faults.heartbeat_interval_s
        self._recorder.reap_all(study, store, self._reaper.find(exclude), stopping)

    def _interrupt_all(self, study: optuna.Study, in_flight: list[WorkerHandle], why: str) -> None:
        """Record the running trials, and those still waiting for memory, as interrupted."""
        now = time.monotonic()
        ended = []
        for worker in in_flight:
            assert worker.assignment is not None
            attrs = {Attr.WORKER_PID: worker.pid, Attr.DURATION_S: now - worker.started_at}
            ended.append((worker.assignment, attrs, why))
        if self._launcher is not None:
            ended += self._launcher.backlog.drain(f"{why} (before it started)")
        self._recorder.interrupt(study, ended)
