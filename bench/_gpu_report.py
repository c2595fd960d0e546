"""``gpu_check.md``: the report of ``bench.gpu_check`` as markdown for docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

ESTIMATES = (
    ("cold_prior", "cold prior"),
    ("cold_calibrated", "cold, calibrated"),
    ("warm", "warm"),
)


def render_markdown(report: dict[str, Any]) -> str:
    parts = report["parts"]
    lines = [*_header(report), "", *_parts_table(parts)]
    presets = parts.get("presets", {}).get("result") or {}
    if presets.get("configs"):
        lines += ["", *_presets_section(presets)]
    tunes = {k: parts[k] for k in ("tune_par2", "tune_auto") if parts.get(k, {}).get("result")}
    if tunes:
        lines += ["", *_tune_section(tunes)]
    return "\n".join(lines) + "\n"


def _header(report: dict[str, Any]) -> list[str]:
    m = report.get("machine") or {}
    versions = m.get("versions") or {}
    day = str(report.get("started_at", ""))[:10]
    dry = report["mode"] == "dry-run"
    title = "GPU check, dry run (no GPU)" if dry else "GPU check"
    gpu = (
        f"{m.get('gpu_name')} ({m.get('gpu_memory_mib')} MiB, compute capability "
        f"{m.get('compute_capability')}), driver {m.get('driver')}, CUDA driver "
        f"{m.get('cuda_driver')}"
        if m.get("gpu_name")
        else "no GPU"
    )
    return [
        f"## {title} (`make gpu-check`), {day}",
        "",
        f"Machine: {gpu}; torch {m.get('torch')} (CUDA {m.get('torch_cuda')}); "
        f"Python {str(m.get('python') or '?').split(' ')[0]}, {m.get('cpus')} CPUs, "
        f"{m.get('ram_gib')} GiB RAM; optuna {versions.get('optuna')}; "
        f"hpo {m.get('hpo_commit') or '(no git)'}.",
        f"Command: `{report['command']}`: {report['elapsed_s']:g} s of a "
        f"{report['total_budget_s']:g} s budget; every part in its own process with its own "
        "time limit.",
    ]


def _parts_table(parts: dict[str, Any]) -> list[str]:
    rows = ["| part | status | time (budget) | result |", "| --- | --- | --- | --- |"]
    for name, part in parts.items():
        summary = _part_summary(name, part.get("result") or {})
        if part.get("reason"):
            summary = f"{part['reason']}; {summary}" if summary else part["reason"]
        rows.append(
            f"| {name} | {part['status']} | {part['elapsed_s']:g} s ({part['budget_s']:g} s) "
            f"| {_cell(summary)} |"
        )
    return rows


def _part_summary(name: str, r: dict[str, Any]) -> str:
    if name == "env":
        if not r:
            return ""
        problem = r.get("cuda_problem")
        gpu = f"{r.get('gpu_name')}, " if r.get("gpu_name") else ""
        return f"{gpu}torch {r.get('torch')}; " + (
            f"no CUDA: {problem}" if problem else "CUDA works"
        )
    if name == "gpu_tests":
        if "tests" not in r:
            return ""
        counts = ", ".join(f"{r.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped"))
        return f"{counts} ({', '.join(c['name'].split('::')[-1] for c in r['cases'])})"
    if name == "presets":
        n = len(r.get("configs") or [])
        ctx = (r.get("context") or {}).get("context_mib")
        context = f"; CUDA context {ctx} MiB" if ctx is not None else ""
        return f"{n} configurations on {r.get('device')}{context}" if r else ""
    if "finished_in_window" in r:
        return (
            f"{r['finished_in_window']} trial(s) ended in {r['wall_s']:g} s "
            f"({r['trials_per_hour']} per hour), {r['oom']} OOM"
        )
    return ""


def _presets_section(r: dict[str, Any]) -> list[str]:
    cuda = r.get("device") == "cuda"
    ref = r.get("reference", "peak_vram_mib")
    lines = ["### Criteria presets: measured peaks and hpo's estimates (MiB)", ""]
    context = r.get("context")
    if context:
        lines.append(
            f"CUDA context: {context.get('context_mib')} MiB after a 4-byte allocation, "
            f"{context.get('context_cublas_mib')} MiB with cuBLAS loaded ({context['method']}; "
            f"device-wide {context.get('context_device_mib')} MiB). hpo assumes "
            f"{r.get('context_bytes_assumed_mib')} MiB before calibration."
        )
    else:
        lines.append(
            f"No CUDA: the reference is `{ref}`, the RSS rise of a trial's work (three training "
            "batches, one evaluation batch of 512) on the CPU."
        )
    lines.append(
        "Estimates: point (upper) and the point's relative error; cold prior = traced on fake "
        "tensors, uncalibrated; cold, calibrated = the other presets measured; warm = the "
        "other batch sizes of the same preset measured."
    )
    lines.append("")
    head = ["preset", "batch"]
    head += ["allocated", "reserved", "peak_vram", "overhead"] if cuda else [ref]
    head += [label for _, label in ESTIMATES]
    lines += ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    for c in r["configs"]:
        cells = [c["model"], str(c["batch_size"])]
        if cuda:
            keys = ("peak_vram_allocated_mib", "peak_vram_reserved_mib", ref, "overhead_mib")
            cells += [_num(c.get(k)) for k in keys]
        else:
            cells.append(_num(c.get(ref)))
        est = c.get("estimates") or {}
        cells += [_estimate(est.get(kind)) for kind, _ in ESTIMATES]
        if c.get("error"):
            cells[-1] = _cell(c["error"])
        lines.append("| " + " | ".join(cells) + " |")
    summary = r.get("summary")
    if summary:
        lines += ["", "| estimate | n | p90 abs. rel. error | max under-estimate of upper | "
                  "upper below peak |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for kind, label in ESTIMATES:
            s = summary[kind]
            lines.append(
                f"| {label} | {s['n']} | {_pct(s['p90_abs_rel_err'])} | "
                f"{_pct(s['max_upper_under'])} | {s['upper_below_peak']} |"
            )
    return lines


def _tune_section(tunes: dict[str, Any]) -> list[str]:
    first = next(iter(tunes.values()))["result"]
    lines = [
        f"### `{first.get('command', 'hpo tune').split(' par=')[0]}`, "
        f"{first.get('wall_s', 0):g} s each",
        "",
        "Trials per hour: trials that ended on their own (any state; not pre-pruned, not "
        "interrupted) before the first SIGINT, over the wall time from launch. Utilisation and "
        "memory: the study's devices sampled every 0.5 s (NVML on a GPU).",
        "",
        "| par | trials/h | ended | trials by state | OOM | pre-pruned | mean util | "
        "memory mean / max (MiB) | par=auto |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for part in tunes.values():
        r = part["result"]
        devices = r.get("devices") or {}
        util = "; ".join(f"{_pct(d['util_mean'])}" for d in devices.values()) or "—"
        memory = "; ".join(
            f"{_num(d['used_mib_mean'])} / {_num(d['used_mib_max'])}" for d in devices.values()
        )
        states = ", ".join(f"{k} {v}" for k, v in sorted((r.get("by_state") or {}).items()))
        lines.append(
            f"| {r.get('par')} | {r.get('trials_per_hour', '—')} | "
            f"{r.get('finished_in_window', '—')} | {states or '—'} | {r.get('oom', '—')} | "
            f"{r.get('pre_pruned', '—')} | {util} | {memory or '—'} | "
            f"{_cell(r.get('par_auto_decision', '—'))} |"
        )
    return lines


def _estimate(e: dict[str, Any] | None) -> str:
    if not e:
        return "—"
    return f"{e['point_mib']:.0f} ({e['upper_mib']:.0f}) {e['rel_err'] * 100:+.0f} %"


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
