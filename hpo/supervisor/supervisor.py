"""The supervisor: one per study and node. It counts what the study has finished, starts its
worker processes, takes the study's lock, opens the study and hands it to a
:class:`~hpo.supervisor.run.Run`, and, however the run ends, stops every worker and records
what was still running.

It owns the trial lifecycle and never imports torch: results and measurements come back from
the workers as :class:`~hpo.execution.protocol.Outcome` messages (docs/architecture.md draws a
trial's path through the modules).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from hpo.execution import procs
from hpo.execution.pool import WorkerPool
from hpo.execution.procs import available_cpus
from hpo.execution.worker import WorkerSpec
from hpo.memory import MemoryGate, build_gate
from hpo.storage import display_url, open_storage, prepare_storage, storage_exists
from hpo.supervisor import study as setup
from hpo.supervisor.checkpoints import CheckpointStore
from hpo.supervisor.launcher import Launcher
from hpo.supervisor.liveness import Heartbeats, Reaper
from hpo.supervisor.lock import StudyLock
from hpo.supervisor.nodes import NodeRegistry
from hpo.supervisor.recorder import RunSummary, TrialRecorder
from hpo.supervisor.retry import RetryPolicy
from hpo.supervisor.run import Run
from hpo.supervisor.signals import StopSignals

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

    from hpo.config.settings import Settings
    from hpo.devices import Device

logger = logging.getLogger(__name__)

GateFactory = Callable[["Settings", list["Device"]], MemoryGate]


class Supervisor:
    """Runs a study to ``study.n_trials`` finished trials with ``par`` worker processes."""

    def __init__(
        self,
        settings: Settings,
        poll_s: float = 0.5,
        gate_factory: GateFactory | None = None,
        signals: StopSignals | None = None,
    ) -> None:
        """``gate_factory`` replaces :func:`~hpo.memory.build_gate` (benchmarks plug in an
        oracle that knows the true memory of a simulated workload); ``signals`` is how Ctrl-C
        and a caller's own stop requests reach the run (the Python API's stop at the first)."""
        self._settings = settings
        self._gate_factory = gate_factory or build_gate
        self._target = settings.study.n_trials
        self._poll_s = poll_s
        self._signals = signals or StopSignals()
        url = display_url(settings.storage.url)
        self._summary = RunSummary(settings.study.name, url, self._target, 0, 0.0)
        faults = settings.faults
        self._checkpoints = CheckpointStore(faults.checkpoint_root, faults.keep_best_checkpoint)
        self._lock = StudyLock(settings.storage.url, settings.study.name, settings.node_id)
        self._run_id = uuid.uuid4().hex  # marks this run's worker processes and their children

    def run(self) -> RunSummary:
        """Run until the target is reached, the user stops it, or failures pile up."""
        start = time.monotonic()
        before = self._finished_before()
        self._summary.finished = before or 0
        if self._summary.finished >= self._target:
            logger.info(
                "study %r in %s already has %d/%d finished trials: nothing to do",
                self._settings.study.name,
                self._summary.storage_url,
                self._summary.finished,
                self._target,
            )
        else:
            history = "new" if before is None else f"resumed with {before} finished trials"
            self._run_workers(history)
        self._summary.elapsed_s = time.monotonic() - start
        return self._summary

    def _finished_before(self) -> int | None:
        """Finished trials of an existing study; None: no such study yet (the storage is not
        created for this)."""
        setup.check_writable(self._settings.storage.url)
        if not storage_exists(self._settings.storage.url):
            return None
        return setup.count_finished(self._settings.study, self._rdb)

    def _run_workers(self, history: str) -> None:
        par = self._settings.par or 1  # par=auto: one worker until the cap is known
        setup.warn_if_oversubscribed(par)
        procs.become_subreaper()  # what a dying worker leaves is re-parented to us, and ended
        pool = WorkerPool(par, self._worker_spec(par))
        run: Run | None = None
        stopped_by = "stopped by the user"
        try:
            pool.start()
            pool.wait_ready()  # a broken objective is a ConfigError before the storage is touched
            self._lock.acquire()  # a second supervisor of this study on this node stops here
            run = self._open_run(pool)
            run.reap(exclude=set())  # what a killed supervisor left RUNNING
            if self._settings.auto_par:
                models = run.launcher.models
                par = setup.grow_to_auto_par(pool, models, self._settings, self._worker_spec)
            logger.info(
                "study %r (%s) in %s: target %d finished trials, par=%d",
                self._settings.study.name,
                history,
                self._summary.storage_url,
                self._target,
                par,
            )
            run.node.register(par)
            self._signals.install()
            self._summary.interrupted = run.loop()
        except BaseException as e:
            stopped_by = f"the supervisor stopped: {type(e).__name__}: {e}"
            raise
        finally:  # a Ctrl-C while this cleans up only says "stop now": the trials are recorded
            try:
                in_flight = [w for w in pool.workers if w.assignment is not None]
                pool.shutdown()
                procs.stop_being_subreaper()
                if run is not None:
                    run.close(in_flight, stopped_by)
                    run.node.leave()
                self._lock.release()
            finally:
                self._signals.restore()

    def _worker_spec(self, par: int) -> WorkerSpec:
        threads = max(1, available_cpus() // par)
        return WorkerSpec(self._settings, threads=threads, run_id=self._run_id)

    def _open_run(self, pool: WorkerPool) -> Run:
        """Open (or create) the study with models taught from its trials, and a run of it."""
        settings, faults = self._settings, self._settings.faults
        prepare_storage(settings.storage.url, settings.storage.busy_timeout_s)
        opened = setup.open_study(settings, self._rdb, self._gate_factory)
        store = opened.store
        retry = RetryPolicy(faults.retry_on, faults.max_retries)
        recorder = TrialRecorder(
            opened.study,
            store,
            self._summary,
            retry,
            self._checkpoints,
            settings.max_failures_in_a_row,
        )
        launcher = Launcher(settings, recorder, opened.models, opened.backlog, self._checkpoints)
        interval, node_id = faults.heartbeat_interval_s, settings.node_id
        return Run(
            settings,
            pool,
            recorder,
            launcher,
            Heartbeats(store, interval),
            Reaper(store, faults.grace_period_s, node_id),
            NodeRegistry(store, node_id, opened.models.devices, interval),
            self._signals,
            self._poll_s,
        )

    @cached_property
    def _rdb(self) -> RDBStorage:
        """The study's storage, opened once, by the first step that needs it."""
        settings = self._settings
        return open_storage(
            settings.storage.url,
            settings.storage.busy_timeout_s,
            heartbeat_interval_s=settings.faults.heartbeat_interval_s,
            grace_period_s=settings.faults.grace_period_s,
            outage_s=settings.storage.outage_s,
        )
