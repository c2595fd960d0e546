"""bench.gpu_check: the dry run (no GPU) proves the plumbing, budgets and output format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["env", "gpu_tests", "presets", "tune_par2", "tune_auto", "cap_overrun"]


def gpu_check(*args: str, timeout: float = 190) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def test_dry_run_records_every_part_and_the_one_over_its_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = gpu_check("--dry-run", "--out", str(out), "--budget", "tune_auto=1")

    assert result.returncode == 1, result.stderr  # one part timed out
    assert "gpu-check: [presets]" in result.stderr  # progress while it runs
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and report["ok"] is False
    assert report["machine"]["torch"] and report["machine"]["cpus"]
    parts: dict[str, Any] = report["parts"]
    assert list(parts) == PARTS
    for name, part in parts.items():
        assert part["status"] in ("ok", "skipped", "failed", "timed_out"), name
        assert isinstance(part["elapsed_s"], float) and part["elapsed_s"] >= 0, name
        assert part["budget_s"] > 0 and "result" in part, name
    assert report["elapsed_s"] < report["total_budget_s"]

    assert parts["env"]["status"] == "ok"
    tests = parts["gpu_tests"]
    assert tests["status"] == ("ok" if _cuda() else "skipped"), tests["reason"]
    assert tests["result"]["tests"] >= 1 and tests["result"]["failed"] == 0

    presets = parts["presets"]
    assert presets["status"] == "ok", presets.get("log_tail")
    configs = presets["result"]["configs"]
    assert {(c["model"], c["batch_size"]) for c in configs} == {
        (m, b) for m in ("tiny", "small") for b in (8, 16, 32)
    }
    assert all(c["peak_rss_rise_mib"] > 0 for c in configs)
    assert "peak_vram_mib" not in configs[0]  # no fake VRAM figures without CUDA
    assert set(configs[-1]["estimates"]) == {"cold_prior", "cold_calibrated", "warm"}
    assert presets["result"]["summary"]["cold_prior"]["n"] == len(configs)
    assert "context" in presets["result"]["skipped_checks"]

    tune = parts["tune_par2"]
    assert tune["status"] == "ok", tune.get("log_tail")
    assert tune["result"]["trials"] >= 1 and tune["result"]["trials_per_hour"] >= 0
    assert tune["result"]["devices"]["sim:0"]["samples"] > 0
    assert tune["result"]["by_state"].get("RUNNING", 0) == 0
    assert (out / "tune_par2.db").exists()

    auto = parts["tune_auto"]
    assert auto["status"] == "timed_out" and "budget of 1 s" in auto["reason"]
    assert auto["budget_s"] == 1.0 and auto["elapsed_s"] < 15

    cap = parts["cap_overrun"]  # safe overcommit: only the trial over its cap fails, re-queued
    assert cap["status"] == "ok", (cap.get("reason"), cap.get("log_tail"))
    assert [reason for _, reason in cap["result"]["ends"]].count("cap_exceeded") == 1
    assert "oom" not in [reason for _, reason in cap["result"]["ends"]]
    assert cap["result"]["cap_need_mib"] >= cap["result"]["over_mib"] * 0.9

    md = (out / "gpu_check.md").read_text()
    assert "| part | status | time (budget) | result |" in md
    for name in PARTS:
        assert f"| {name} | {parts[name]['status']} |" in md
    assert "| preset | batch | peak_rss_rise_mib |" in md
    assert "| 2 |" in md  # the par=2 row of the tune table
    assert "===== presets =====" in (out / "gpu_check.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "nope=3"], "--budget must be PART=SECONDS"),
        (["--budget", "env=-1"], "--budget env must be > 0"),
        (["--parts", "env,gpu"], "--parts takes names from"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = gpu_check("--dry-run", "--out", str(tmp_path), *args, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and not (tmp_path / "gpu_check.json").exists()


@pytest.mark.skipif(_cuda(), reason="CUDA works here")
def test_without_cuda_and_without_dry_run_it_says_what_is_missing(tmp_path: Path) -> None:
    result = gpu_check("--out", str(tmp_path), "--parts", "env,gpu_tests", timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # one line says what is missing, nothing else
    assert lines[0].startswith("gpu-check: CUDA is not usable: ") and "--dry-run" in lines[0]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["parts"]) == ["env"]  # nothing ran after it
