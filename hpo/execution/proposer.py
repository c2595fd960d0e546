"""Asking for the next trial inside a worker, so that the sampler's cost is paid by the workers
side by side (as by Optuna's own workers), not by the supervisor one trial after another.

The supervisor sends a :class:`~hpo.execution.protocol.Propose` to an idle worker. The worker
claims a slot of the study (:mod:`hpo.storage.claim`; the lock is held to count and to create
the trial, not while the sampler works), marks the trial as the supervisor's (its owner
attributes and the worker's pid, see :mod:`hpo.supervisor.liveness`: a worker that dies before
it answers leaves a trial the supervisor's next reaping finds orphaned; the supervisor beats
it from when it knows it), samples the declared search space (or the space learned from the
objective, :mod:`hpo.execution.learned_space`) and answers with the trial
(:class:`~hpo.execution.protocol.Proposal`). Whether, where and when the trial runs the
supervisor alone decides. With the memory gate active, the
sampler re-draws what the gate would pre-prune (:class:`~hpo.memory.sampling.FeasibleSampler`)
against the latest snapshot of the gate the supervisor sent. A seeded sampler is seeded anew
for each trial from the seed and the trial's number, so that a trial's proposal does not
depend on which worker asked it (a random sampler's proposals are then those of one seeded
sequence, as when one process asks; a model-based sampler's also depend on what has finished).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from hpo.config.space import suggest
from hpo.contract import Attr
from hpo.execution.learned_space import LearnedSpace, presample
from hpo.execution.protocol import AskedTrial, Proposal, Propose
from hpo.memory.sampling import FeasibleSampler, GateSnapshot
from hpo.storage import trial_id_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from optuna.distributions import BaseDistribution
    from optuna.samplers import BaseSampler

    from hpo.storage import StudyStore

logger = logging.getLogger(__name__)


class Proposer:
    """Asks ``study`` for trials of the declared ``space`` on the supervisor's behalf."""

    def __init__(
        self,
        study: optuna.Study,
        store: StudyStore,
        space: dict[str, BaseDistribution],
        gate: GateSnapshot,
        sampler_for: Callable[[int], BaseSampler] | None = None,
    ) -> None:
        """``gate`` is the snapshot the study's sampler consults (updated from requests);
        ``sampler_for(number)``, given when the sampler is seeded, makes the sampler of trial
        ``number`` (seeded by it: its proposal is the same whichever worker asks it). An empty
        ``space`` is learned from the objective (:mod:`hpo.execution.learned_space`)."""
        self._study, self._store, self._space, self._gate = study, store, space, gate
        self._sampler_for = sampler_for
        self._learned = None if space else LearnedSpace(store)
        self._asked: dict[int, optuna.Trial] = {}

    def propose(self, request: Propose) -> Proposal:
        """The next trial of the study, sampled; ``Proposal(None)`` when no slot is free."""
        if request.gate is not None:
            self._gate.update(request.gate)
        while True:
            with self._store.claim.held():
                if not self._store.claim.free(request.target):
                    return Proposal(None)
                with warnings.catch_warnings():  # hpo records the heartbeats of ask/tell trials
                    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                    trial = self._study.ask()  # a waiting trial (a retry), or a new one
                learned = self._learned.update(self._study) if self._learned else {}
            trial_id, pid = trial_id_of(trial), os.getpid()
            try:
                self._store.set_user_attrs(trial_id, {**request.owner, Attr.WORKER_PID: pid})
            except UpdateFinishedTrialError:  # another node's reaper took it for an orphan
                logger.warning("trial %d was reaped before it started; asking again", trial.number)
                continue
            if self._sampler_for is not None:
                sampler = self._sampler_for(trial.number)
                self._study.sampler = FeasibleSampler(sampler, self._gate.fits)
            for name, dist in self._space.items():
                suggest(trial, name, dist)
            params = trial.params
            if learned:  # sampled now, recorded when the objective suggests them
                params = {**params, **presample(self._study, trial, learned)}
            self._asked = {trial_id: trial}  # this worker is likely to run it: no second read
            return Proposal(AskedTrial(trial.number, params, trial.user_attrs), trial_id)

    def take(self, trial_id: int) -> optuna.Trial:
        """The trial to run: the one this worker asked if it is that one, else read anew."""
        asked = self._asked.pop(trial_id, None)
        if asked is not None:
            return asked
        # Another worker asked it: Optuna's cached storage must learn it before this worker
        # records a parameter the objective suggests on it (it reads only what is new).
        self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return optuna.Trial(self._study, trial_id)
