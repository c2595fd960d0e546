"""Packing with the real supervisor: simulated cards, worker processes, SQLite.

Never over-commit a card while trials start and end side by side; the per-process cap turns an
under-estimate into one ``oom`` trial; several cards; par=auto; and the benchmark's quick form.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.config import Settings
from hpo.contract import Decision
from hpo.devices import GIB, MIB, SimulatedGpu, open_devices
from hpo.memory import Estimate, EstimateSource, Verdict, build_gate
from hpo.sim import load_workload
from hpo.supervisor import Supervisor
from tests.conftest import ROOT, run_hpo, settings_of

from .test_memory_gate import _trials

WORKLOAD = ROOT / "bench" / "workloads" / "criteria24.yaml"
NO_SPLIT = ("study.memory.accumulation=false",)  # an OOM is not retried with micro-batches


def sim_cfg(tmp_path: Path, *extra: str) -> Settings:
    return settings_of(
        *[
            "study=simulated",
            f"storage.dir={tmp_path / '_optuna'}",
            "study.time_scale=0.004",
            "sampler=random",
            "sampler.seed=1",
            "log_level=WARNING",
            *extra,
        ]
    )


def sim_study(tmp_path: Path) -> optuna.Study:
    """The study ``sim_cfg`` runs, created beforehand so that trials can be enqueued."""
    (tmp_path / "_optuna").mkdir()
    return optuna.create_study(
        study_name="simulated",
        storage=f"sqlite:///{tmp_path / '_optuna' / 'simulated.db'}",
        direction="maximize",
    )


class Ledger(threading.Thread):
    """Samples every card's ledger: the most held at once, and by how many processes."""

    def __init__(self, cards: list[SimulatedGpu]) -> None:
        super().__init__(daemon=True)
        self.cards, self.max_used, self.max_trials = cards, 0, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.005):
            for card in self.cards:
                snap = card.snapshot()
                self.max_used = max(self.max_used, snap.used_bytes or 0)
            with_work = sum(e["bytes"] > card.context_bytes for e in _entries(self.cards[0]))
            self.max_trials = max(self.max_trials, with_work)


def _entries(card: SimulatedGpu) -> list[dict[str, Any]]:
    with card._locked() as entries:
        return list(entries.values())


class TruthGate:
    """The study's gate, but estimating every trial by the workload's truth, except
    ``lie_about`` (a model family) whose estimate is ``lie_gib`` instead."""

    def __init__(self, inner: Any, lie_about: str | None = None, lie_gib: float = 0.0) -> None:
        self._inner, self._lie, self._lie_gib = inner, lie_about, lie_gib
        self._wl = load_workload(str(WORKLOAD))

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def check(self, params: dict[str, Any]) -> Verdict:
        budget = self._inner.budget_bytes
        if params["model"] == self._lie:
            upper = self._lie_gib * GIB
        else:
            upper = self._wl.footprint_bytes(params) * (1 + self._wl.noise_frac)
        if upper > budget:
            return Verdict(Decision.PRE_PRUNE, "cannot fit", None, budget)
        return Verdict(
            Decision.ADMIT, "truth", Estimate(upper, upper, EstimateSource.KNOWN, 3), budget
        )


def test_a_packed_card_is_never_over_committed_and_runs_trials_side_by_side(
    tmp_path: Path,
) -> None:
    cfg = sim_cfg(tmp_path, "par=6", "study.n_trials=30", "study.time_scale=0.02")
    cards = [d for d in open_devices(cfg.devices) if isinstance(d, SimulatedGpu)]
    ledger = Ledger(cards)
    ledger.start()
    try:
        summary = Supervisor(cfg, poll_s=0.05).run()
    finally:
        ledger.halt.set()
        ledger.join()
    assert summary.finished == 30
    trials = _trials(tmp_path / "_optuna" / "simulated.db")
    # A trial may only run out of memory at its own cap (alone, while nothing is known of
    # its family), never because the card was over-committed.
    assert all("per-process limit" in t["error"] for t in trials if t["end_reason"] == "oom")
    assert ledger.max_used <= cards[0].capacity_bytes
    assert ledger.max_trials >= 3  # packing happened: several trials held memory at once
    ran = [t for t in trials if t["end_reason"] in ("complete", "pruned")]
    assert all("admit_wait_s" in t and t["vram_reserved_mib"] > 512 for t in ran)


