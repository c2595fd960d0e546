"""Memory companions of the criteria objective: the step builder the estimator traces."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from hpo.studies.criteria.model import build_model


def build_step(
    params: dict[str, Any], cfg: DictConfig
) -> tuple[torch.nn.Module, torch.optim.Optimizer, tuple[torch.Tensor, torch.Tensor]]:
    """Model, optimizer and one training batch for ``params``, like the objective builds them.

    Called on the meta device by the tracer, so it must not read data or touch real memory.
    """
    data = cfg.study.data
    model = build_model(
        str(params["model"]),
        int(data.vocab_size),
        int(data.seq_len),
        int(data.n_classes),
        float(params["dropout"]),
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(params["lr"]), weight_decay=float(cfg.study.weight_decay)
    )
    batch_size = int(params["batch_size"])
    tokens = torch.ones(batch_size, int(data.seq_len), dtype=torch.long)
    labels = torch.zeros(batch_size, dtype=torch.long)
    return model, optimizer, (tokens, labels)
