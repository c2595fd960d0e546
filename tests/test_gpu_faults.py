"""On a real NVIDIA GPU: a device-side assert and an OOM are each contained to one trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import query, run_hpo, user_attrs


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="needs CUDA")]


def test_device_side_assert_and_oom_are_contained_and_the_study_goes_on(
    tmp_path: Path, toy_args: list[str]
) -> None:
    result = run_hpo(
        tmp_path,
        *toy_args,
        "study.objective=tests.gpu_objective:objective",
        "study.device=cuda",
        "par=1",
        "study.n_trials=3",
        "pruner=none",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    db = tmp_path / "_optuna" / "toy.db"
    states = dict(query(db, "select number, state from trials"))
    attrs = {n: user_attrs(db, n) for n in states}
    assert attrs[0]["end_reason"] == "cuda_error" and "device-side assert" in attrs[0]["error"]
    assert attrs[1]["retry_of"] == 0 and states[1] == "COMPLETE"
    assert attrs[1]["worker_pid"] != attrs[0]["worker_pid"], "the poisoned worker was replaced"
    assert attrs[2]["end_reason"] == "oom" and states[2] == "FAIL"
    assert not any(a.get("retry_of") == 2 for a in attrs.values()), "an OOM is not retried"
    assert attrs[3]["worker_pid"] == attrs[2]["worker_pid"], "an OOM does not poison the worker"
    assert sum(state == "COMPLETE" for state in states.values()) == 3
    assert all("peak_vram_mib" in a for n, a in attrs.items() if states[n] == "COMPLETE")
