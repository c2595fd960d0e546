"""Measure one criteria preset's real training-step peak on the CPU (run in a fresh process).

``python -m bench._cpu_step MODEL BATCH_SIZE SEED`` prints ``{"peak_bytes": …}``: the rise of
the process's peak RSS (VmHWM) from just before the model is built to the end of three steps,
so parameters, gradients, optimizer state, activations and the runtime's own buffers all count.
"""

from __future__ import annotations

import json
import sys

import psutil
import torch

from hpo.config import compose
from hpo.execution.probe import _high_water_mark, _reset_high_water_mark
from hpo.studies.criteria.memory import build_step


def main() -> None:
    model_name, batch_size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = compose(["study=criteria"])
    params = {"model": model_name, "batch_size": batch_size, "lr": 1e-3, "dropout": 0.25}
    before = psutil.Process().memory_info().rss
    model, optimizer, (tokens, labels) = build_step(params, cfg)
    tokens = torch.randint(2, int(cfg.study.data.vocab_size), tokens.shape)
    labels = torch.randint(0, int(cfg.study.data.n_classes), labels.shape)
    _reset_high_water_mark()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(tokens), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peak = _high_water_mark()
    assert peak is not None, "needs Linux /proc"
    print(json.dumps({"peak_bytes": peak - before}))


if __name__ == "__main__":
    main()
