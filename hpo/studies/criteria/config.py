"""Structured config of the ``criteria`` study (torch-free: the supervisor imports it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hpo.config.schema import StudyConf


@dataclass
class CriteriaDataConf:
    """The generated text-classification data set (identical for every trial of a study)."""

    n_train: int = 1024  # training examples
    n_val: int = 512  # validation examples: the objective's value is accuracy on them
    n_test: int = 1024  # held-out test examples, reported as user attribute test_accuracy
    seq_len: int = 24  # tokens per example (at most)
    vocab_size: int = 1024  # distinct token ids
    n_classes: int = 4  # criteria (labels)
    label_noise: float = 0.05  # fraction of training labels replaced at random
    seed: int = 0  # data-generation seed


@dataclass
class CriteriaStudyConf(StudyConf):
    """``criteria``: which transformer preset, batch size, lr and dropout classify best."""

    data: CriteriaDataConf = field(default_factory=CriteriaDataConf)
    threads: int = 0  # torch CPU threads per worker; 0 = as the supervisor sets (cores // par)
    weight_decay: float = 0.01  # AdamW weight decay
