"""An hpo study of a small torch MLP on data it generates (no downloads): the whole contract.

``objective(trial, cfg)`` reads its parameters from ``trial.params`` (declared in the study's
``space``) and its settings from ``cfg.study`` (``cfg.study.extra`` is free-form), trains on the
device hpo chose (``hpo.current_context().device``), reports validation accuracy after every
epoch and stops when the pruner says so. It saves a checkpoint after each epoch into the
trial's checkpoint directory, so a trial retried after a crash (a killed worker, a CUDA error)
resumes where it stopped. ``build_step`` lets hpo estimate a trial's memory before it runs.
Replace the data and the model with your own; keep the shape of the loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

import hpo
from hpo.checkpoint import atomic_write

CHECKPOINT = "state.pt"


def make_data(n: int, features: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed classification task: labels from a noisy random linear map of the inputs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    w = torch.randn(features, classes, generator=torch.Generator().manual_seed(0))
    y = (x @ w + 0.3 * torch.randn(n, classes, generator=gen)).argmax(dim=1)
    return x, y


def build_model(params: dict[str, Any], features: int, classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    width, size = int(params["width"]), features
    for _ in range(int(params["depth"])):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, classes))
    return nn.Sequential(*layers)


def build_step(params: dict[str, Any], cfg: Any) -> tuple[nn.Module, Any, Any]:
    """Model, optimizer and one batch for ``params`` (hpo traces one step to estimate memory)."""
    extra = cfg.study.extra
    model = build_model(params, int(extra.features), int(extra.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(params["lr"]))
    batch = int(params["batch_size"])
    inputs = torch.randn(batch, int(extra.features))
    targets = torch.randint(0, int(extra.classes), (batch,))
    return model, optimizer, (inputs, targets)


def objective(trial: optuna.Trial, cfg: Any) -> float:
    ctx = hpo.current_context()
    device = torch.device(ctx.device)
    params, extra = trial.params, cfg.study.extra
    torch.manual_seed(trial.number)
    x, y = make_data(int(extra.n_train), int(extra.features), int(extra.classes), seed=1)
    vx, vy = make_data(int(extra.n_val), int(extra.features), int(extra.classes), seed=2)
    x, y, vx, vy = x.to(device), y.to(device), vx.to(device), vy.to(device)
    model, optimizer, _ = build_step(params, cfg)
    model.to(device)
    values = _resume(ctx.checkpoint_dir, model, optimizer, trial)
    batch = int(params["batch_size"])
    for epoch in range(len(values) + 1, int(cfg.study.epochs) + 1):
        model.train()
        for start in torch.randperm(len(x)).split(batch):
            loss = nn.functional.cross_entropy(model(x[start]), y[start])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            values.append(float((model(vx).argmax(dim=1) == vy).float().mean()))
        _save(ctx.checkpoint_dir, model, optimizer, values)
        trial.report(values[-1], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return max(values)


def _resume(
    directory: Path | None, model: nn.Module, optimizer: Any, trial: optuna.Trial
) -> list[float]:
    """The accuracies of the epochs a failed attempt of this trial saved (reported again)."""
    if directory is None or not (directory / CHECKPOINT).is_file():
        return []
    state = torch.load(directory / CHECKPOINT, map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    values: list[float] = state["values"]
    for epoch, value in enumerate(values, 1):
        trial.report(value, epoch)
    trial.set_user_attr("resumed_from_epoch", len(values))
    return values


def _save(directory: Path | None, model: nn.Module, optimizer: Any, values: list[float]) -> None:
    if directory is None:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "values": values}
    atomic_write(directory / CHECKPOINT, lambda tmp: torch.save(state, tmp))
