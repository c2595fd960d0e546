"""bench.estimator: part 2 (the criteria presets traced and measured on this CPU) runs by
default, whichever path names the default workload."""

from __future__ import annotations

from pathlib import Path

from bench import estimator

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_workload_is_known_by_its_link_and_its_target() -> None:
    link = ROOT / "bench" / "workloads" / "criteria24.yaml"
    assert link.is_symlink()  # the case that once skipped part 2 silently
    assert estimator.is_default_workload(link)
    assert estimator.is_default_workload(ROOT / "hpo" / "sim" / "workloads" / "criteria24.yaml")
    assert estimator.is_default_workload(estimator.DEFAULT_WORKLOAD)
    assert not estimator.is_default_workload(ROOT / "bench" / "workloads" / "lm80_noisy.yaml")
