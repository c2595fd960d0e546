"""Tracer process: peak memory of one training step on fake tensors, with no GPU.

Run as ``python -m hpo.memory.trace`` by :mod:`hpo.memory.prior`: it reads a JSON request
(``cfg``, ``points``) on stdin and prints one JSON list with ``{"bytes": …}`` (and
``"state_bytes"`` where a step was traced) or ``{"error": …}`` per point. The step builder
builds the model on the meta device (no memory); its parameters then become fake tensors of one
FakeTensorMode (building inside the mode breaks on modules that deep-copy layers, like
``nn.TransformerEncoder``), and the optimizer is pointed at them. One warm-up step creates the
optimizer state; torch's MemTracker records the peak of the next step: parameters, gradients,
optimizer state, activations and temporaries. It also reports the bytes of the step's *state*
(parameters, buffers, optimizer state): allocated once, they cost exactly their size on any
device, while the rest (gradients, activations, temporaries) goes through the allocator and is
calibrated separately (see :mod:`hpo.memory.estimator`).
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


def trace_step(
    builder: Callable[..., Any], params: dict[str, Any], cfg: DictConfig
) -> dict[str, int]:
    """Peak bytes of one training step of the builder's model at ``params`` (CPU kernels),
    and the bytes of its state (parameters, buffers, optimizer state)."""
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
        state = _state_bytes(model, optimizer)
    total = int(sum(per_device.get("Total", 0) for per_device in peak.values()))
    return {"bytes": total, "state_bytes": min(state, total)}


def _state_bytes(model: Any, optimizer: Any) -> int:
    """Bytes of the parameters, buffers and optimizer state tensors."""
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    for per_param in optimizer.state.values():
        tensors += [t for t in per_param.values() if isinstance(t, torch.Tensor)]
    return int(sum(t.numel() * t.element_size() for t in tensors))


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
        return trace_step(load_callable(memory.step_builder), params, cfg)
    except Exception as e:  # one failing point must not lose the others
        last = traceback.format_exc().strip().splitlines()[-1]
        return {"error": f"{type(e).__name__}: {last[:300]}"}


def main() -> None:
    request = json.loads(sys.stdin.read())
    cfg = OmegaConf.create(request["cfg"])
    # the step builder lives in the user's project, like the objective
    for directory in (request["cfg"].get("user_config_dir"), request["cfg"].get("project_dir")):
        if directory and directory not in sys.path:
            sys.path.insert(0, directory)
    results = [evaluate(cfg, dict(p)) for p in request["points"]]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
