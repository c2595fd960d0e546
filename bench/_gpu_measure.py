"""Measure the criteria presets' real training-step peaks, one process for all (torch side).

``python -m bench._gpu_measure --device cuda|cpu --overrides JSON --config-dir DIR --presets P,..
--batch-sizes B,..`` prints one JSON object per line on stdout, as soon as each is measured, so
a caller that stops this process keeps what was measured so far:

- ``{"kind": "context", ...}`` (CUDA only) first: the CUDA context's size, measured as NVML's
  per-process memory of this process minus torch's reserved bytes, right after a 4-byte
  allocation (``context_mib``) and again after one small matrix product, which loads cuBLAS
  (``context_cublas_mib``); beside it the same from NVML's device-wide used memory before and
  after (valid only when nothing else runs on the card).
- ``{"kind": "config", "model": ..., "batch_size": ..., ...}`` per configuration: the step
  builder's model and optimizer, trained by the criteria objective's own ``train_epoch`` for
  three batches and evaluated by its ``evaluate`` on one evaluation batch (512), as a trial's
  epoch does, bf16 autocast included; ``train_peak_reserved_mib`` is torch's reserved peak
  before the evaluation. On CUDA through hpo's own :class:`~hpo.execution.probe.MemoryProbe`
  and :class:`~hpo.devices.NvidiaDevice`, so the ``peak_vram_*`` keys are what a trial
  records; then ``overhead_mib``, NVML per-process minus torch reserved afterwards (context
  plus lazily loaded kernels). On the CPU (the dry run): the rise of the peak RSS
  (``peak_rss_rise_mib``), after a warm-up configuration and with freed heap handed back to
  the kernel in between (run it with ``MALLOC_MMAP_THRESHOLD_=65536`` so that large buffers
  are mapped and unmapped, not kept).

Configurations run smallest first; the allocator's cache is emptied between them.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import time
from typing import Any

import psutil
import torch
from torch.utils.data import DataLoader, TensorDataset

from hpo.config import compose
from hpo.devices import MIB, Device
from hpo.execution.probe import _high_water_mark, _reset_high_water_mark
from hpo.studies.criteria.memory import build_step

STEPS = 3


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def nvml_process_bytes(pid: int) -> int | None:
    """NVML's per-process device memory of ``pid`` on every GPU; None if NVML cannot see it."""
    try:
        import pynvml

        pynvml.nvmlInit()
        total, seen = 0, False
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    total += int(proc.usedGpuMemory)
                    seen = True
        return total if seen else None
    except Exception:
        return None


def nvml_device_used() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:
        return None


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def measure_context() -> dict[str, Any]:
    """Context size: NVML per-process (or device-wide) memory minus torch's reserved bytes."""
    pid = os.getpid()
    device_before = nvml_device_used()
    start = time.monotonic()
    x = torch.ones(1, device="cuda")
    torch.cuda.synchronize()
    init_s = time.monotonic() - start
    reserved = torch.cuda.memory_reserved()
    process = nvml_process_bytes(pid)
    device_after = nvml_device_used()
    a = torch.randn(256, 256, device="cuda")
    (a @ a).sum().item()  # loads cuBLAS and its workspace
    process_cublas = nvml_process_bytes(pid)
    reserved_cublas = torch.cuda.memory_reserved()
    del x, a
    device_rise = (
        device_after - device_before - reserved
        if device_before is not None and device_after is not None
        else None
    )
    return {
        "kind": "context",
        "method": "NVML per-process memory of this process minus torch.cuda.memory_reserved(), "
        "after a 4-byte allocation; *_device_mib: NVML device-wide used memory after minus "
        "before, minus reserved",
        "nvml_sees_process": process is not None,
        "context_mib": _mib(None if process is None else process - reserved),
        "context_cublas_mib": _mib(
            None if process_cublas is None else process_cublas - reserved_cublas
        ),
        "context_device_mib": _mib(device_rise),
        "reserved_after_tiny_mib": _mib(reserved),
        "cuda_init_s": round(init_s, 2),
    }


