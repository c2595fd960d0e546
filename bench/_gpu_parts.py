"""The parts of ``bench.gpu_check``, each run in its own process with its own time budget.

``python -m bench._gpu_parts NAME SPEC RESULT`` runs part ``NAME`` with the options in the JSON
file ``SPEC`` and keeps ``RESULT`` up to date (atomically) as it measures, so the caller, which
kills the part's process group when its budget is spent, still reads what was measured:
``{"status": "running" | "ok" | "skipped" | "failed", "reason": ..., "result": {...}}``.
Progress lines go to stderr (``gpu-check: [part] ...``) and to the part's log, beside the
output of the programs it runs.

Parts: ``env`` (machine, versions, whether CUDA works), ``gpu_tests`` (the GPU-marked tests),
``presets`` (:mod:`bench._gpu_presets`), ``tune_par2`` and ``tune_auto``
(:mod:`bench._gpu_tune`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PARTS = ("env", "gpu_tests", "presets", "tune_par2", "tune_auto", "cap_overrun")
VERSIONS_OF = (
    "torch", "optuna", "hydra-core", "omegaconf", "sqlalchemy", "alembic", "numpy", "psutil",
    "nvidia-ml-py", "pytest",
)  # fmt: skip


@dataclass
class Spec:
    """What every part needs to know; written once by the orchestrator as JSON."""

    dry_run: bool
    root: str  # the repository (conf/, tests/, hpo/)
    out: str  # where the outputs go (a tune part copies its database there)
    work: str  # scratch: logs, study directories
    presets: list[str]
    batch_sizes: list[int]
    wall_s: float  # each tune run's wall time before it is asked to stop
    drain_s: float  # after the first SIGINT: running trials may finish this long
    stop_s: float  # after the second SIGINT: this long before SIGKILL
    capacity_gib: float  # memory.capacity_gib of the tune runs
    tune_study: str
    tune_args: list[str] = field(default_factory=list)
    sample_interval_s: float = 0.5
    gpu_test_files: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Spec:
        return cls(**json.loads(path.read_text()))


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def child_env(root: str) -> dict[str, str]:
    """The environment of the programs a part runs: the repository first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class PartContext:
    """One part's spec, log and result file."""

    def __init__(self, name: str, spec: Spec, result_path: Path) -> None:
        self.name = name
        self.spec = spec
        self.result_path = result_path
        self.log_path = Path(spec.work) / f"{name}.log"
        self.result: dict[str, Any] = {}
        self.status = "running"
        self.reason: str | None = None

    def say(self, message: str) -> None:
        line = f"gpu-check: [{self.name}] {message}"
        print(line, file=sys.stderr, flush=True)
        with self.log_path.open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def save(self) -> None:
        body = {"status": self.status, "reason": self.reason, "result": self.result}
        atomic_write(self.result_path, json.dumps(body, indent=2, default=str))

    def finish(self, status: str, reason: str | None = None) -> None:
        self.status, self.reason = status, reason
        self.save()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- env ---------------------------------------------------------------------------------------


