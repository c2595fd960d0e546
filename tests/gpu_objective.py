"""A CUDA objective for the GPU fault tests: real device-side asserts and real OOMs.

First attempts of trial 0 hit an out-of-range index inside a CUDA kernel (a device-side
assert, which poisons the process's CUDA context); trial 2 asks for twice the card's memory (a
real ``torch.OutOfMemoryError``). Every other trial does a little real work on the GPU.
"""

from __future__ import annotations

import optuna
from omegaconf import DictConfig


def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
    import torch

    from hpo.execution.context import current_context

    device = torch.device(current_context().device)
    first_attempt = "retry_of" not in trial.user_attrs
    if trial.number == 0 and first_attempt:
        values = torch.zeros(8, device=device)
        index = torch.tensor([1000], device=device)
        values[index].sum().item()  # the kernel asserts; the error surfaces at the sync
    if trial.number == 2 and first_attempt:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.empty(2 * total, dtype=torch.uint8, device=device)
    x = torch.randn(256, 256, device=device)
    value = float((x @ x.T).diagonal().mean().item())
    trial.report(value, 1)
    return value
