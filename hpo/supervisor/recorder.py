"""How the supervisor ends a trial: user attributes, tell, retry, checkpoint cleanup, log line
(a trial that completed or was pruned its worker has already ended in the storage).

Every way a trial ends goes through :meth:`TrialRecorder.record` (an outcome from a worker, a
worker that died, a time limit, a user's stop) or :meth:`TrialRecorder.reap` (a RUNNING trial
left behind by a supervisor that is gone), so every ended trial carries an ``end_reason`` and
every infrastructure failure meets the retry policy exactly once.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from hpo.config.space import describe
from hpo.contract import FINISHED, UNLIMITED_TRIALS, Attr, EndReason
from hpo.errors import StudyAborted
from hpo.execution.protocol import Assignment, Outcome
from hpo.storage import StorageOutage
from hpo.supervisor.liveness import Liveness
from hpo.supervisor.retry import RetryDecision, RetryPolicy, enqueue_retry

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo.storage import StudyStore
    from hpo.supervisor.checkpoints import CheckpointStore

logger = logging.getLogger(__name__)

# Ends that are no failure of the study: the user stopped it; a cap hit, re-queued at once
_NOT_FAILURES = (EndReason.INTERRUPTED, EndReason.CAP_EXCEEDED)


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
    retried: int = 0  # failed trials this run enqueued again
    reaped: int = 0  # RUNNING trials of a vanished supervisor this run failed


class TrialRecorder:
    """Ends trials in the storage and keeps the run's counts."""

    def __init__(
        self,
        study: optuna.Study,
        store: StudyStore,
        summary: RunSummary,
        retry: RetryPolicy,
        checkpoints: CheckpointStore,
        max_failures_in_a_row: int,
    ) -> None:
        """The study is open; ``summary.finished`` is what it had finished before this run."""
        self.study, self.store = study, store
        self.summary = summary
        self.recorded = summary.finished  # finished trials: the study's before + this run's
        self.stored = 0  # finished trials in the storage when last counted (every supervisor's)
        self._retry = retry
        self._checkpoints = checkpoints
        self._max_failures = max_failures_in_a_row
        self._failures_in_a_row = 0

    def record(
        self,
        assignment: Assignment,
        reason: EndReason,
        value: float | None,
        attrs: dict[str, Any],
        message: str | None = None,
        ended: FrozenTrial | None = None,
    ) -> None:
        """End a trial this run launched; raises StudyAborted when failures pile up.

        ``ended``: the trial as its worker already ended it in the storage (completed or
        pruned); it is then only counted, logged and its checkpoint settled here."""
        attrs = {Attr.END_REASON: reason.value, **attrs}
        frozen = ended if ended is not None else self._end(assignment, reason, value, attrs)
        if frozen is None:
            return
        self.summary.end_reasons[reason.value] += 1
        if frozen.state in FINISHED:
            self.recorded += 1
            self._failures_in_a_row = 0
        logger.info("%s", self._progress_line(frozen, reason, attrs, message))
        self._after_end(frozen, reason)
        if frozen.state == TrialState.FAIL and reason not in _NOT_FAILURES:
            self.count_failure(message or reason.value)

    @property
    def done(self) -> int:
        """Finished trials of the study, as far as this run knows. Not a sum: a worker ends
        its completed trial in the storage before the supervisor records it."""
        return max(self.recorded, self.stored)

    def record_outcome(self, assignment: Assignment, outcome: Outcome) -> None:
        """End a trial as its worker reported (see :class:`~hpo.execution.protocol.Outcome`)."""
        o = outcome
        self.record(assignment, o.end_reason, o.value, o.attrs, o.message, o.ended)

    def _end(
        self,
        assignment: Assignment,
        reason: EndReason,
        value: float | None,
        attrs: dict[str, Any],
    ) -> FrozenTrial | None:
        """Write the trial's attributes and tell its state; None if it had already ended."""
        try:
            self.store.set_user_attrs(assignment.trial_id, attrs)
        except UpdateFinishedTrialError:
            logger.warning("trial %d was already ended elsewhere", assignment.trial_number)
            return None
        values = value if reason is EndReason.COMPLETE else None
        return self.study.tell(
            assignment.trial_number, values, state=reason.state, skip_if_finished=True
        )

    def reap(self, trial_id: int, why: str) -> bool:
        """Fail a RUNNING trial nobody runs any more (``worker_died``); False if it ended."""
        store = self.store
        number = store.trial(trial_id).number
        error = f"trial {number} was left RUNNING: {why}"
        try:
            attrs = {Attr.END_REASON: EndReason.WORKER_DIED.value, Attr.ERROR: error}
            store.set_user_attrs(trial_id, attrs)
            store.fail(trial_id)
        except UpdateFinishedTrialError:
            return False  # another supervisor reaped it first, or its owner just ended it
        logger.warning("reaped %s (its retry is not counted against the trial)", error)
        self.summary.reaped += 1
        self._after_end(store.trial(trial_id), EndReason.WORKER_DIED, charged=False)
        return True

    def reap_all(
        self,
        found: list[tuple[int, Liveness, str]],
        stopped_by: str | None = None,
    ) -> None:
        """Fail the RUNNING trials nobody runs any more (:meth:`reap`; ``found`` by
        :meth:`~hpo.supervisor.liveness.Reaper.find`). When this supervisor stops
        (``stopped_by``, why), the trials its workers were asking for when it stopped them
        never started: they are interrupted, like the trials still waiting."""
        for trial_id, decision, why in found:
            if stopped_by is not None and decision is Liveness.ASKED:
                start = Assignment(trial_id, self.store.trial(trial_id).number, None)
                self.interrupt([(start, {}, f"{stopped_by} (before it started)")])
            else:
                self.reap(trial_id, why)

    def interrupt(self, ended: list[tuple[Assignment, dict[str, Any], str]]) -> None:
        """Record trials the supervisor stops (``interrupted``): ``(assignment, attrs, why)``;
        each one that cannot be recorded is logged and the others still are."""
        for i, (assignment, attrs, why) in enumerate(ended):
            try:
                self.record(assignment, EndReason.INTERRUPTED, None, attrs, why)
            except StorageOutage as e:  # one line for all: the next run reaps them
                left = len(ended) - i
                logger.error("%d trial(s) left RUNNING for the next run to reap: %s", left, e)
                return
            except Exception as e:  # the study is being torn down; say what was left
                number = assignment.trial_number
                logger.error("could not record trial %d as interrupted: %s", number, e)

    def finish(self) -> None:
        """The run ends: the study's finished count and best trial into the summary, and the
        checkpoint directories no trial needs any more removed (not when the storage failed)."""
        try:
            self._finish()
        except StorageOutage as e:
            logger.debug("no final counts: %s", e)

    def _finish(self) -> None:
        study = self.study
        self.summary.finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete and len(study.directions) == 1:
            self.summary.best = study.best_trial
        try:
            self._checkpoints.sweep(study)
        except OSError as e:
            logger.warning("could not clean up checkpoints: %s", e)

    def count_failure(self, message: str) -> None:
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self._max_failures:
            raise StudyAborted(f"{self._max_failures} trials failed in a row; last: {message}")

    def _after_end(self, trial: FrozenTrial, reason: EndReason, charged: bool = True) -> None:
        """Retry a failed trial if the policy says so; an uncharged retry (its supervisor died,
        not the trial) keeps the trial's attempt number and so its retry budget."""
        retried = reason is EndReason.CAP_EXCEEDED  # the launcher re-queued it at once
        if trial.state == TrialState.FAIL and not retried:
            decision = self._retry.decide(reason, trial, charged)
            if decision is RetryDecision.RETRY:
                enqueue_retry(self.study, trial, charged)
                self.summary.retried += 1
                retried = True
            elif decision is RetryDecision.EXHAUSTED:
                logger.warning("trial %d is not retried: retries exhausted", trial.number)
        self._checkpoints.settle(self.study, trial, retried)

    def _progress_line(
        self, trial: FrozenTrial, reason: EndReason, attrs: dict[str, Any], message: str | None
    ) -> str:
        target = self.summary.target
        head = f"[{self.done:>{len(str(target))}}/{target}] trial {trial.number}"
        if target == UNLIMITED_TRIALS:
            head = f"[{self.done}] trial {trial.number}"
        state = trial.state.name
        if trial.state == TrialState.COMPLETE:
            state += " " + " ".join(f"{v:.4f}" for v in trial.values or ())
        elif trial.state == TrialState.PRUNED:
            state += f" at epoch {trial.last_step}"
        else:
            state += f" ({reason.value}: {message})" if message else f" ({reason.value})"
        duration = attrs.get(Attr.DURATION_S)
        extra = f" {duration:.1f}s" if duration is not None else ""
        if Attr.PEAK_RSS_MIB in attrs:
            extra += f" rss {attrs[Attr.PEAK_RSS_MIB]:.0f} MiB"
        if Attr.PEAK_VRAM_MIB in attrs:
            extra += f" vram {attrs[Attr.PEAK_VRAM_MIB]:.0f} MiB"
        return f"{head} {state}{extra} | {describe(trial.params)}"
