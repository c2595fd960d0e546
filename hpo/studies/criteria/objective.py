"""The objective of the ``criteria`` study: train the classifier, report validation accuracy.

The search space (``model``, ``batch_size``, ``lr``, ``dropout``) is declared in the config and
sampled before the trial starts, so the objective only reads ``trial.params``. After every epoch
it reports the validation accuracy and lets the pruner stop the trial; a trial that completes
returns its best validation accuracy and records the test accuracy of that epoch's weights.
Given a checkpoint directory (by the runner), it saves after every epoch and a retried trial
resumes from the last saved epoch (user attribute ``resumed_from_epoch``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hpo.checkpoint import RESUMED_ATTR
from hpo.execution.context import current_context
from hpo.studies.criteria import checkpoint
from hpo.studies.criteria.checkpoint import Progress
from hpo.studies.criteria.data import load_splits
from hpo.studies.criteria.model import build_model, count_parameters

log = logging.getLogger(__name__)

REQUIRED_PARAMS = ("model", "batch_size", "lr", "dropout")
EVAL_BATCH_SIZE = 512  # evaluation batches (no gradients, so larger than training batches)

StateDict = dict[str, torch.Tensor]


def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
    """Train one configuration; return the best validation accuracy over the epochs."""
    params = read_params(trial)
    study = cfg.study
    device = torch.device(current_context().device)
    if study.threads > 0:
        torch.set_num_threads(int(study.threads))
    torch.manual_seed(trial.number)
    splits = load_splits(study.data)
    model = _build(params, study.data).to(device)
    trial.set_user_attr("n_params", count_parameters(model))
    loader = make_train_loader(
        splits.train, params["batch_size"], study.loader, device, seed=trial.number
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params["lr"], weight_decay=float(study.weight_decay)
    )
    ctx = current_context()  # admission may split each batch into micro-batches
    run = _Run(trial, model, optimizer, loader, device, ctx.checkpoint_dir, ctx.accum_steps)
    best_acc, best_state = _fit(run, splits.val, int(study.epochs))
    model.load_state_dict(best_state)
    test_acc = evaluate(model, splits.test, device)
    trial.set_user_attr("test_accuracy", test_acc)
    log.debug("trial %d: best val %.4f, test %.4f", trial.number, best_acc, test_acc)
    return best_acc


def read_params(trial: optuna.Trial) -> dict[str, Any]:
    """The sampled hyperparameters, typed; ValueError naming any that were not sampled."""
    missing = [name for name in REQUIRED_PARAMS if name not in trial.params]
    if missing:
        raise ValueError(
            f"trial {trial.number} lacks params {missing} (has {sorted(trial.params)}); "
            f"the criteria study's space must declare {list(REQUIRED_PARAMS)}"
        )
    p = trial.params
    batch_size = int(p["batch_size"])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {p['batch_size']!r}")
    return {
        "model": str(p["model"]),
        "batch_size": batch_size,
        "lr": float(p["lr"]),
        "dropout": float(p["dropout"]),
    }


def _build(params: dict[str, Any], data: Any) -> nn.Module:
    vocab_size, seq_len, n_classes = int(data.vocab_size), int(data.seq_len), int(data.n_classes)
    return build_model(params["model"], vocab_size, seq_len, n_classes, params["dropout"])


def make_train_loader(
    dataset: Dataset, batch_size: int, loader_cfg: Any, device: torch.device, seed: int
) -> DataLoader:
    """A shuffling DataLoader configured from ``study.loader``."""
    kwargs: dict[str, Any] = {"num_workers": int(loader_cfg.num_workers)}
    if kwargs["num_workers"] > 0:
        kwargs["persistent_workers"] = bool(loader_cfg.persistent_workers)
        if loader_cfg.prefetch_factor is not None:
            kwargs["prefetch_factor"] = int(loader_cfg.prefetch_factor)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=False,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


@dataclass
class _Run:
    """What one trial trains, and where it checkpoints (None: no checkpoints)."""

    trial: optuna.Trial
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    device: torch.device
    checkpoint_dir: Path | None
    accum_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)

    def resume(self) -> Progress:
        """The saved progress of a failed attempt (reported again), else a fresh start."""
        if self.checkpoint_dir is None:
            return Progress(best_state=_cpu_state(self.model))
        args = (self.model, self.optimizer, self.loader, self.device)
        progress = checkpoint.restore(self.checkpoint_dir, *args)
        if progress is None:
            return Progress(best_state=_cpu_state(self.model))
        for epoch, value in enumerate(progress.values, start=1):
            self.trial.report(value, epoch)
        self.trial.set_user_attr(RESUMED_ATTR, progress.epoch)
        log.info("trial %d resumes after epoch %d", self.trial.number, progress.epoch)
        return progress

    def save(self, progress: Progress) -> None:
        if self.checkpoint_dir is not None:
            args = (self.model, self.optimizer, self.loader, progress, self.device)
            checkpoint.save(self.checkpoint_dir, *args)


def _fit(run: _Run, val: Dataset, epochs: int) -> tuple[float, StateDict]:
    """Train to ``epochs`` epochs with pruning; the best accuracy and a CPU copy of its weights."""
    progress = run.resume()
    for epoch in range(progress.epoch + 1, epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(run.model, run.optimizer, run.loader, run.device, run.accum_steps)
        val_acc = evaluate(run.model, val, run.device)
        log.debug(
            "trial %d epoch %d: loss %.4f, val %.4f (%.2fs)",
            run.trial.number,
            epoch,
            loss,
            val_acc,
            time.perf_counter() - start,
        )
        run.trial.report(val_acc, epoch)
        progress.values.append(val_acc)
        if val_acc > progress.best_acc:
            progress.best_acc, progress.best_state = val_acc, _cpu_state(run.model)
        run.save(progress)
        if epoch < epochs and run.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} at val accuracy {val_acc:.4f}")
    return progress.best_acc, progress.best_state


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    accum_steps: int = 1,
) -> float:
    """One pass over ``loader``; the mean training loss. With ``accum_steps`` > 1 each batch
    is split into that many micro-batches whose gradients add up (each loss weighted by its
    share of the batch) before one optimizer step: the same step with a micro-batch's memory."""
    model.train()
    total, count = torch.zeros((), device=device), 0
    for batch_tokens, batch_labels in loader:
        optimizer.zero_grad(set_to_none=True)
        n = len(batch_labels)
        tokens_split = batch_tokens.tensor_split(accum_steps)
        chunks = zip(tokens_split, batch_labels.tensor_split(accum_steps), strict=True)
        for tokens, labels in chunks:
            if not len(labels):
                continue
            tokens = tokens.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with _autocast(device):
                loss = nn.functional.cross_entropy(model(tokens), labels)
            (loss * (len(labels) / n)).backward()
            total += loss.detach() * len(labels)
        optimizer.step()
        count += n
    return float(total) / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, device: torch.device) -> float:
    """Accuracy of ``model`` on ``dataset``."""
    model.eval()
    correct, count = 0, 0
    for tokens, labels in DataLoader(dataset, batch_size=EVAL_BATCH_SIZE):
        tokens, labels = tokens.to(device), labels.to(device)
        with _autocast(device):
            predicted = model(tokens).argmax(dim=-1)
        correct += int((predicted == labels).sum())
        count += len(labels)
    return correct / max(count, 1)


def _autocast(device: torch.device) -> torch.autocast:
    """bfloat16 autocast on GPUs that support it; a disabled context elsewhere."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _cpu_state(model: nn.Module) -> StateDict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
