"""One run of an open study: the event loop, liveness, and how a run ends.

A :class:`Run` is built once the study is open (:meth:`hpo.supervisor.Supervisor.run`), with
everything it needs: the study and its storage (in the recorder), the worker pool, the launcher,
the heartbeats, the reaper and this node's record. Its loop has the launcher start what fits and
ask for more, hands every worker event to :mod:`hpo.supervisor.events`, beats for the running
trials, and now and then reaps RUNNING trials nobody runs any more. :meth:`Run.close` records
what was still running or waiting as interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpo.contract import Attr
from hpo.supervisor import events

if TYPE_CHECKING:
    from hpo.config.settings import Settings
    from hpo.execution.pool import WorkerHandle, WorkerPool
    from hpo.supervisor.launcher import Launcher
    from hpo.supervisor.liveness import Heartbeats, Reaper
    from hpo.supervisor.nodes import NodeRegistry
    from hpo.supervisor.recorder import TrialRecorder
    from hpo.supervisor.signals import StopSignals

logger = logging.getLogger("hpo.supervisor")

# Trials other supervisors finish are noticed within this time (several nodes on one study
# may overshoot n_trials by what they finish meanwhile, as by their running trials).
_COUNT_EVERY_S = 2.0


@dataclass
class Run:
    """A supervisor's run of one open study with its workers."""

    settings: Settings
    pool: WorkerPool
    recorder: TrialRecorder  # ends trials in the study's storage
    launcher: Launcher
    beats: Heartbeats
    reaper: Reaper
    node: NodeRegistry  # this node's record in the study
    signals: StopSignals
    poll_s: float = 0.5
    _next_reap: float = field(default=0.0, init=False)  # monotonic time of the next reaping
    _next_count: float = field(default=0.0, init=False)  # and of the next count of finished

    @property
    def target(self) -> int:
        return self.settings.study.n_trials

    def loop(self) -> bool:
        """Run until the target is reached or the user stops; whether the user stopped it."""
        rec, pool, signals = self.recorder, self.pool, self.signals
        while not signals.stop_now:
            busy = sum(w.assignment is not None or w.proposing for w in pool.workers)
            idle = any(w.idle for w in pool.workers)
            if not signals.draining and idle and rec.done + busy < self.target:
                self._catch_up()
                self.launcher.schedule(pool, self.target - rec.done - busy, signals.stopping)
            elif busy == 0 and (signals.draining or rec.done >= self.target):
                return signals.draining
            for worker, payload in pool.poll(self.poll_s):
                events.handle(self, worker, payload)
            for worker in events.overdue(self):
                events.handle(self, worker, events.TIMED_OUT)
            self._keep_alive()
        return True

    def respawn(self, worker: WorkerHandle) -> None:
        """Replace a worker that is gone, unless the run is stopping."""
        if self.signals.stopping():
            self.pool.remove(worker)
        else:
            self.pool.replace(worker)

    def _catch_up(self) -> None:
        """Count the finished trials in storage (other supervisors' too), at most every
        ``_COUNT_EVERY_S``: this run counts its own as it records them."""
        now = time.monotonic()
        if now < self._next_count:
            return
        self._next_count = now + _COUNT_EVERY_S
        self.recorder.stored = self.recorder.store.n_finished()

    def _keep_alive(self) -> None:
        """Heartbeats for the running trials; now and then, reap other supervisors' orphans."""
        running = [w.assignment.trial_id for w in self.pool.workers if w.assignment is not None]
        self.node.tick(len(running), self.signals)  # this node's record; stop requests
        running += self.launcher.waiting_ids()
        self.beats.beat(running)
        if time.monotonic() >= self._next_reap:
            self.reap(exclude=set(running))

    def reap(self, exclude: set[int], stopping: str | None = None) -> None:
        """Fail the RUNNING trials nobody runs any more (not those in ``exclude``); when the
        run stops (``stopping``: why), those its workers were asking for are interrupted."""
        self._next_reap = time.monotonic() + self.settings.faults.heartbeat_interval_s
        self.recorder.reap_all(self.reaper.find(exclude), stopping)

    def close(self, in_flight: list[WorkerHandle], why: str) -> None:
        """The workers are stopped: record the trials they ran, those still waiting for
        memory, and those they were asking for as interrupted; the run's final counts."""
        now = time.monotonic()
        ended = []
        for worker in in_flight:
            assert worker.assignment is not None
            attrs = {Attr.WORKER_PID: worker.pid, Attr.DURATION_S: now - worker.started_at}
            ended.append((worker.assignment, attrs, why))
        ended += self.launcher.backlog.drain(f"{why} (before it started)")
        self.recorder.interrupt(ended)
        with contextlib.suppress(Exception):  # trials workers were asking for (or the
            self.reap(set(), why)  # next run reaps them, at once)
        self.recorder.finish()
