"""Check everything GPU-only in one call, with a time budget per part; record what was measured.

``python -m bench.gpu_check --out DIR [--dry-run] [--parts env,...] [--budget PART=SECONDS]``

Parts, in order, each in its own process (group) with its own time limit; a part over its
budget is killed and recorded ``timed_out`` with what it had measured, a failing part
``failed``, and the next part runs either way:

- ``env``: GPU model, driver, CUDA and torch versions, and whether CUDA works at all (without
  ``--dry-run`` a machine where it does not ends here: one line saying what is missing, exit 2);
- ``gpu_tests``: ``pytest -m gpu`` on the test files holding GPU-marked tests;
- ``presets``: the criteria presets at each batch size, three training steps each, measured as
  a trial measures itself (``peak_vram_mib``, ``peak_vram_reserved_mib``,
  ``peak_vram_allocated_mib``), the CUDA context (NVML per-process memory minus torch's reserved
  bytes after a 4-byte allocation), and hpo's cold-prior, calibrated and warm estimates;
- ``tune_par2``, ``tune_auto``: ``hpo tune study=criteria_gpu memory.capacity_gib=24`` with
  ``par=2`` and ``par=auto`` for a fixed wall time each, stopped with SIGINT; trials per hour,
  OOMs, NVML utilisation and memory sampled meanwhile;
- ``cap_overrun``: safe overcommit (issue 33): two trials under caps that add up to the card,
  one of which overruns: only it fails, ``cap_exceeded``, and its re-queued copy completes
  (``bench/_gpu_cap.py``).

``--dry-run`` proves the plumbing without a GPU in well under a minute: the same parts on the
CPU (the presets' peak-RSS rise instead of VRAM) and on a simulated 24 GiB card
(``study=simulated``), with short wall times; CUDA-only checks are marked skipped.

Outputs in DIR, written atomically after every part: ``gpu_check.json`` (everything),
``gpu_check.md`` (tables for docs/benchmarks.md), ``gpu_check.log`` (each part's log) and
``tune_par2.db`` / ``tune_auto.db`` (the studies). Exit code 0: every part ok or skipped;
1: a part failed or timed out; 2: a usage error, missing packages, or no usable CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._gpu_parts import PARTS, Spec, atomic_write, child_env
from bench._gpu_report import render_markdown

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {  # seconds per part; with CUDA they add up to the total, 515 s (9 minutes with make)
    "cuda": {
        "env": 45, "gpu_tests": 100, "presets": 110, "tune_par2": 100, "tune_auto": 100,
        "cap_overrun": 60,
    },
    "dry-run": {
        "env": 30, "gpu_tests": 60, "presets": 60, "tune_par2": 30, "tune_auto": 30,
        "cap_overrun": 40,
    },
}  # fmt: skip
TOTAL_BUDGET = {"cuda": 515.0, "dry-run": 190.0}
# Each tune run: wall time from launch to the first SIGINT, then drain and stop (seconds).
WALL = {"cuda": (70.0, 10.0, 10.0), "dry-run": (8.0, 2.0, 5.0)}
PRESETS = {"cuda": "tiny,small,base,large", "dry-run": "tiny,small"}
BATCH_SIZES = {"cuda": "8,16,32,64", "dry-run": "8,16,32"}
TUNE_STUDY = {"cuda": "criteria_gpu", "dry-run": "simulated"}
# criteria_gpu runs as configured (its memory hints come from conf/study/criteria.yaml).
TUNE_ARGS = {"cuda": "", "dry-run": ""}
# What hpo tune imports, as (module, distribution): checked before anything runs.
NEEDED = (
    ("optuna", "optuna"), ("hydra", "hydra-core"), ("omegaconf", "omegaconf"),
    ("sqlalchemy", "sqlalchemy"), ("alembic", "alembic"), ("colorlog", "colorlog"),
    ("yaml", "PyYAML"), ("psutil", "psutil"),
)  # fmt: skip
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a part over its budget


class UsageError(Exception):
    """A mistake in the command line: one line, exit 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while a part ran: its group was killed; ``part`` is its record."""

    def __init__(self, name: str, part: dict[str, Any]) -> None:
        super().__init__(name)
        self.name, self.part = name, part


def say(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--out", required=True, help="directory of the outputs (created)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: CPU and a simulated card")
    ap.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated subset (env always runs)"
    )
    ap.add_argument(
        "--budget", action="append", default=[], metavar="PART=SECONDS",
        help="time budget of one part (repeatable)",
    )  # fmt: skip
    ap.add_argument("--total-budget", type=float, help="seconds for all parts together")
    ap.add_argument("--wall", type=float, help="seconds each tune run goes before its SIGINT")
    ap.add_argument("--drain", type=float, help="seconds after the first SIGINT")
    ap.add_argument("--presets", help="criteria presets, comma-separated")
    ap.add_argument("--batch-sizes", help="batch sizes, comma-separated")
    ap.add_argument("--capacity-gib", type=float, default=24.0, help="memory.capacity_gib")
    ap.add_argument("--tune-study", help="study of the tune runs")
    ap.add_argument("--tune-args", help="extra Hydra overrides of the tune runs (one string)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch directory")
    return ap.parse_args(argv)


def budgets_of(args: argparse.Namespace, mode: str) -> dict[str, float]:
    budgets: dict[str, float] = {k: float(v) for k, v in BUDGETS[mode].items()}
    for item in args.budget:
        name, sep, value = item.partition("=")
        if not sep or name not in PARTS:
            raise UsageError(f"--budget must be PART=SECONDS with PART in {PARTS}, got {item!r}")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise UsageError(
                f"--budget {name} must be a number of seconds, got {value!r}"
            ) from None
        if budgets[name] <= 0:
            raise UsageError(f"--budget {name} must be > 0, got {value}")
    return budgets


def parts_of(args: argparse.Namespace) -> list[str]:
    """The chosen parts in their order; ``env`` always runs first (the machine, the CUDA check)."""
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen:
        raise UsageError(f"--parts takes names from {', '.join(PARTS)}, got {args.parts!r}")
    return [p for p in PARTS if p in chosen or p == "env"]


def spec_of(args: argparse.Namespace, mode: str, out: Path, work: Path) -> Spec:
    wall, drain, stop = WALL[mode]
    presets = (args.presets or PRESETS[mode]).split(",")
    try:
        sizes = [int(b) for b in (args.batch_sizes or BATCH_SIZES[mode]).split(",")]
    except ValueError:
        raise UsageError(f"--batch-sizes must be integers, got {args.batch_sizes!r}") from None
    return Spec(
        dry_run=args.dry_run,
        root=str(ROOT),
        out=str(out),
        work=str(work),
        presets=presets,
        batch_sizes=sizes,
        wall_s=args.wall if args.wall is not None else wall,
        drain_s=args.drain if args.drain is not None else drain,
        stop_s=stop,
        capacity_gib=args.capacity_gib,
        tune_study=args.tune_study or TUNE_STUDY[mode],
        tune_args=shlex.split(args.tune_args if args.tune_args is not None else TUNE_ARGS[mode]),
    )


def missing_packages() -> list[str]:
    """Distributions hpo needs that this Python cannot import (torch is checked by ``env``)."""
    return [dist for module, dist in NEEDED if importlib.util.find_spec(module) is None]


# -- running one part ----------------------------------------------------------------------------


def run_part(
    name: str, budget_s: float, spec: Spec, work: Path, quiet: bool = False
) -> dict[str, Any]:
    """Run part ``name`` in its own process group; kill the group at ``budget_s``.
    ``quiet``: its progress goes to its log only, and nothing is said here."""
    result_path = work / f"{name}.json"
    log_path = work / f"{name}.log"
    if not quiet:
        say(f"[{name}] start (budget {budget_s:g} s)")
    started_at = datetime.now().isoformat(timespec="seconds")
    start = time.monotonic()
    spec_path = work / "spec.json"
    cmd = [sys.executable, "-m", "bench._gpu_parts", name, str(spec_path), str(result_path)]
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=child_env(str(ROOT)), stdout=log, start_new_session=True,
            stderr=log if quiet else None,
        )  # fmt: skip
    timed_out, interrupted = False, False
    try:
        proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    except KeyboardInterrupt:
        interrupted = True
        _kill_group(proc)
    elapsed = round(time.monotonic() - start, 1)
    body = _read_json(result_path)
    status, reason = body.get("status"), body.get("reason")
    if timed_out:
        status, reason = "timed_out", f"over its budget of {budget_s:g} s: killed (partial result)"
    elif interrupted:
        status, reason = "failed", "interrupted (Ctrl-C or SIGTERM): killed (partial result)"
    elif status not in ("ok", "skipped", "failed") or (proc.returncode and status != "failed"):
        status, reason = "failed", reason or f"the part exited with {proc.returncode}"
    part: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "budget_s": budget_s,
        "elapsed_s": elapsed,
        "started_at": started_at,
        "result": body.get("result", {}),
    }
    if status in ("failed", "timed_out"):
        part["log_tail"] = _tail(log_path, 15)
    if not quiet:
        say(f"[{name}] {status} in {elapsed:g} s{f': {reason}' if reason else ''}")
    if interrupted:
        raise Interrupted(name, part)
    return part


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the part's process group (hpo stops now), SIGKILL to what is left of it
    after a grace period."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    while time.monotonic() < deadline and _signal_group(proc.pid, 0):
        time.sleep(0.1)  # the part is gone; hpo and its workers may still be stopping
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a zombie leader not yet reaped counts as gone
        return False
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the whole check ---------------------------------------------------------------------------


class Check:
    """The report of one run, written to ``out`` after every part."""

    def __init__(self, argv: list[str], mode: str, out: Path, work: Path, total_s: float) -> None:
        self.out, self.work = out, work
        self.start = time.monotonic()
        self.report: dict[str, Any] = {
            "tool": "bench.gpu_check",
            "schema": 1,
            "mode": mode,
            "command": shlex.join(["python", "-m", "bench.gpu_check", *argv]),
            "started_at": datetime.now().isoformat(timespec="seconds"),
            "total_budget_s": total_s,
            "elapsed_s": 0.0,
            "machine": {},
            "parts": {},
            "ok": True,
        }

    def add(self, name: str, part: dict[str, Any]) -> None:
        self.report["parts"][name] = part
        if name == "env":
            self.report["machine"] = _machine(part.get("result", {}))
        self.write()

    def write(self) -> None:
        r = self.report
        r["elapsed_s"] = round(time.monotonic() - self.start, 1)
        r["ok"] = all(p["status"] in ("ok", "skipped") for p in r["parts"].values())
        atomic_write(self.out / "gpu_check.json", json.dumps(r, indent=2, default=str) + "\n")
        atomic_write(self.out / "gpu_check.md", render_markdown(r))
        logs = [
            f"===== {name} =====\n{(self.work / f'{name}.log').read_text(errors='replace')}"
            for name in r["parts"]
            if (self.work / f"{name}.log").exists()
        ]
        atomic_write(self.out / "gpu_check.log", "\n".join(logs))


def _machine(env: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "gpu_name", "gpu_memory_mib", "compute_capability", "driver", "cuda_driver", "torch",
        "torch_cuda", "python", "platform", "cpus", "ram_gib", "hpo_commit", "versions",
    )  # fmt: skip
    return {k: env.get(k) for k in keys}


def run_check(args: argparse.Namespace, argv: list[str]) -> int:
    mode = "dry-run" if args.dry_run else "cuda"
    parts, budgets = parts_of(args), budgets_of(args, mode)
    total = args.total_budget if args.total_budget is not None else TOTAL_BUDGET[mode]
    missing = missing_packages()
    if missing:
        raise UsageError(
            f"missing Python packages: {', '.join(missing)} (offline GPU machine: run "
            "`make gpu-wheels` on a networked one and bring .whl/; `make gpu-check` installs it)"
        )
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    spec = spec_of(args, mode, out, work)
    spec.save(work / "spec.json")
    check = Check(argv, mode, out, work, total)
    check.report["work_dir"] = str(work) if args.keep_work else None
    check.report["settings"] = {
        "budgets_s": {name: budgets[name] for name in parts},
        **{k: v for k, v in vars(spec).items() if k not in ("root", "out", "work")},
    }
    try:
        # env first and quietly: where CUDA is not usable, one line says why, and that is all
        env = run_part("env", budgets["env"], spec, work, quiet=True)
        check.add("env", env)
        problem = _cuda_problem(env, args.dry_run)
        if problem:
            say(problem)
            return 2
        say(f"{mode}: parts {', '.join(parts)} in at most {total:g} s; outputs in {out}")
        say(f"[env] {env['status']} in {env['elapsed_s']:g} s: {_machine_line(check.report)}")
        for name in parts[1:]:
            left = total - (time.monotonic() - check.start) - 2.0
            if left < 1.0:
                check.add(name, _skipped(name, budgets[name], "the total budget is spent"))
                continue
            check.add(name, run_part(name, min(budgets[name], left), spec, work))
        check.write()
    except (KeyboardInterrupt, Interrupted) as e:
        if isinstance(e, Interrupted):
            check.add(e.name, e.part)
        check.write()
        say(f"interrupted; what was measured is in {out / 'gpu_check.json'}")
        return 130
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    _print_summary(check.report, out)
    return 0 if check.report["ok"] else 1


def _skipped(name: str, budget_s: float, reason: str) -> dict[str, Any]:
    say(f"[{name}] skipped: {reason}")
    return {"status": "skipped", "reason": reason, "budget_s": budget_s, "elapsed_s": 0.0,
            "started_at": None, "result": {}}  # fmt: skip


def _machine_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    gpu = (
        f"{m['gpu_name']} ({m['gpu_memory_mib']} MiB), driver {m['driver']}, "
        if m.get("gpu_name")
        else "no GPU, "
    )
    return f"{gpu}torch {m.get('torch')} (CUDA {m.get('torch_cuda')})"


def _cuda_problem(part: dict[str, Any], dry_run: bool) -> str | None:
    """Without --dry-run: the one line that ends the check when CUDA is not usable."""
    if dry_run:
        return None
    if part["status"] != "ok":
        return f"could not check CUDA: the env part {part['status']} ({part['reason']})"
    problem = part["result"].get("cuda_problem")
    if problem:
        return f"CUDA is not usable: {problem} (--dry-run checks the plumbing without a GPU)"
    return None


def _print_summary(report: dict[str, Any], out: Path) -> None:
    for name, part in report["parts"].items():
        say(f"{name:<10} {part['status']:<9} {part['elapsed_s']:>6.1f} s of {part['budget_s']:g}")
    say(f"{'ok' if report['ok'] else 'NOT ok'} in {report['elapsed_s']:g} s: "
        f"{out / 'gpu_check.json'}, {out / 'gpu_check.md'}")  # fmt: skip


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the check as Ctrl-C does: the running part's group is killed, the outputs
    are written (the parts run in their own sessions, so nothing else would stop them)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run_check(args, argv)
    except UsageError as e:
        say(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