@pytest.mark.parametrize("overcommit", [False, True])
def test_the_cap_turns_an_under_estimate_into_one_failure_and_spares_the_neighbours(
    tmp_path: Path, overcommit: bool
) -> None:
    """Reserving upper estimates, the overrun is an ``oom``; under safe overcommit a
    ``cap_exceeded``, re-queued at once to reserve what it measured."""
    mode = f"memory.overcommit={str(overcommit).lower()}"
    cfg = sim_cfg(tmp_path, "par=4", "study.n_trials=6", "study.epochs=4", mode, *NO_SPLIT)
    study = sim_study(tmp_path)
    # large@32 holds ~19.9 GiB; admission is told 10 GiB, so three small trials join it.
    # Without the cap the card would overflow and the neighbours would die with it.
    study.enqueue_trial({"model": "large", "batch_size": 32, "lr": 1e-3})
    for _ in range(6):
        study.enqueue_trial({"model": "small", "batch_size": 64, "lr": 1e-3})

    def gate(cfg: Any, devices: list[Any]) -> Any:
        return TruthGate(build_gate(cfg, devices), lie_about="large", lie_gib=10.0)

    Supervisor(cfg, poll_s=0.05, gate_factory=gate).run()
    trials = _trials(tmp_path / "_optuna" / "simulated.db")
    large = [t for t in trials if t["number"] == 0][0]
    assert large["end_reason"] == ("cap_exceeded" if overcommit else "oom")
    assert "per-process limit" in large["error"]
    assert large["peak_vram_mib"] < 12 * 1024  # stopped at its cap, not at the card's end
    requeued = [t for t in trials if t.get("retry_of") == 0]
    others = [t for t in trials if t["number"] != 0 and t not in requeued]
    assert [t["end_reason"] for t in others] == ["complete"] * len(others) and others
    if overcommit:  # re-queued at once, needing what it measured (its peak and the request)
        (again,) = requeued
        assert again["retry_kind"] == "cap_exceeded"
        assert again["cap_need_mib"] > 19 * 1024
        assert again.get("end_reason") in (None, "complete")  # it may still wait at the end
    else:
        assert not requeued
    cap_mib = (10 * GIB + 0.05 * 24 * GIB) / MIB
    assert large["vram_reserved_mib"] == pytest.approx(10 * 1024, abs=1)
    assert large["peak_vram_mib"] <= cap_mib


def test_trials_asked_before_their_model_was_measured_are_estimated_again(
    tmp_path: Path,
) -> None:
    """base@16 trials asked while the first base trial runs alone (nothing known yet) wait
    with no estimate; once it is measured they are estimated again and run side by side,
    instead of each waiting to run alone."""
    cfg = sim_cfg(tmp_path, "par=4", "study.n_trials=4", "study.time_scale=0.02")
    study = sim_study(tmp_path)
    for bs in (32, 16, 16, 16):
        study.enqueue_trial({"model": "base", "batch_size": bs, "lr": 1e-3})
    Supervisor(cfg, poll_s=0.05).run()
    trials = study.get_trials(deepcopy=False)
    assert [t.user_attrs["end_reason"] for t in trials] == ["complete"] * 4
    first, later = trials[0], trials[1:]
    assert "est_source" not in first.user_attrs  # nothing was known: it ran alone
    for trial in later:
        assert trial.user_attrs["admit_wait_s"] > 0  # asked before the first one ended
        # from the first once measured, or (under safe overcommit, which lets them start
        # sooner) from it once it settled, as the gate estimates a group's running trials
        source = trial.user_attrs["est_source"].removesuffix("+settled")
        assert source in ("one-point", "fit", "settled")
        # not the whole card: one measured size, noise unknown yet (a generous 10 %)
        assert trial.user_attrs["vram_reserved_mib"] < 13 * 1024
    spans = sorted((t.datetime_start, t.datetime_complete) for t in later)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))  # side by side