def run_env(ctx: PartContext) -> None:
    """Machine, versions, and whether CUDA and NVML work (``cuda_problem``: one line, or None)."""
    from importlib import metadata

    import psutil

    r = ctx.result
    r["python"] = f"{platform.python_version()} ({sys.executable})"
    r["platform"] = platform.platform()
    r["cpus"] = os.cpu_count()
    r["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    r["versions"] = {}
    for dist in VERSIONS_OF:
        try:
            r["versions"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            r["versions"][dist] = None
    r["hpo_commit"] = _git_commit(ctx.spec.root)
    ctx.save()
    r |= _nvml_info()
    r |= _torch_cuda_info()
    r["cuda_problem"] = _cuda_problem(r)
    ctx.say(
        f"torch {r.get('torch')} (CUDA {r.get('torch_cuda')}), "
        f"GPU {r.get('gpu_name') or 'none'}, driver {r.get('driver') or 'none'}"
    )
    ctx.finish("ok")


def _git_commit(root: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _nvml_info() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded …
        return {"nvml": None, "nvml_error": f"{type(e).__name__}: {e}"}
    info: dict[str, Any] = {"nvml": True, "driver": _text(pynvml.nvmlSystemGetDriverVersion())}
    try:
        version = int(pynvml.nvmlSystemGetCudaDriverVersion())
        info["cuda_driver"] = f"{version // 1000}.{version % 1000 // 10}"
    except Exception:
        info["cuda_driver"] = None
    info["gpus"] = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        info["gpus"].append(
            {
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "memory_mib": round(int(memory.total) / 2**20),
                "used_mib": round(int(memory.used) / 2**20),
            }
        )
    if info["gpus"]:
        info["gpu_name"] = info["gpus"][0]["name"]
        info["gpu_memory_mib"] = info["gpus"][0]["memory_mib"]
    return info


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _torch_cuda_info() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:
        return {"torch": None, "torch_error": f"{type(e).__name__}: {e}"}
    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    info["cuda_available"] = bool(torch.cuda.is_available())
    if not info["cuda_available"]:
        return info
    try:
        props = torch.cuda.get_device_properties(0)
        info["torch_device"] = props.name
        info["compute_capability"] = f"{props.major}.{props.minor}"
        start = time.monotonic()
        a = torch.randn(512, 512, device="cuda")
        float((a @ a).sum().item())
        info["cuda_first_op_s"] = round(time.monotonic() - start, 2)
    except Exception as e:
        info["cuda_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return info


def _cuda_problem(r: dict[str, Any]) -> str | None:
    """What keeps CUDA from being usable here, in one line; None when it works."""
    if r.get("torch") is None:
        return f"{sys.executable} has no usable torch ({r.get('torch_error')})"
    if r.get("torch_cuda") is None:
        return f"torch {r['torch']} is a CPU-only build (torch.version.cuda is None)"
    if not r.get("cuda_available"):
        driver = r.get("driver") or f"no NVIDIA driver ({r.get('nvml_error')})"
        return f"torch {r['torch']} sees no GPU (torch.cuda.is_available() is False; {driver})"
    if r.get("cuda_error"):
        return f"a first CUDA operation failed: {r['cuda_error']}"
    if not r.get("nvml"):
        return f"CUDA works but NVML does not ({r.get('nvml_error')}): install nvidia-ml-py"
    return None


# -- gpu_tests ---------------------------------------------------------------------------------


def gpu_test_files(root: str) -> list[str]:
    """The test files that hold GPU-marked tests."""
    tests = Path(root) / "tests"
    return sorted(
        str(p.relative_to(root))
        for p in tests.glob("test_*.py")
        if "mark.gpu" in p.read_text(errors="replace")
    )


def run_gpu_tests(ctx: PartContext) -> None:
    """``pytest -m gpu`` on the GPU test files; counts and per-test outcomes from JUnit XML."""
    spec = ctx.spec
    files = spec.gpu_test_files or gpu_test_files(spec.root)
    junit = Path(spec.work) / "gpu_tests.xml"
    cmd = [
        sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-rA",
        "-p", "no:cacheprovider", f"--junitxml={junit}",
    ]  # fmt: skip
    ctx.result["command"] = " ".join(["python", *cmd[1:]])
    ctx.say(f"pytest -m gpu {' '.join(files)}")
    ctx.save()
    with ctx.log_path.open("a") as log:
        rc = subprocess.run(
            cmd, cwd=spec.root, stdout=log, stderr=subprocess.STDOUT, env=child_env(spec.root)
        ).returncode
    ctx.result["returncode"] = rc
    ctx.result |= parse_junit(junit) if junit.exists() else {}
    r = ctx.result
    counts = {k: r.get(k, 0) for k in ("passed", "failed", "errors", "skipped")}
    ctx.say(", ".join(f"{v} {k}" for k, v in counts.items()))
    if counts["failed"] or counts["errors"] or rc not in (0, 5) or not junit.exists():
        ctx.finish("failed", f"pytest exited with {rc}: {counts}")
    elif rc == 5 or not r.get("tests"):
        ctx.finish("failed", "no GPU-marked test was collected")
    elif counts["skipped"] and not counts["passed"]:
        reasons = sorted({t["message"] for t in r["cases"] if t["outcome"] == "skipped"})
        if spec.dry_run:
            ctx.finish("skipped", f"no CUDA: pytest skipped them ({'; '.join(reasons)})")
        else:
            ctx.finish("failed", f"skipped although CUDA works: {'; '.join(reasons)}")
    else:
        ctx.finish("ok")


def parse_junit(path: Path) -> dict[str, Any]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "errors"}.get(tag, tag)
                text = node.get("message") or ""
                message = text.splitlines()[0][:300] if text.strip() else ""
                break
        cases.append(
            {
                "name": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "time_s": round(float(case.get("time") or 0), 2),
                "message": message,
            }
        )
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "errors")}
    counts["skipped"] = sum(c["outcome"] == "skipped" for c in cases)
    return {"tests": len(cases), **counts, "cases": cases}


# -- entry point -------------------------------------------------------------------------------


def _runner(name: str) -> Callable[[PartContext], None]:
    if name == "env":
        return run_env
    if name == "gpu_tests":
        return run_gpu_tests
    if name == "presets":
        from bench._gpu_presets import run_presets

        return run_presets
    if name in ("tune_par2", "tune_auto"):
        from bench._gpu_tune import run_tune

        return run_tune
    if name == "cap_overrun":
        from bench._gpu_cap import run_part

        return run_part
    raise SystemExit(f"unknown part {name!r}; parts: {', '.join(PARTS)}")


def main(argv: list[str] | None = None) -> int:
    name, spec_path, result_path = argv if argv is not None else sys.argv[1:4]
    ctx = PartContext(name, Spec.load(Path(spec_path)), Path(result_path))
    logging.basicConfig(
        filename=ctx.log_path, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    ctx.save()
    try:
        _runner(name)(ctx)
    except Exception as e:
        with ctx.log_path.open("a") as log:
            traceback.print_exc(file=log)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        ctx.finish("failed", f"{type(e).__name__}: {first}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
