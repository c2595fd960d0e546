"""What the supervisor does on each worker event, from one table.

A worker's messages (:class:`~hpo.execution.protocol.Outcome`, a :class:`Proposal` of a trial it
asked, a running trial's :class:`Settled`), its death (:data:`~hpo.execution.pool.DIED`) and a
trial past its time limit (:data:`TIMED_OUT`) each have one handler in :data:`HANDLERS`. A
worker that dies fails its trial (``worker_died``) and is replaced; a trial past
``faults.trial_timeout_s`` is killed with its worker (``timeout``); an outcome ends the trial as
the worker measured it, after the launcher learned from it, and recycles a worker that a CUDA
error poisoned or whose memory grows across trials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpo.contract import Attr, EndReason
from hpo.execution.pool import DIED
from hpo.execution.protocol import Outcome, Proposal, Settled
from hpo.supervisor.signals import describe_exit

if TYPE_CHECKING:
    from hpo.execution.pool import WorkerHandle
    from hpo.supervisor.run import Run

logger = logging.getLogger("hpo.supervisor")

TIMED_OUT = object()  # event payload: the worker's trial ran past faults.trial_timeout_s

Handler = Callable[["Run", "WorkerHandle", Any], None]


def handle(run: Run, worker: WorkerHandle, payload: Any) -> None:
    """Act on one event of ``worker`` (a worker retired while this batch was handled has
    nothing left to say)."""
    if worker not in run.pool.workers:
        return
    key = payload if payload is DIED or payload is TIMED_OUT else type(payload)
    HANDLERS[key](run, worker, payload)


def overdue(run: Run) -> list[WorkerHandle]:
    """Workers whose trial ran past ``faults.trial_timeout_s`` (none when it is 0)."""
    timeout_s = run.settings.faults.trial_timeout_s
    now = time.monotonic()
    return [
        w
        for w in run.pool.workers
        if timeout_s and w.assignment is not None and now - w.started_at > timeout_s
    ]


def _outcome(run: Run, worker: WorkerHandle, outcome: Outcome) -> None:
    assignment, worker.assignment = worker.assignment, None
    if assignment is None or assignment.trial_number != outcome.trial_number:
        logger.error("worker %d reported an unexpected trial %d", worker.pid, outcome.trial_number)
        return
    worker.trials_done += 1
    run.launcher.ended(outcome.trial_number, outcome)
    if not run.signals.stopping():
        _retire_if_spent(run, worker, outcome)
        run.launcher.dispatch.start_waiting(run.pool)  # freed memory works while this records
    run.recorder.record_outcome(assignment, outcome)


def _retire_if_spent(run: Run, worker: WorkerHandle, outcome: Outcome) -> None:
    if outcome.end_reason.poisons_worker:  # the worker exits on its own; never reuse it
        logger.info("replacing worker %d after a CUDA error", worker.pid)
        run.pool.retire(worker)
    elif outcome.leaking or 0 < run.settings.faults.recycle_after <= worker.trials_done:
        why = outcome.leaking or f"after {worker.trials_done} trials"
        logger.info("recycling worker %d: %s", worker.pid, why)
        run.pool.retire(worker)


def _proposal(run: Run, worker: WorkerHandle, proposal: Proposal) -> None:
    worker.proposing = False
    run.launcher.proposed(run.pool, proposal, run.signals.stopping())


def _settled(run: Run, worker: WorkerHandle, message: Settled) -> None:
    running = worker.assignment  # the trial may have ended since
    if running is not None and running.trial_number == message.trial_number:
        run.launcher.settled(run.pool, message)


def _died(run: Run, worker: WorkerHandle, _: object) -> None:
    code = worker.process.exitcode
    if worker.assignment is not None:
        error = f"worker process {describe_exit(code)} while running the trial"
        _fail_running(run, worker, EndReason.WORKER_DIED, error)
    elif not worker.ready or worker.proposing:  # its trial, if any, is reaped after grace
        doing = "asking for a trial" if worker.proposing else "starting"
        run.recorder.count_failure(f"worker {describe_exit(code)} while {doing}")
    run.respawn(worker)


def _timed_out(run: Run, worker: WorkerHandle, _: object) -> None:
    """Kill the worker (and its children) of a trial past ``faults.trial_timeout_s``."""
    run.pool.kill(worker)
    timeout_s = run.settings.faults.trial_timeout_s
    error = f"trial ran past faults.trial_timeout_s={timeout_s:g} s; worker killed"
    _fail_running(run, worker, EndReason.TIMEOUT, error)
    run.respawn(worker)


def _fail_running(run: Run, worker: WorkerHandle, reason: EndReason, error: str) -> None:
    """End the trial ``worker`` ran, with nothing measured to learn from."""
    assignment, worker.assignment = worker.assignment, None
    assert assignment is not None
    attrs = {
        Attr.WORKER_PID: worker.pid,
        Attr.DURATION_S: round(time.monotonic() - worker.started_at, 3),
        Attr.ERROR: error,
    }
    run.launcher.ended(assignment.trial_number)
    run.recorder.record(assignment, reason, None, attrs, error)


HANDLERS: dict[object, Handler] = {
    Outcome: _outcome,
    Proposal: _proposal,
    Settled: _settled,
    DIED: _died,
    TIMED_OUT: _timed_out,
}
