"""Per-epoch checkpoints of the criteria objective, so a retried trial resumes where it stopped.

After every epoch the objective saves the model, the optimizer, the random states (global torch,
CUDA, the training loader's shuffling generator) and the per-epoch validation accuracies to
``<checkpoint_dir>/state.pt`` (written atomically). A retry of the trial finds the file in the
directory it inherits, restores everything, reports the saved epochs again and trains on from
the next epoch: the result is the one an uninterrupted trial would have reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from hpo.checkpoint import atomic_write

FILE_NAME = "state.pt"

StateDict = dict[str, torch.Tensor]


@dataclass
class Progress:
    """Where training stands: the accuracies so far and the best epoch's weights."""

    values: list[float] = field(default_factory=list)  # validation accuracy of epochs 1..n
    best_acc: float = -1.0
    best_state: StateDict = field(default_factory=dict)  # CPU copy of the best epoch's weights

    @property
    def epoch(self) -> int:
        return len(self.values)


def save(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    progress: Progress,
    device: torch.device,
) -> None:
    """Write the state after ``progress.epoch`` epochs (old file or new, never half)."""
    payload = {
        "values": progress.values,
        "best_acc": progress.best_acc,
        "best_state": progress.best_state,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "loader_rng": loader.generator.get_state() if loader.generator is not None else None,
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    atomic_write(directory / FILE_NAME, lambda tmp: torch.save(payload, tmp))


def restore(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
) -> Progress | None:
    """Load a saved state into the objects; None when the directory holds none."""
    path = directory / FILE_NAME
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"])
    if payload["loader_rng"] is not None and loader.generator is not None:
        loader.generator.set_state(payload["loader_rng"])
    if payload["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(payload["cuda_rng"], device)
    return Progress(list(payload["values"]), float(payload["best_acc"]), payload["best_state"])
