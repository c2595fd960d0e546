"""The generated data set of the ``criteria`` study: which trigger comes first?

Every example is a sequence of token ids: Zipf-distributed filler words, padding (id 0) after a
random length, and one or two *trigger* tokens. Each class owns a few reserved trigger ids. Most
examples hold two triggers of different classes and their label is the class of the trigger
that comes **first**, so a bag-of-words model cannot do better than guessing between the two
classes; attention with positions can. The remaining examples hold a single trigger (easy).

Generation is vectorised numpy, deterministic in the data seed, and cached per process so the
trials that one worker runs share one copy.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

log = logging.getLogger(__name__)

PAD_ID = 0  # padding token; also what the model masks out
TRIGGERS_PER_CLASS = 4  # reserved trigger ids per class (ids 1 .. n_classes*TRIGGERS_PER_CLASS)
SINGLE_TRIGGER_FRACTION = 0.2  # examples with one trigger only (solvable without order)
ZIPF_EXPONENT = 1.1  # filler word frequencies fall off as 1 / rank**ZIPF_EXPONENT
MIN_FILLER_IDS = 8  # the vocabulary must leave at least this many filler ids


@dataclass(frozen=True)
class DataSpec:
    """The values that determine the data set (hashable: the cache key)."""

    n_train: int
    n_val: int
    n_test: int
    seq_len: int
    vocab_size: int
    n_classes: int
    label_noise: float
    seed: int

    @classmethod
    def from_conf(cls, conf: Any) -> DataSpec:
        """Read the fields of a ``CriteriaDataConf`` (dataclass or DictConfig node)."""
        return cls(
            n_train=int(conf.n_train),
            n_val=int(conf.n_val),
            n_test=int(conf.n_test),
            seq_len=int(conf.seq_len),
            vocab_size=int(conf.vocab_size),
            n_classes=int(conf.n_classes),
            label_noise=float(conf.label_noise),
            seed=int(conf.seed),
        )

    def validate(self) -> None:
        """Raise ValueError for values the generator cannot honour."""
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"data.seq_len must be >= 2 (two triggers), got {self.seq_len}")
        if self.n_classes < 2:
            raise ValueError(f"data.n_classes must be >= 2, got {self.n_classes}")
        need = 1 + self.n_classes * TRIGGERS_PER_CLASS + MIN_FILLER_IDS
        if self.vocab_size < need:
            raise ValueError(
                f"data.vocab_size must be >= {need} for {self.n_classes} classes, "
                f"got {self.vocab_size}"
            )
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"data.label_noise must be in [0, 1], got {self.label_noise}")


@dataclass(frozen=True)
class CriteriaSplits:
    """Train (noisy labels), validation and test sets: TensorDatasets of (tokens, label)."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset


def trigger_ids(n_classes: int) -> np.ndarray:
    """The reserved trigger ids, shape (n_classes, TRIGGERS_PER_CLASS): row c belongs to class c."""
    first = PAD_ID + 1
    return np.arange(first, first + n_classes * TRIGGERS_PER_CLASS).reshape(n_classes, -1)


def first_trigger_labels(tokens: np.ndarray | torch.Tensor, n_classes: int) -> np.ndarray:
    """The clean label of each row: the class of its first trigger (-1 where it has none)."""
    toks = np.asarray(tokens)
    n_trig = n_classes * TRIGGERS_PER_CLASS
    is_trigger = (toks > PAD_ID) & (toks <= n_trig)
    first_pos = np.argmax(is_trigger, axis=1)
    first_tok = toks[np.arange(len(toks)), first_pos]
    labels = (first_tok - PAD_ID - 1) // TRIGGERS_PER_CLASS
    return np.where(is_trigger.any(axis=1), labels, -1).astype(np.int64)


def load_splits(conf: Any) -> CriteriaSplits:
    """The splits for a ``CriteriaDataConf``; generated once per process and values."""
    spec = conf if isinstance(conf, DataSpec) else DataSpec.from_conf(conf)
    spec.validate()
    return _cached_splits(spec)


def clear_cache() -> None:
    """Forget the generated data sets of this process."""
    _cached_splits.cache_clear()


@functools.lru_cache(maxsize=4)
def _cached_splits(spec: DataSpec) -> CriteriaSplits:
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(5)]
    filler = _filler_distribution(spec, streams[4])
    train_x, train_y = _generate(spec, spec.n_train, filler, streams[0])
    val_x, val_y = _generate(spec, spec.n_val, filler, streams[1])
    test_x, test_y = _generate(spec, spec.n_test, filler, streams[2])
    noisy_y = _add_label_noise(train_y, spec.label_noise, spec.n_classes, streams[3])
    log.debug("generated criteria data %s", spec)
    return CriteriaSplits(
        train=_dataset(train_x, noisy_y),
        val=_dataset(val_x, val_y),
        test=_dataset(test_x, test_y),
    )


def _dataset(tokens: np.ndarray, labels: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(tokens), torch.from_numpy(labels))


def _generate(
    spec: DataSpec, n: int, filler: tuple[np.ndarray, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples: (tokens int64 [n, seq_len], clean labels int64 [n])."""
    ids, probs = filler
    tokens = rng.choice(ids, size=(n, spec.seq_len), p=probs)
    lengths = rng.integers(max(2, spec.seq_len // 2), spec.seq_len + 1, size=n)
    tokens[np.arange(spec.seq_len)[None, :] >= lengths[:, None]] = PAD_ID
    labels = rng.integers(0, spec.n_classes, size=n)
    # The second trigger's class: any class but the label.
    other = (labels + rng.integers(1, spec.n_classes, size=n)) % spec.n_classes
    first_pos, second_pos = _two_positions(lengths, rng)
    table = trigger_ids(spec.n_classes)
    rows = np.arange(n)
    tokens[rows, first_pos] = table[labels, rng.integers(0, TRIGGERS_PER_CLASS, size=n)]
    pair = rng.random(n) >= SINGLE_TRIGGER_FRACTION
    second_tok = table[other, rng.integers(0, TRIGGERS_PER_CLASS, size=n)]
    tokens[rows[pair], second_pos[pair]] = second_tok[pair]
    return tokens, labels.astype(np.int64)


def _filler_distribution(spec: DataSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Filler ids (int64) and their Zipf probabilities; which id gets which rank is seeded."""
    start = PAD_ID + 1 + spec.n_classes * TRIGGERS_PER_CLASS
    ids = rng.permutation(np.arange(start, spec.vocab_size, dtype=np.int64))
    weights = 1.0 / np.arange(1, len(ids) + 1) ** ZIPF_EXPONENT
    return ids, weights / weights.sum()


def _two_positions(lengths: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct positions below each length, in increasing order."""
    a = np.floor(rng.random(len(lengths)) * lengths).astype(np.int64)
    b = np.floor(rng.random(len(lengths)) * (lengths - 1)).astype(np.int64)
    b = b + (b >= a)
    return np.minimum(a, b), np.maximum(a, b)


def _add_label_noise(
    labels: np.ndarray, noise: float, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Replace round(noise * n) labels with a different, uniformly drawn class."""
    noisy = labels.copy()
    flip = rng.permutation(len(labels))[: int(round(noise * len(labels)))]
    noisy[flip] = (labels[flip] + rng.integers(1, n_classes, size=len(flip))) % n_classes
    return noisy
