"""optuna-integration's ``PyTorchLightningPruningCallback`` prunes inside an hpo trial: a
Lightning script ported from ``study.optimize`` by one line, on the CPU, outside the
repository. hpo's micro-batch split reaches Lightning as ``accumulate_grad_batches``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_any_callable import run_script

LIGHTNING = """
import lightning.pytorch as pl
import optuna
import torch
from optuna_integration import PyTorchLightningPruningCallback

import hpo

torch.manual_seed(0)
X = torch.randn(64, 4)
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])


class Regression(pl.LightningModule):
    def __init__(self, lr, offset):
        super().__init__()
        self.lr, self.offset = lr, offset  # offset: a trial that can only be worse
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), y)

    def validation_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), y) + self.offset
        self.log("val_loss", loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def objective(trial):
    lr = trial.suggest_float("lr", 0.01, 0.05)
    model = Regression(lr, offset=0.0 if trial.number < 3 else 100.0)
    data = torch.utils.data.TensorDataset(X, Y)
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    trainer = pl.Trainer(
        max_epochs=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # hpo's micro-batch split (1 unless study.memory.accumulation splits the batch)
        accumulate_grad_batches=hpo.current_context().accum_steps,
        callbacks=[PyTorchLightningPruningCallback(hpo.current_trial() or trial, "val_loss")],
    )
    trainer.fit(model, loader, loader)
    return trainer.callback_metrics["val_loss"].item()


study = optuna.create_study(
    study_name="lightning",
    pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
)
hpo.optimize(study, objective, n_trials=5, par=1)
states = [t.state.name for t in study.trials]
print("states", states)
print("pruned at", [t.last_step for t in study.trials if t.state.name == "PRUNED"])
"""


def test_lightnings_pruning_callback_prunes_inside_an_hpo_trial(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("optuna_integration")
    proc = run_script(tmp_path, LIGHTNING, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("states"))
    assert line == "states ['COMPLETE', 'COMPLETE', 'COMPLETE', 'PRUNED', 'PRUNED']", line
    assert "pruned at [1, 1]" in proc.stdout, proc.stdout