def trial_steps(params: dict[str, Any], cfg: Any, device: torch.device) -> float | None:
    """What a trial of ``params`` does to memory: the objective's own ``train_epoch`` over
    ``STEPS`` batches (bf16 autocast on a GPU that has it) and ``evaluate`` over one
    evaluation batch. Returns torch's reserved peak after training (None on the CPU)."""
    from hpo.studies.criteria.objective import EVAL_BATCH_SIZE, evaluate, train_epoch

    data = cfg.study.data
    vocab, seq_len, classes = int(data.vocab_size), int(data.seq_len), int(data.n_classes)
    size = STEPS * int(params["batch_size"])
    train = TensorDataset(
        torch.randint(2, vocab, (size, seq_len)), torch.randint(0, classes, (size,))
    )
    val = TensorDataset(
        torch.randint(2, vocab, (EVAL_BATCH_SIZE, seq_len)),
        torch.randint(0, classes, (EVAL_BATCH_SIZE,)),
    )
    with device:
        model, optimizer, _ = build_step(params, cfg)
    train_epoch(model, optimizer, DataLoader(train, batch_size=int(params["batch_size"])), device)
    train_peak = torch.cuda.max_memory_reserved() if device.type == "cuda" else None
    evaluate(model, val, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return train_peak


def measure_cuda(params: dict[str, Any], cfg: Any, device: Device) -> dict[str, Any]:
    from hpo.execution.probe import MemoryProbe

    gc.collect()
    torch.cuda.empty_cache()
    start = time.monotonic()
    with MemoryProbe(device, interval_s=0.005) as probe:
        train_peak = trial_steps(params, cfg, torch.device("cuda"))
    elapsed = time.monotonic() - start
    gc.collect()  # the model is gone; what NVML sees beyond torch's cache is overhead
    process = nvml_process_bytes(os.getpid())
    reserved = torch.cuda.memory_reserved()
    attrs = probe.attrs()
    return {
        **{k: attrs[k] for k in attrs if k.startswith("peak_vram")},
        "train_peak_reserved_mib": _mib(train_peak),
        "overhead_mib": _mib(None if process is None else process - reserved),
        "peak_vram_from": "nvml" if process is not None else "reserved",
        "steps_s": round(elapsed, 3),
    }


def _release_freed_memory() -> None:
    """Hand freed heap back to the kernel (glibc), so the next RSS rise starts from the floor."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_cpu(params: dict[str, Any], cfg: Any) -> dict[str, Any]:
    _release_freed_memory()
    before = psutil.Process().memory_info().rss
    _reset_high_water_mark()
    start = time.monotonic()
    trial_steps(params, cfg, torch.device("cpu"))
    elapsed = time.monotonic() - start
    peak = _high_water_mark()
    rise = None if peak is None else max(0, peak - before)
    return {"peak_rss_rise_mib": _mib(rise), "steps_s": round(elapsed, 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), required=True)
    ap.add_argument("--overrides", required=True, help="JSON list of Hydra overrides")
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--presets", required=True)
    ap.add_argument("--batch-sizes", required=True)
    args = ap.parse_args(argv)
    cfg = compose(json.loads(args.overrides), args.config_dir)
    torch.manual_seed(0)
    device: Device | None = None
    if args.device == "cuda":
        from hpo.devices import NvidiaDevice

        emit(measure_context())
        device = NvidiaDevice(0)
    else:  # one untimed step first: torch's lazy initialisation is no configuration's peak
        torch.set_num_threads(1)
        warm_up = {"model": args.presets.split(",")[0], "batch_size": 1, "lr": 1e-3, "dropout": 0}
        measure_cpu(warm_up, cfg)
    sizes = sorted(int(b) for b in args.batch_sizes.split(","))
    for model in args.presets.split(","):
        for batch_size in sizes:
            params = {"model": model, "batch_size": batch_size, "lr": 1e-3, "dropout": 0.1}
            record: dict[str, Any] = {"kind": "config", "model": model, "batch_size": batch_size}
            try:
                if device is not None:
                    record |= measure_cuda(params, cfg, device)
                else:
                    record |= measure_cpu(params, cfg)
            except torch.OutOfMemoryError as e:
                record["error"] = f"OOM: {str(e).splitlines()[0]}"
                torch.cuda.empty_cache()
            emit(record)
            print(f"measured {model} bs {batch_size}: {record}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