def test_two_cards_share_the_trials(tmp_path: Path) -> None:
    text = WORKLOAD.read_text().replace("count: 1 ", "count: 2 ")
    workload = tmp_path / "two.yaml"
    workload.write_text(text.replace("capacity_gib: 24", "capacity_gib: 16"))
    proc = run_hpo(
        tmp_path,
        "study=simulated",
        f"study.workload={workload}",
        f"storage.dir={tmp_path / '_optuna'}",
        "study.time_scale=0.004",
        "study.n_trials=24",
        "par=auto",
        "sampler=random",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "par=auto -> " in proc.stderr + proc.stdout
    trials = _trials(tmp_path / "_optuna" / "simulated.db")
    devices = {t.get("device") for t in trials if t["end_reason"] in ("complete", "pruned")}
    assert devices == {"sim:0", "sim:1"}
    # What cannot fit a 16 GiB card may run out of memory at its own cap while nothing is
    # known of its family; no trial ran out because a card was over-committed.
    assert all("per-process limit" in t["error"] for t in trials if t["end_reason"] == "oom")


@pytest.mark.parametrize("value", ["0", "two", "1.5"])
def test_a_bad_par_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    proc = run_hpo(tmp_path, "study=toy", f"storage.dir={tmp_path / '_optuna'}", f"par={value}")
    assert proc.returncode == 2
    assert "par must be an integer >= 1 or 'auto'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "_optuna").exists()


def test_the_packing_benchmark_quick_form(tmp_path: Path) -> None:
    from bench import packing

    out = tmp_path / "packing.json"
    code = packing.main(
        [
            "--trials",
            "12",
            "--time-scale",
            "0.004",
            "--policies",
            "par1,par3,aware,oracle",
            "--json",
            str(out),
            "--keep",
            str(tmp_path / "kept"),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    # the same --keep again would continue those studies and measure both runs as one
    again = tmp_path / "again.json"
    argv = ["--trials", "12", "--policies", "aware", "--json", str(again)]
    assert packing.main([*argv, "--keep", str(tmp_path / "kept")]) == 2
    assert not again.exists()
    for name in ("par1", "par3", "aware", "oracle"):
        row = result["policies"][name]
        assert set(row) >= {
            "trials_per_hour",
            "oom_crashes",
            "useful_gpu_frac",
            "gpu_busy_frac",
            "mem_packing_frac",
            "wall_s",
        }
        assert 0 < row["useful_gpu_frac"] <= 1.0 + 1e-6
    # hpo's own gate, no ground truth: a configuration that cannot fit may be met before its
    # model's memory is known (one size measured, no prior) and end as one OOM at its own cap;
    # never one that fits, and nothing that fits is pre-pruned.
    aware = result["policies"]["aware"]
    assert aware["oom_of_fitting"] == 0 and aware["wrongly_pre_pruned"] == 0
    assert aware["over_upper_frac"] <= 0.1 and 0 <= aware["over_upper_max"] <= 0.05
    assert result["policies"]["oracle"]["oom_crashes"] == 0
    assert result["best_safe_fixed_par"] in (1, 3)
    assert result["aware_vs_oracle"] is not None
    # Where the time goes: the bound and the overhead-free replay of the same configurations.
    from bench import packing_bound

    for name in ("par1", "aware"):  # aware runs a batch too large whole as micro-batches
        db = tmp_path / "kept" / name / f"packing-{name}.db"
        argv = ["--db", str(db), "--study", f"packing-{name}", "--time-scale", "0.004"]
        bound = packing_bound.measure(packing_bound.parse_args(argv))
        assert bound["trials"] == result["policies"][name]["useful_trials"]
        assert 0 < bound["bound_s"] <= bound["replay_s"] + 1e-9
        assert bound["replay_s"] <= bound["work_s"] + bound["setup_s"] + 1e-6
        assert bound["gpu_s"] <= bound["bound_s"] + 1e-9


NEGATIVE_PRODUCT = """
name: negative
device: {capacity_gib: 24, context_gib: 0.5}
family_param: model
epochs: 2
memory: {scaling: [batch_size, seq]}
space:
  model: {type: categorical, choices: [m]}
  batch_size: {type: categorical, choices: [8, 16, 32]}
  seq: {type: categorical, choices: [64, 128, 256]}
families:
  m:
    peak_gib:  # the product term's negative coefficient drives large configurations below 0
      - {coef: 16.0}
      - {coef: 0.05, powers: {batch_size: 1}}
      - {coef: -0.004, powers: {batch_size: 1, seq: 1}}
    epoch_s: 1.0
    setup_s: 0.5
    demand: {base: %(demand)s}
    curve: {ceiling: 0.9}
"""


@pytest.mark.parametrize("demand", [0.05, 0.7], ids=["memory-bound", "compute-bound"])
def test_the_replay_never_beats_its_own_bound_on_any_workload(
    tmp_path: Path, demand: float
) -> None:
    """Memory is never below zero whatever the terms (a negative reservation once let the
    replay run big trials side by side: 6 s against a 75 s bound), and compute counts: trials
    of demand 0.7 cannot run side by side at full speed."""
    from bench import packing_bound
    from hpo.config.space import build_space

    workload = tmp_path / "negative.yaml"
    workload.write_text(NEGATIVE_PRODUCT % {"demand": demand})
    study = sim_study(tmp_path)
    space = load_workload(str(workload)).space
    dists = build_space({k: dict(v) for k, v in space.items()})
    for bs, seq in [(b, s) for b in (8, 16, 32) for s in (64, 128, 256)] * 2:
        params = {"model": "m", "batch_size": bs, "seq": seq}
        trial = optuna.trial.create_trial(
            params=params,
            distributions={k: dists[k] for k in params},
            value=0.5,
            intermediate_values={1: 0.4, 2: 0.5},
            user_attrs={"end_reason": "complete"},
        )
        study.add_trial(trial)
    db = tmp_path / "_optuna" / "simulated.db"
    argv = ["--db", str(db), "--study", "simulated", "--workload", str(workload)]
    bound = packing_bound.measure(packing_bound.parse_args([*argv, "--time-scale", "1"]))
    assert bound["trials"] == 18
    assert bound["gpu_s"] == pytest.approx(18 * 2 * demand)
    assert bound["bound_s"] == max(bound["gpu_s"], bound["memory_bound_s"])
    assert bound["bound_s"] <= bound["replay_s"] + 1e-9
    wl = load_workload(str(workload))  # (32, 256): 16 + 1.6 - 32.8 GiB, no memory but context
    assert packing_bound.footprint_gib(wl, {"model": "m", "batch_size": 32, "seq": 256}) == 0.5


def test_the_packing_bound_of_trials_that_cannot_share() -> None:
    """Footprints of 20 and 15 GiB on a 22.8 GiB budget run one after the other (3 s); beside
    the 15 GiB one, 7.8 GiB × 1 s hold the 5 GiB trials' 10 GiB·s but 2.2; beside the 20 GiB
    one nothing fits."""
    from bench.packing_bound import lower_bound

    big_s, bound_s = lower_bound([(20, 2.0), (15, 1.0), (5, 1.0), (5, 1.0)], 22.8)
    assert big_s == 3.0
    assert bound_s == pytest.approx(3.0 + 2.2 / 22.8)


def test_the_packing_bound_rejects_a_file_without_the_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import packing_bound

    study = sim_study(tmp_path)  # an Optuna database with no trial
    db = tmp_path / "_optuna" / "simulated.db"
    assert packing_bound.main(["--db", str(db), "--study", study.study_name]) == 2
    assert "no trial of study 'simulated' ran to a result" in capsys.readouterr().err
