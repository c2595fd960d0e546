from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.pruners import BasePruner, HyperbandPruner, PatientPruner
from optuna.pruners._successive_halving import _completed_rung_key
from optuna.samplers import RandomSampler
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from hpo.pruners import PatientHyperbandPruner
from hpo.pruners._patient_hyperband import report_noise

# One bracket (floor(log3(8 / 3)) + 1 = 1), first rung at step 3.
ONE_BRACKET = {"min_resource": 3, "max_resource": 8, "reduction_factor": 3}
# The pruner before catch-up and noise margins (what a user who turns them off gets).
NO_CATCH_UP = {**ONE_BRACKET, "catch_up": 0.0, "noise_factor": 0.0}


def _study_with_strong_rivals(pruner: BasePruner) -> optuna.Study:
    """A study whose three finished trials reached rung 0 with high values."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for value in (0.80, 0.85, 0.90):
        study.add_trial(
            create_trial(
                value=value,
                intermediate_values={1: value - 0.2, 2: value - 0.1, 3: value},
                system_attrs={_completed_rung_key(0): value},
                state=TrialState.COMPLETE,
            )
        )
    return study


def _should_prune(pruner: BasePruner, values: list[float]) -> bool:
    study = _study_with_strong_rivals(pruner)
    trial = study.ask()
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
    return trial.should_prune()


@pytest.mark.parametrize(
    ("values", "patience", "stalled"),
    [
        ([0.1, 0.2, 0.3], 2, False),  # improved at the last report
        ([0.3, 0.3, 0.3], 2, True),  # two reports without improvement
        ([0.3, 0.3, 0.3], 3, False),  # patience not spent yet
        ([0.3, 0.2, 0.1, 0.05, 0.01], 4, True),
        ([0.3, 0.31, 0.305], 1, True),
        ([0.5], 0, True),  # patience 0: plain Hyperband
        ([float("nan"), float("nan")], 1, True),
        ([float("nan"), 0.2], 1, False),
    ],
)
def test_stalled_counts_reports_since_best(
    values: list[float], patience: int, stalled: bool
) -> None:
    pruner = PatientHyperbandPruner(patience=patience, **NO_CATCH_UP)
    assert pruner.stalled(values, StudyDirection.MAXIMIZE) is stalled


def test_stalled_respects_direction_and_min_delta() -> None:
    pruner = PatientHyperbandPruner(patience=2, min_delta=0.05, **NO_CATCH_UP)
    assert pruner.stalled([1.0, 0.99, 0.98], StudyDirection.MAXIMIZE)
    assert not pruner.stalled([1.0, 0.99, 0.90], StudyDirection.MINIMIZE)
    assert pruner.stalled([1.0, 1.02, 1.04], StudyDirection.MAXIMIZE)  # below min_delta


def test_no_prune_while_improving_within_patience() -> None:
    improving = [0.1, 0.2, 0.3]
    assert _should_prune(HyperbandPruner(**ONE_BRACKET), improving), "Hyperband alone prunes"
    assert not _should_prune(PatientHyperbandPruner(patience=2, **NO_CATCH_UP), improving)


@pytest.mark.parametrize("values", [[0.3, 0.3, 0.3], [0.95, 0.95, 0.95], [0.9, 0.7, 0.6]])
def test_hyperband_decides_once_patience_is_spent(values: list[float]) -> None:
    plain = _should_prune(HyperbandPruner(**ONE_BRACKET), values)
    patient = _should_prune(PatientHyperbandPruner(patience=2, **NO_CATCH_UP), values)
    assert patient == plain


def test_stalled_trial_that_hyperband_promotes_is_kept() -> None:
    assert not _should_prune(PatientHyperbandPruner(patience=2, **NO_CATCH_UP), [0.95] * 3)
    assert _should_prune(PatientHyperbandPruner(patience=2, **NO_CATCH_UP), [0.3] * 3)


class _RecordingSampler(RandomSampler):
    """Records, for each trial, which trials the study showed the sampler."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: dict[int, list[int]] = {}

    def sample_independent(self, study: optuna.Study, trial: Any, name: str, dist: Any) -> Any:
        self.seen[trial.number] = [t.number for t in study.get_trials(deepcopy=False)]
        return super().sample_independent(study, trial, name, dist)


def _ask_and_tell(pruner: BasePruner, n: int) -> tuple[optuna.Study, _RecordingSampler]:
    """Trials asked the supervisor's way: parameters before the trial runs, no prune call."""
    sampler = _RecordingSampler()
    study = optuna.create_study(study_name="brackets", sampler=sampler, pruner=pruner)
    for _ in range(n):
        trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
        study.tell(trial, trial.params["x"])
    return study, sampler


