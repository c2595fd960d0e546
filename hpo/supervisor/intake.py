"""Intake: asking for trials, and what becomes of each trial asked.

Idle workers ask the study for trials on the supervisor's behalf
(:mod:`hpo.execution.proposer`: the sampler's cost is paid side by side, not here one trial
after another), each claiming one of the study's slots in the storage
(:mod:`hpo.storage.claim`). What they asked comes back as a
:class:`~hpo.execution.protocol.Proposal`; the :class:`Intake` has the memory gate judge it: a
trial that can never fit is pre-pruned at once (``memory_estimate``, and the sampler is told it
was infeasible); the rest is split into micro-batches where its batch cannot run whole, and
queued in the :class:`~hpo.scheduling.Backlog` for dispatch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import optuna

from hpo.contract import MEMORY_CONSTRAINT, Attr, Decision, EndReason
from hpo.devices import MIB
from hpo.execution.protocol import AskedTrial, Assignment, Proposal, Propose
from hpo.memory import Verdict, micro
from hpo.memory.sampling import pickled_gate
from hpo.pruners import PatientHyperbandPruner
from hpo.scheduling import Backlog, Waiting
from hpo.scheduling.overcommit import with_need

if TYPE_CHECKING:
    from collections.abc import Callable

    from hpo.execution.pool import WorkerPool
    from hpo.supervisor.launcher import LaunchModels
    from hpo.supervisor.recorder import TrialRecorder

logger = logging.getLogger("hpo.supervisor")

_CLAIMED_RETRY_S = 1.0  # after "every slot is claimed", ask again this much later at the latest


class Intake:
    """Has idle workers ask for trials; pre-prunes or queues what they asked."""

    def __init__(
        self,
        models: LaunchModels,
        backlog: Backlog,
        recorder: TrialRecorder,
        target: int,
        owner: dict[str, Any],
    ) -> None:
        """``target`` is ``study.n_trials``: slots are claimed against it in the storage;
        ``owner`` goes on every trial this supervisor asks (see :mod:`.liveness`)."""
        self._models, self._backlog, self._recorder = models, backlog, recorder
        self._study: optuna.Study = recorder.study
        self._target, self._owner = target, owner
        self._claimed_until = 0.0  # no worker is asked for a trial before (all slots claimed)
        self._gate_version = -1  # the gate's version last pickled for the workers' samplers
        self._gate_bytes: bytes | None = None

    def ask(self, pool: WorkerPool, room: int, stopping: Callable[[], bool]) -> None:
        """Have idle workers ask up to ``room`` new trials (trials waiting or being asked
        count as asked); none once ``stopping()`` (a Ctrl-C may arrive between two requests)."""
        room -= len(self._backlog) + sum(w.proposing for w in pool.workers)
        if time.monotonic() < self._claimed_until:
            return  # every slot was claimed a moment ago; a trial that ends frees one
        for worker in [w for w in pool.workers if w.idle]:
            asking = sum(w.proposing for w in pool.workers)  # their trials will wait too
            if room <= 0 or not self._backlog.may_ask(asking) or stopping():
                return
            gate = self._models.gate
            version = gate.version
            if gate.active and version != self._gate_version:
                self._gate_version, self._gate_bytes = version, pickled_gate(gate)
            snapshot = self._gate_bytes if worker.gate_seen != version else None
            worker.gate_seen = version
            pool.propose(worker, Propose(self._target, self._owner, snapshot))
            room -= 1

    def slot_freed(self) -> None:
        """A trial ended: it may have freed one of the study's slots."""
        self._claimed_until = 0.0

    def take(self, proposal: Proposal, stop: bool) -> Waiting[AskedTrial] | None:
        """What a worker asked, to queue (returned); or pre-pruned, or none (every slot
        claimed, or the worker failed to ask); when ``stop``, ended before it starts."""
        trial, trial_id = proposal.trial, proposal.trial_id
        if trial is None:
            if proposal.error:
                logger.warning("a worker could not ask for a trial: %s", proposal.error)
                self._recorder.count_failure(proposal.error)
            self._claimed_until = time.monotonic() + _CLAIMED_RETRY_S
            return None
        if stop:
            start = Assignment(trial_id, trial.number, None)
            self._recorder.interrupt([(start, {}, "stopped before it started")])
            return None
        at_least = int(trial.user_attrs.get(Attr.ACCUM_STEPS, 1))  # a retry after an OOM
        need = float(trial.user_attrs.get(Attr.CAP_NEED_MIB, 0.0)) * MIB  # after a cap hit
        choice = self._choose(trial.params, at_least)
        verdict = _needing(choice.verdict, need)
        attrs = verdict.attrs()
        pruner = self._study.pruner
        if isinstance(pruner, PatientHyperbandPruner):  # for `hpo stats` by bracket
            attrs[Attr.BRACKET] = pruner.bracket_of(self._study, trial)
        item = Waiting(
            trial,
            choice.params,
            verdict.estimate,
            number=trial.number,
            trial_id=trial_id,
            accum_steps=choice.steps,
            need_bytes=need,
        )
        if verdict.decision is Decision.PRE_PRUNE:
            self._pre_prune(item, verdict, attrs)
            return None
        item.unwritten = attrs  # with the dispatch's, or when it starts to wait
        return item

    def _choose(self, params: dict[str, Any], at_least: int = 1) -> micro.Choice:
        """The fewest micro-batches (from ``at_least``) that can run; see hpo.memory.micro."""
        split = self._models.split
        return micro.choose(self._models.gate, params, split.batch_param, split.max_steps, at_least)

    def _pre_prune(
        self, item: Waiting[AskedTrial], verdict: Verdict, attrs: dict[str, Any]
    ) -> None:
        """End a trial that can never fit (``memory_estimate``) before it runs, and tell the
        sampler it was infeasible."""
        logger.info("trial %d: pre_prune (%s)", item.number, verdict.reason)
        infeasibility = self._models.gate.infeasibility(verdict)
        optuna.Trial(self._study, item.trial_id).set_constraint(MEMORY_CONSTRAINT, infeasibility)
        assignment = Assignment(item.trial_id, item.number, None)
        reason = EndReason.MEMORY_ESTIMATE
        self._recorder.record(assignment, reason, None, attrs, verdict.reason)

    def reestimate(self) -> None:
        """Estimate the waiting trials again. A trial asked before its model was measured would
        otherwise still wait to run alone; one now known never to fit is pre-pruned."""
        for item in list(self._backlog.items):
            choice = self._choose(item.trial.params, item.accum_steps)
            verdict = _needing(choice.verdict, item.need_bytes)
            if verdict.decision is Decision.PRE_PRUNE:
                self._backlog.drop(item)
                self._pre_prune(item, verdict, verdict.attrs())
            elif verdict.estimate != item.estimate or choice.steps != item.accum_steps:
                item.estimate, item.reestimated = verdict.estimate, verdict.attrs()
                item.params, item.accum_steps = choice.params, choice.steps


def _needing(verdict: Verdict, need_bytes: float) -> Verdict:
    """A re-queued cap hit's verdict: its estimate needs at least what its original measured
    (:func:`~hpo.scheduling.overcommit.with_need`), so it reserves that much."""
    if need_bytes <= 0 or verdict.decision is not Decision.ADMIT:
        return verdict
    return replace(verdict, estimate=with_need(verdict.estimate, need_bytes))
