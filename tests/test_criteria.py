"""The built-in ``criteria`` study: generated data, transformer presets, the objective."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from hpo.config.schema import DataLoaderConf
from hpo.studies.criteria.config import CriteriaDataConf, CriteriaStudyConf
from hpo.studies.criteria.data import (
    SINGLE_TRIGGER_FRACTION,
    TRIGGERS_PER_CLASS,
    CriteriaSplits,
    clear_cache,
    first_trigger_labels,
    load_splits,
    trigger_ids,
)
from hpo.studies.criteria.model import PRESETS, build_model, count_parameters
from hpo.studies.criteria.objective import make_train_loader, objective, train_epoch

SMALL_DATA: dict[str, Any] = {"n_train": 512, "n_val": 256, "n_test": 256}


def _cfg(
    epochs: int = 2, threads: int = 0, loader: DataLoaderConf | None = None, **data: Any
) -> DictConfig:
    study = CriteriaStudyConf(
        name="criteria-test",
        objective="hpo.studies.criteria.objective:objective",
        epochs=epochs,
        threads=threads,
        data=CriteriaDataConf(**data),
        loader=loader if loader is not None else DataLoaderConf(),
    )
    return OmegaConf.create({"study": OmegaConf.structured(study)})


def _space() -> dict[str, BaseDistribution]:
    return {
        "model": CategoricalDistribution(["tiny"]),
        "batch_size": CategoricalDistribution([32]),
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "dropout": FloatDistribution(0.0, 0.5),
    }


def _ask(study: optuna.Study, **fixed: Any) -> optuna.Trial:
    """A trial of the criteria space, with ``fixed`` values instead of sampled ones."""
    if fixed:
        study.enqueue_trial(fixed)
    return study.ask(_space())


def _splits(**data: Any) -> CriteriaSplits:
    return load_splits(CriteriaDataConf(**data))


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


# --- data -------------------------------------------------------------------------------------


def test_data_is_deterministic_for_a_seed() -> None:
    first = _splits(seed=3, **SMALL_DATA)
    clear_cache()
    again = _splits(seed=3, **SMALL_DATA)
    assert first is not again
    for a, b in zip(
        (first.train, first.val, first.test), (again.train, again.val, again.test), strict=True
    ):
        assert torch.equal(a.tensors[0], b.tensors[0])
        assert torch.equal(a.tensors[1], b.tensors[1])


def test_data_differs_across_seeds() -> None:
    a, b = _splits(seed=0, **SMALL_DATA), _splits(seed=1, **SMALL_DATA)
    assert not torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.test.tensors[0], b.test.tensors[0])


def test_data_is_cached_per_process() -> None:
    assert _splits(seed=5, **SMALL_DATA) is _splits(seed=5, **SMALL_DATA)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_split_shapes_and_label_range(split: str) -> None:
    conf = CriteriaDataConf(n_train=300, n_val=200, n_test=100, seq_len=20, n_classes=5)
    dataset = getattr(load_splits(conf), split)
    tokens, labels = dataset.tensors
    size = {"train": 300, "val": 200, "test": 100}[split]
    assert tokens.shape == (size, 20) and tokens.dtype == torch.int64
    assert labels.shape == (size,) and labels.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < conf.vocab_size
    assert set(labels.tolist()) == set(range(5))


def test_label_noise_only_in_train() -> None:
    conf = CriteriaDataConf(n_train=1000, n_val=500, n_test=500, label_noise=0.1)
    splits = load_splits(conf)
    for clean_split in (splits.val, splits.test):
        tokens, labels = clean_split.tensors
        assert np.array_equal(first_trigger_labels(tokens, conf.n_classes), labels.numpy())
    tokens, labels = splits.train.tensors
    flipped = first_trigger_labels(tokens, conf.n_classes) != labels.numpy()
    assert int(flipped.sum()) == 100


def test_label_is_the_class_of_the_first_trigger_in_either_order() -> None:
    """The same pair of trigger classes appears in both orders with both labels."""
    conf = CriteriaDataConf(n_classes=4, **SMALL_DATA)
    tokens, labels = load_splits(conf).val.tensors
    toks = tokens.numpy()
    is_trigger = (toks >= 1) & (toks <= trigger_ids(4).max())
    two = is_trigger.sum(axis=1) == 2
    assert 0.6 < two.mean() < 0.95  # most examples hold two triggers, some a single one
    classes = np.sort(np.where(is_trigger[two], toks[two], 0), axis=1)[:, -2:] - 1
    classes //= TRIGGERS_PER_CLASS
    lower_wins = labels.numpy()[two] == classes.min(axis=1)
    assert (classes[:, 0] != classes[:, 1]).all()
    assert 0.35 < lower_wins.mean() < 0.65  # the bag of triggers says nothing about the order


def test_shuffling_token_order_changes_the_label() -> None:
    tokens, labels = _splits(**SMALL_DATA).val.tensors
    rng = np.random.default_rng(0)
    shuffled = rng.permuted(tokens.numpy(), axis=1)
    agree = (first_trigger_labels(shuffled, 4) == labels.numpy()).mean()
    bag_of_words_ceiling = SINGLE_TRIGGER_FRACTION + (1 - SINGLE_TRIGGER_FRACTION) / 2
    assert abs(agree - bag_of_words_ceiling) < 0.1


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("vocab_size", 20, "vocab_size"),
        ("label_noise", 1.5, "label_noise"),
        ("seq_len", 1, "seq_len"),
        ("n_classes", 1, "n_classes"),
        ("n_val", 0, "n_val"),
    ],
)
def test_invalid_data_config_raises(field: str, value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_splits(CriteriaDataConf(**{field: value}))


def test_datasets_survive_pickling() -> None:
    train = _splits(**SMALL_DATA).train
    copy = pickle.loads(pickle.dumps(train))
    assert torch.equal(copy.tensors[0], train.tensors[0])


# --- model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_presets_produce_logits(preset: str) -> None:
    model = build_model(preset, vocab_size=100, seq_len=12, n_classes=3, dropout=0.1)
    tokens = torch.randint(1, 100, (5, 12))
    tokens[:, 8:] = 0
    assert model(tokens).shape == (5, 3)


def test_presets_grow_in_size() -> None:
    sizes = [count_parameters(build_model(p, 100, 12, 3, 0.0)) for p in ("tiny", "small", "base")]
    assert sizes == sorted(sizes) and sizes[0] > 0
    assert all(p.d_model % p.n_heads == 0 for p in PRESETS.values())


def test_padding_is_masked() -> None:
    model = build_model("tiny", vocab_size=50, seq_len=10, n_classes=2, dropout=0.0).eval()
    tokens = torch.randint(1, 50, (4, 10))
    tokens[:, 6:] = 0
    with torch.no_grad():
        before = model(tokens)
        model.tokens.weight[0].normal_()  # what a padding position would contribute
        assert torch.allclose(before, model(tokens), atol=1e-6)
        assert not torch.allclose(before, model(torch.where(tokens == 0, 7, tokens)))


def test_unknown_preset_raises() -> None:
    with pytest.raises(ValueError, match=r"'huge'.*tiny, small, base, large"):
        build_model("huge", vocab_size=100, seq_len=12, n_classes=3, dropout=0.1)


# --- objective --------------------------------------------------------------------------------


def test_objective_runs_end_to_end() -> None:
    study = optuna.create_study(direction="maximize")
    trial = _ask(study)
    value = objective(trial, _cfg(epochs=2, **SMALL_DATA))
    study.tell(trial, value)
    frozen = study.trials[0]
    assert isinstance(value, float) and 0.0 <= value <= 1.0
    assert sorted(frozen.intermediate_values) == [1, 2]
    assert value == max(frozen.intermediate_values.values())
    assert 0.0 <= frozen.user_attrs["test_accuracy"] <= 1.0
    assert frozen.user_attrs["n_params"] > 0


def test_objective_missing_param_raises() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask({"model": CategoricalDistribution(["tiny"])})
    with pytest.raises(ValueError, match=r"lacks params \['batch_size', 'lr', 'dropout'\]"):
        objective(trial, _cfg(**SMALL_DATA))


@pytest.mark.parametrize(("epochs", "reported"), [(1, [1]), (3, [1])])
def test_pruning_after_every_epoch_but_the_last(epochs: int, reported: list[int]) -> None:
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    trial = _ask(study)
    cfg = _cfg(epochs=epochs, **SMALL_DATA)
    if epochs == 1:
        assert 0.0 <= objective(trial, cfg) <= 1.0
        assert "test_accuracy" in trial.user_attrs
    else:
        with pytest.raises(optuna.TrialPruned):
            objective(trial, cfg)
        assert "test_accuracy" not in trial.user_attrs
    assert sorted(study.trials[0].intermediate_values) == reported


def test_objective_sets_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    study = optuna.create_study(direction="maximize")
    objective(_ask(study), _cfg(epochs=1, threads=1, **SMALL_DATA))
    objective(_ask(study), _cfg(epochs=1, threads=0, **SMALL_DATA))
    assert calls == [1]


def test_objective_is_reproducible_per_trial_number() -> None:
    values = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize")
        trial = _ask(study, model="tiny", batch_size=32, lr=1e-3, dropout=0.1)
        values.append((objective(trial, _cfg(epochs=1, **SMALL_DATA)), trial.user_attrs))
    assert values[0] == values[1]


def _curves_with(steps: int) -> tuple[list[float], dict[int, float]]:
    """Training losses and validation curve of one criteria trial run with ``steps``
    micro-batches per step (``current_context().accum_steps``, as admission sets it)."""
    from hpo.execution.context import TrialContext, trial_context

    study = optuna.create_study(direction="maximize")
    trial = _ask(study, model="tiny", batch_size=32, lr=3e-3, dropout=0.0)
    losses: list[float] = []

    def recording(*args: Any, **kwargs: Any) -> float:
        losses.append(train_epoch(*args, **kwargs))
        return losses[-1]

    ctx = TrialContext("cpu", trial.number, accum_steps=steps, micro_batch=32 // steps)
    with trial_context(ctx), pytest.MonkeyPatch.context() as patch:
        patch.setattr("hpo.studies.criteria.objective.train_epoch", recording)
        objective(trial, _cfg(epochs=3, **SMALL_DATA))
    return losses, study.trials[0].intermediate_values


def test_gradient_accumulation_learns_what_the_whole_batch_learns() -> None:
    """k = 2 micro-batches per step give the k = 1 loss curve and validation curve within
    float tolerance: the same steps with half the activations. Dropout is 0: its masks are
    drawn per forward pass."""
    loss1, vals1 = _curves_with(1)
    loss2, vals2 = _curves_with(2)
    assert len(loss1) == 3 and loss1 == pytest.approx(loss2, rel=1e-4, abs=1e-5)
    assert vals1 == vals2
    assert loss1[0] != loss1[-1]  # it did learn


@pytest.mark.parametrize(
    "loader",
    [
        DataLoaderConf(num_workers=0, persistent_workers=True, prefetch_factor=2),
        DataLoaderConf(num_workers=1, persistent_workers=True, prefetch_factor=2),
        DataLoaderConf(num_workers=1, persistent_workers=False, prefetch_factor=None),
    ],
)
def test_loader_settings(loader: DataLoaderConf) -> None:
    train = _splits(**SMALL_DATA).train
    dl = make_train_loader(train, 64, OmegaConf.structured(loader), torch.device("cpu"), seed=0)
    assert dl.num_workers == loader.num_workers
    assert sum(len(labels) for _, labels in dl) == SMALL_DATA["n_train"]


def test_objective_with_a_worker_process_and_sqlite(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'criteria.db'}"
    study = optuna.create_study(direction="maximize", storage=storage, study_name="criteria")
    trial = _ask(study)
    loader = DataLoaderConf(num_workers=1, persistent_workers=True, prefetch_factor=2)
    value = objective(trial, _cfg(epochs=2, loader=loader, **SMALL_DATA))
    study.tell(trial, value)
    frozen = optuna.load_study(study_name="criteria", storage=storage).trials[0]
    assert frozen.value == value
    assert sorted(frozen.intermediate_values) == [1, 2]
    assert "test_accuracy" in frozen.user_attrs


def test_tiny_preset_learns_beyond_bag_of_words() -> None:
    """A good configuration beats chance and the bag-of-words ceiling in two epochs."""
    study = optuna.create_study(direction="maximize")
    trial = _ask(study, model="tiny", batch_size=32, lr=3e-3, dropout=0.1)
    value = objective(trial, _cfg(epochs=2, n_train=4096, n_val=1024, n_test=2048, seq_len=48))
    bag_of_words_ceiling = SINGLE_TRIGGER_FRACTION + (1 - SINGLE_TRIGGER_FRACTION) / 2
    assert value > bag_of_words_ceiling + 0.1
    assert trial.user_attrs["test_accuracy"] > bag_of_words_ceiling + 0.1
