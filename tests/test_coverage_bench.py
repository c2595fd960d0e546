"""bench.coverage: the gate replayed over many trial orders of a workload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import coverage

DIFF48 = str(Path(__file__).resolve().parents[1] / "bench" / "workloads" / "diff48_noisy.yaml")


def test_it_replays_orders_and_reports_how_honest_the_upper_estimate_was(tmp_path: Path) -> None:
    out = tmp_path / "coverage.json"
    argv = ["--workload", DIFF48, "--trials", "40", "--seeds", "2", "--json", str(out)]
    assert coverage.main(argv) == 0
    row = json.loads(out.read_text())["diff48_noisy"]
    assert row["checked"] > 0 and 0.0 <= row["over_upper_frac"] <= 1.0
    # each order starts with nothing known of its three model families: each one's first
    # trial runs alone, so at least six did
    assert row["alone_fits"] + row["alone_needed"] >= 6
    assert row["n_new"] + row["n_repeat"] == row["checked"]
    assert row["oom_of_fitting"] <= row["oom"]


def test_the_same_seed_replays_the_same_order() -> None:
    from hpo.sim import load_workload

    workload, settings = load_workload(DIFF48), coverage.settings_for(DIFF48)
    first = coverage.replay(workload, settings, 30, seed=3, lag=4, window=8)
    assert first == coverage.replay(workload, settings, 30, seed=3, lag=4, window=8)


@pytest.mark.parametrize(
    "argv",
    [["--workload", "no/such/workload.yaml"], ["--workload", DIFF48, "--seeds", "0"]],
)
def test_bad_input_exits_2_and_writes_nothing(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit) as stopped:
        code = coverage.main([*argv, "--json", str(out)])
        raise SystemExit(code)
    assert stopped.value.code == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error" in err[-1]
