"""The search space of a study that declares none, learned from its objective.

An Optuna objective's ``trial.suggest_*`` calls are its search space. hpo records the
distributions its finished trials used in a study attribute (:data:`~hpo.contract.
LEARNED_SPACE_ATTR`), the latest of each parameter, and samples that space for every later
trial before it starts, so its memory is estimated from its parameters before launch. The
values go in as the trial's fixed parameters (what ``Study.enqueue_trial`` writes): a value is
recorded only when the objective suggests it, so a conditional parameter whose branch the
trial does not take leaves no trace, and the trial's stored parameters stay exactly those
its objective asked for. Joint (relative) sampling covers what the study's sampler would
sample jointly, the rest is sampled independently, as in Optuna's own trials. A parameter
first seen after the space was learned extends it, with one warning line (the study
attribute is updated under the study's ask lock, so once whatever the number of workers).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from optuna.distributions import distribution_to_json, json_to_distribution

from hpo.contract import FINISHED, LEARNED_SPACE_ATTR
from hpo.storage import _private, trial_id_of

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

    from hpo.storage import StudyStore

logger = logging.getLogger(__name__)


class LearnedSpace:
    """The learned search space of one study, read and extended through ``store``."""

    def __init__(self, store: StudyStore) -> None:
        self._store = store
        self._folded: set[int] = set()  # numbers of finished trials already folded in

    def update(self, study: optuna.Study) -> dict[str, BaseDistribution]:
        """The space, extended by the trials that finished since (call under the ask lock);
        a parameter whose distribution changed between trials (a range that depends on
        another parameter) is left out: it is sampled when the objective suggests it."""
        stored = self._store.study_attrs().get(LEARNED_SPACE_ATTR) or {}
        space = {name: _load(text) for name, text in stored.items()}
        trials = study.get_trials(deepcopy=False, states=FINISHED)  # Optuna's cache: cheap
        new = [t for t in trials if t.number not in self._folded]
        grown: dict[str, BaseDistribution | None] = dict(space)
        for trial in new:
            self._folded.add(trial.number)
            for name, dist in trial.distributions.items():
                if name not in grown and space:
                    logger.warning(
                        "parameter %r first seen in trial %d: the learned search space grows",
                        name,
                        trial.number,
                    )
                grown[name] = dist if grown.get(name, dist) == dist else None
        if grown != space:
            if not space:
                logger.info("search space learned from trial %d: %s", new[0].number, list(grown))
            texts = {name: d and distribution_to_json(d) for name, d in grown.items()}
            self._store.set_study_attr(LEARNED_SPACE_ATTR, texts)
        return {name: d for name, d in grown.items() if d is not None}


def _load(text: str | None) -> BaseDistribution | None:
    return None if text is None else json_to_distribution(text)


def presample(
    study: optuna.Study, trial: optuna.Trial, space: dict[str, BaseDistribution]
) -> dict[str, Any]:
    """Sample ``space`` for ``trial`` with the study's sampler and fix the values on it (see
    the module's notes); returns what was sampled (the enqueued values of a retry win)."""
    trial_id = trial_id_of(trial)
    frozen = trial.storage.get_trial(trial_id)
    todo = {n: d for n, d in space.items() if n not in frozen.params}
    if not todo:
        return {}
    sampler = study.sampler
    joint = {
        n: d for n, d in sampler.infer_relative_search_space(study, frozen).items() if n in todo
    }
    values = dict(sampler.sample_relative(study, frozen, joint)) if joint else {}
    for name, dist in todo.items():
        if name not in values:
            values[name] = sampler.sample_independent(study, frozen, name, dist)
    fixed = _private.fix_params(trial, frozen, values)
    return {name: fixed[name] for name in values}