def test_sampler_sees_only_trials_of_the_same_bracket() -> None:
    pruner = PatientHyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3)
    study, sampler = _ask_and_tell(pruner, 40)
    trials = study.get_trials(deepcopy=False)
    bracket = {t.number: pruner.bracket_of(study, t) for t in trials}
    assert pruner.n_brackets == 4
    assert len(set(bracket.values())) >= 3
    for number, seen in sampler.seen.items():
        assert all(bracket[other] == bracket[number] for other in seen), number
    assert any(len(seen) < number for number, seen in sampler.seen.items())


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_wrapping_hyperband_loses_the_bracket_filter() -> None:
    """Why the pruner is one class: the obvious wrapper shows the sampler every trial."""
    wrapped = PatientPruner(HyperbandPruner(min_resource=1, max_resource=27), patience=4)
    _, sampler = _ask_and_tell(wrapped, 20)
    assert all(len(seen) == number + 1 for number, seen in sampler.seen.items())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patience": -1}, "patience must be >= 0, got -1"),
        ({"min_delta": -0.1}, "min_delta must be a finite number >= 0"),
        ({"min_resource": 0}, "min_resource must be >= 1"),
        ({"max_resource": 1}, "max_resource must be an int >= min_resource"),
        ({"max_resource": "sometimes"}, "max_resource must be an int >= min_resource or 'auto'"),
        ({"reduction_factor": 1}, "reduction_factor must be >= 2"),
        ({"catch_up": -1.0}, "catch_up must be a finite number >= 0, got -1.0"),
        ({"noise_factor": float("inf")}, "noise_factor must be a finite number >= 0, got inf"),
    ],
)
def test_invalid_arguments_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PatientHyperbandPruner(**kwargs)


def test_auto_max_resource_is_learned_from_the_first_completed_trial() -> None:
    """``max_resource="auto"`` (the Hydra sweeper's default): no pruning and bracket 0 until
    a trial completed, then one more than its last step, as Optuna's Hyperband does."""
    pruner = PatientHyperbandPruner(max_resource="auto", catch_up=0.0, noise_factor=0.0)
    study = optuna.create_study(pruner=pruner)
    bad = study.ask()
    for step in range(4):
        bad.report(10.0, step)
    assert not pruner.prune(study, study._storage.get_trial(bad._trial_id))
    assert pruner.bracket_of(study, bad) == 0
    done = study.ask()
    for step in range(9):
        done.report(1.0, step)
    study.tell(done, 1.0)
    pruner.prune(study, study._storage.get_trial(bad._trial_id))  # initializes the brackets
    assert pruner._max_resource == 9 and pruner.n_brackets >= 1


def test_defaults_match_the_documented_values() -> None:
    pruner = PatientHyperbandPruner(max_resource=12)
    assert (pruner._min_resource, pruner._reduction_factor, pruner.patience) == (2, 3, 0)
    assert (pruner._catch_up, pruner._noise_factor) == (2.0, 2.0)
    assert isinstance(pruner, HyperbandPruner)


def test_reach_extrapolates_a_saturating_curve_to_its_asymptote() -> None:
    pruner = PatientHyperbandPruner(patience=0, catch_up=1.0, max_resource=20, min_resource=3)
    values = [1 - 0.5**e for e in range(1, 4)]  # 0.5, 0.75, 0.875: asymptote 1
    assert pruner.reach(values, margin=0.0) == pytest.approx(1.0)
    generous = PatientHyperbandPruner(patience=0, catch_up=2.0, max_resource=20, min_resource=3)
    # a margin of 0.01: improvements 0.115 after 0.26 at most, a ratio of 0.442
    ratio = 0.115 / 0.26
    assert generous.reach(values, 0.01) == pytest.approx(0.885 + 2 * 0.115 * ratio / (1 - ratio))


@pytest.mark.parametrize(
    ("values", "margin", "reach"),
    [
        ([0.1, 0.1, 0.3], 0.0, 0.3 + 0.2 * 5),  # taking off: its last improvement, to the end
        ([0.1, 0.3], 0.0, 0.3 + 0.2 * 6),  # too few reports for a ratio: the same bound
        ([0.5, 0.5, 0.505], 0.01, 0.515),  # an improvement within the margin earns nothing
        ([0.6, 0.5, 0.4], 0.0, 0.4),  # falling
        ([float("nan"), 0.2, float("nan")], 0.0, 0.2),
    ],
)
def test_reach_of_other_curves(values: list[float], margin: float, reach: float) -> None:
    pruner = PatientHyperbandPruner(patience=0, catch_up=2.0, **ONE_BRACKET)
    assert pruner.reach(values, margin) == pytest.approx(reach)


def test_catch_up_spares_a_late_bloomer_and_prunes_a_saturated_trial() -> None:
    plain = PatientHyperbandPruner(patience=0, **NO_CATCH_UP)
    patient = PatientHyperbandPruner(patience=0, catch_up=2.0, **ONE_BRACKET)
    late, saturated = [0.1, 0.15, 0.4], [0.2, 0.3, 0.35]
    assert _should_prune(plain, late) and _should_prune(plain, saturated)
    assert not _should_prune(patient, late)  # 0.4 + 0.25 per epoch may pass 0.9
    assert _should_prune(patient, saturated)  # 0.35 + 2 × 0.05 cannot


def test_report_noise_estimates_the_deviation_of_flat_noisy_curves() -> None:
    import random

    rng = random.Random(0)
    study = optuna.create_study(direction="maximize")
    for _ in range(10):
        values = {e: 0.8 + rng.gauss(0.0, 0.01) for e in range(1, 13)}
        study.add_trial(create_trial(value=0.8, intermediate_values=values))
    trial = study.get_trials(deepcopy=False)[0]
    assert report_noise(study, trial) == pytest.approx(0.01, rel=0.25)
    short = create_trial(value=0.3, intermediate_values={1: 0.1, 2: 0.2, 3: 0.3, 4: 0.3})
    assert report_noise(optuna.create_study(), short) == 0.0  # too few differences
