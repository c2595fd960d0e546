"""Tracer process: peak memory of one training step on fake tensors, with no GPU.

Run as ``python -m hpo.memory.trace`` by :mod:`hpo.memory.prior`: it reads a JSON request
(``cfg``, ``points``) on stdin and prints one JSON list with ``{"bytes": …}`` or
``{"error": …}`` per point. The step builder builds the model on the meta device (no memory);
its parameters then become fake tensors of one FakeTensorMode (building inside the mode breaks
on modules that deep-copy layers, like ``nn.TransformerEncoder``), and the optimizer is pointed
at them. One warm-up step creates the
optimizer state; torch's MemTracker records the peak of the next step: parameters, gradients,
optimizer state, activations and temporaries.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf


def load_callable(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def trace_step(builder: Callable[..., Any], params: dict[str, Any], cfg: DictConfig) -> int:
    """Peak bytes of one training step of the builder's model at ``params`` (CPU kernels)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with torch.device("meta"):
        built = builder(params, cfg)
    model, optimizer, batch = built[:3]
    loss_fn = built[3] if len(built) > 3 else torch.nn.functional.cross_entropy
    with FakeTensorMode(allow_non_fake_inputs=True):
        _to_fake(model, optimizer)
        inputs, targets = (torch.empty_like(t, device="cpu") for t in batch)

        def step() -> None:
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        model.train()
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            step()  # creates the optimizer state, which every later step holds
            tracker.reset_mod_stats()
            step()
        peak = tracker.get_tracker_snapshot("peak")
    return int(sum(per_device.get("Total", 0) for per_device in peak.values()))


def _to_fake(model: Any, optimizer: Any) -> None:
    """Give the meta model fake storage and point the optimizer at the new parameters."""
    before = list(model.parameters())
    model.to_empty(device="cpu")  # may replace the Parameter objects
    moved = {id(old): new for old, new in zip(before, model.parameters(), strict=True)}
    for group in optimizer.param_groups:
        group["params"] = [moved.get(id(p), p) for p in group["params"]]


def evaluate(cfg: DictConfig, params: dict[str, Any]) -> dict[str, Any]:
    memory = cfg.study.memory
    try:
        if memory.get("estimate_fn"):
            return {"bytes": int(load_callable(memory.estimate_fn)(params, cfg))}
        return {"bytes": trace_step(load_callable(memory.step_builder), params, cfg)}
    except Exception as e:  # one failing point must not lose the others
        last = traceback.format_exc().strip().splitlines()[-1]
        return {"error": f"{type(e).__name__}: {last[:300]}"}


def main() -> None:
    request = json.loads(sys.stdin.read())
    cfg = OmegaConf.create(request["cfg"])
    results = [evaluate(cfg, dict(p)) for p in request["points"]]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
