"""Part ``presets`` of ``bench.gpu_check``: the criteria presets measured against hpo's estimates.

The measurement runs in a child process (:mod:`bench._gpu_measure`, torch) while this process
traces the cold prior with hpo's own tracer (:func:`hpo.memory.prior.build_prior`, fake
tensors in a subprocess). Each measured configuration then gets three estimates from
:class:`~hpo.memory.MemoryEstimator`, all compared with the measured reference (``peak_vram_mib``
on CUDA, the peak-RSS rise on the CPU of a dry run):

- ``cold_prior``: the prior alone, uncalibrated (context = hpo's default CUDA context), as the
  very first trial of a study is estimated;
- ``cold_calibrated``: the prior calibrated on the other presets' measurements (its own preset
  left out), as the first trial of a new preset is estimated;
- ``warm``: fitted from the other batch sizes of its own preset (plus everything else), as a
  trial is estimated once its preset has been measured (``n_measured`` says from how many).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bench._gpu_parts import PartContext, child_env

if TYPE_CHECKING:
    from hpo.memory.prior import Prior

KINDS = ("cold_prior", "cold_calibrated", "warm")


def study_overrides(dry_run: bool, presets: list[str], batch_sizes: list[int]) -> list[str]:
    """The criteria study as the presets part measures and traces it."""
    study = "criteria" if dry_run else "criteria_gpu"
    return [
        f"study={study}",
        f"study.space.model.choices=[{','.join(presets)}]",
        f"study.space.batch_size.choices=[{','.join(map(str, batch_sizes))}]",
    ]


def run_presets(ctx: PartContext) -> None:
    spec = ctx.spec
    device = "cpu" if spec.dry_run else "cuda"
    overrides = study_overrides(spec.dry_run, spec.presets, spec.batch_sizes)
    r = ctx.result
    r |= {"device": device, "study_overrides": overrides, "configs": []}
    r["reference"] = "peak_rss_rise_mib" if spec.dry_run else "peak_vram_mib"
    if spec.dry_run:
        r["skipped_checks"] = {
            "context": "no CUDA (dry run)",
            "peak_vram": "no CUDA (dry run): peaks are the RSS rise of CPU training steps",
        }
    ctx.say(f"{len(spec.presets)} presets x batch {spec.batch_sizes} on {device}")
    ctx.save()
    prior_box: dict[str, Any] = {}
    tracer = threading.Thread(
        target=_trace, args=(spec.root, overrides, prior_box), name="prior", daemon=True
    )
    tracer.start()
    rc = _measure(ctx, device, overrides)
    tracer.join()
    prior = prior_box.get("prior")
    r["prior"] = _prior_summary(prior, prior_box)
    ctx.say(f"cold prior traced in {prior_box.get('elapsed_s')} s: {r['prior'].get('error', 'ok')}")
    r["context_bytes_assumed_mib"] = round(_context_bytes(spec.dry_run) / 2**20, 1)
    if prior is not None:
        r["summary"] = add_estimates(
            r["configs"], prior, r["reference"], _context_bytes(spec.dry_run)
        )
    ctx.save()
    errors = [c for c in r["configs"] if c.get("error")]
    if rc != 0:
        ctx.finish("failed", f"the measurement exited with {rc}: {_last_error(ctx)}")
    elif prior is None:
        ctx.finish("failed", f"no cold prior: {r['prior'].get('error')}")
    elif errors:
        ctx.finish("failed", f"{len(errors)} configuration(s) failed: {errors[0]['error']}")
    else:
        ctx.finish("ok")


def _last_error(ctx: PartContext) -> str:
    """The last line the measurement wrote to the log (not a progress line of this part)."""
    lines = [ln for ln in ctx.log_tail(40).splitlines() if "gpu-check: [" not in ln]
    return lines[-1].strip() if lines else "no output"


def _context_bytes(dry_run: bool) -> float:
    """The context hpo assumes before calibration: as build_gate does for the device."""
    if dry_run:
        return 0.0
    from hpo.devices import DEFAULT_CUDA_CONTEXT_BYTES

    return float(DEFAULT_CUDA_CONTEXT_BYTES)


def _measure(ctx: PartContext, device: str, overrides: list[str]) -> int:
    spec = ctx.spec
    cmd = [
        sys.executable, "-m", "bench._gpu_measure", "--device", device,
        "--overrides", json.dumps(overrides), "--config-dir", str(Path(spec.root) / "hpo" / "conf"),
        "--presets", ",".join(spec.presets),
        "--batch-sizes", ",".join(map(str, spec.batch_sizes)),
    ]  # fmt: skip
    with ctx.log_path.open("a") as log:
        proc = subprocess.Popen(
            cmd, cwd=spec.root, stdout=subprocess.PIPE, stderr=log, text=True,
            env=child_env(spec.root) | {"MALLOC_MMAP_THRESHOLD_": "65536"},
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a library printing on stdout
                log.write(line)
                continue
            kind = record.pop("kind")
            if kind == "context":
                ctx.result["context"] = record
                ctx.say(f"CUDA context {record.get('context_mib')} MiB ({record['method']})")
            else:
                ctx.result["configs"].append(record)
                ctx.say(_describe(record))
            ctx.save()
        return proc.wait()


def _describe(c: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in c.items() if k.startswith("peak_") or k == "error"}
    return f"{c['model']} bs {c['batch_size']}: " + ", ".join(f"{k} {v}" for k, v in shown.items())


def _trace(root: str, overrides: list[str], box: dict[str, Any]) -> None:
    import time

    from omegaconf import OmegaConf

    from hpo.config import compose
    from hpo.memory.prior import build_prior

    start = time.monotonic()
    try:
        cfg = compose(overrides, str(Path(root) / "hpo" / "conf"))
        container = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
        box["prior"] = build_prior(container, ["batch_size"], ["model"], timeout_s=600)
        if box["prior"] is None:
            box["error"] = "tracing the step builder failed (see the log)"
    except Exception as e:
        box["prior"], box["error"] = None, f"{type(e).__name__}: {e}"
    box["elapsed_s"] = round(time.monotonic() - start, 1)


def _prior_summary(prior: Prior | None, box: Mapping[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"elapsed_s": box.get("elapsed_s")}
    if prior is None:
        summary["error"] = box.get("error", "not traced")
        return summary
    summary["traced_mib"] = {
        str(key[0]): {str(int(x)): round(y / 2**20, 1) for x, y in sorted(points)}
        for key, points in prior.table.items()
    }
    summary["state_mib"] = {str(k[0]): round(v / 2**20, 1) for k, v in prior.state.items()}
    return summary


# -- estimates -----------------------------------------------------------------------------------


def add_estimates(
    configs: list[dict[str, Any]], prior: Prior, reference: str, context_bytes: float
) -> dict[str, Any]:
    """Add ``estimates`` to every measured config (in place); summary errors per kind."""
    from hpo.memory import MemoryEstimator, Observation

    measured = [c for c in configs if c.get(reference)]

    def estimator(rows: list[dict[str, Any]]) -> MemoryEstimator:
        est = MemoryEstimator(["batch_size"], ["model"], prior, context_bytes=context_bytes)
        for row in rows:
            est.observe(Observation(_params(row), float(row[reference]) * 2**20))
        return est

    for c in measured:
        others = [o for o in measured if o is not c]
        chosen = {
            "cold_prior": estimator([]),
            "cold_calibrated": estimator([o for o in others if o["model"] != c["model"]]),
            "warm": estimator(others),
        }
        c["estimates"] = {}
        for kind, est in chosen.items():
            e = est.predict(_params(c))
            if e is None:
                continue
            peak = float(c[reference])
            point, upper = e.point_bytes / 2**20, e.upper_bytes / 2**20
            c["estimates"][kind] = {
                "point_mib": round(point, 1),
                "upper_mib": round(upper, 1),
                "source": e.source,
                "n_measured": e.n_measured,
                "rel_err": round((point - peak) / peak, 4),
                "upper_under": round((peak - upper) / peak, 4),
            }
    return {kind: _summarise([c["estimates"].get(kind) for c in measured]) for kind in KINDS}


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"model": row["model"], "batch_size": row["batch_size"]}


def _summarise(estimates: list[dict[str, Any] | None]) -> dict[str, Any]:
    found = [e for e in estimates if e is not None]
    errors = sorted(abs(e["rel_err"]) for e in found)
    p90 = errors[min(len(errors) - 1, max(0, math.ceil(0.9 * len(errors)) - 1))] if errors else None
    return {
        "n": len(found),
        "p90_abs_rel_err": p90,
        # > 0: the upper estimate, the one admission acts on, was below the measured peak
        "max_upper_under": max((e["upper_under"] for e in found), default=None),
        "upper_below_peak": sum(e["upper_under"] > 0 for e in found),
    }
