"""Learning curves of simulated workloads: the plain exponential unchanged, and the shapes real
studies have (noise, plateau, overfitting, a late bloomer) with a known true optimum."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from hpo.errors import ConfigError
from hpo.sim.workload import Curve, load_workload

WORKLOADS = Path(__file__).resolve().parent.parent / "bench" / "workloads"
BLOOM, NOISY = str(WORKLOADS / "bloom24.yaml"), str(WORKLOADS / "noisy24.yaml")


def _old_value(curve: Curve, params: dict[str, object], epoch: int) -> float:
    """The curve before it had shapes: ceiling × lr fit × (1 − e^(−rate·epoch)), rounded."""
    decades = math.log10(float(params["lr"]) / curve.best_lr)  # type: ignore[arg-type]
    fit = math.exp(-(decades**2) / (2 * curve.lr_width**2))
    return round(curve.ceiling * fit * (1.0 - math.exp(-curve.rate * epoch)), 4)


EXISTING = ["criteria24", *(str(WORKLOADS / f"{n}.yaml") for n in ("lm80_noisy", "vit24_noisy"))]
EXISTING += [str(WORKLOADS / f"{n}.yaml") for n in ("diff48_noisy", "seg24_spiky")]


@pytest.mark.parametrize("name", EXISTING)
def test_existing_workloads_keep_their_curves(name: str) -> None:
    """Workloads written before the curve shapes report exactly what they reported then."""
    wl = load_workload(name)
    for family, fam in wl.families.items():
        for lr in (1e-5, 3e-4, 1e-3, 1e-2):
            params = {wl.family_param: family, "lr": lr}
            for epoch in range(1, wl.epochs + 1):
                expected = _old_value(fam.curve, params, epoch)
                assert fam.curve.value(params, epoch, seed=epoch) == expected


def test_noise_is_seeded_per_trial_and_sized_as_declared() -> None:
    curve = Curve(0.9, rate=0.3, noise=0.01)
    params = {"lr": 1e-3}
    assert curve.value(params, 5, seed=7) == curve.value(params, 5, seed=7)
    assert curve.value(params, 5) == round(curve.clean(params, 5), 4)  # no seed: no noise
    reports = [curve.value(params, 12, seed=s) / curve.clean(params, 12) - 1 for s in range(400)]
    assert statistics.pstdev(reports) == pytest.approx(0.01, rel=0.15)
    assert len({curve.value(params, 12, seed=s) for s in range(20)}) > 15


def test_plateau_overfitting_and_delay() -> None:
    params = {"lr": 1e-3}
    flat = Curve(0.9, rate=0.5, plateau_epoch=4)
    assert flat.clean(params, 4) == flat.clean(params, 12) > flat.clean(params, 3)
    over = Curve(0.9, rate=0.5, peak_epoch=6, overfit=0.02)
    assert over.clean(params, 8) == pytest.approx(over.clean(params, 6) * 0.96)
    assert over.best(params, 12) == over.clean(params, 6)
    late = Curve(0.9, rate=0.5, floor=0.1, delay=2)
    assert late.clean(params, 1) == late.clean(params, 2) == 0.1 < late.clean(params, 3)


def test_late_bloomer_crosses_the_fast_family() -> None:
    wl = load_workload(BLOOM)
    fast, late = wl.families["base"].curve, wl.families["large"].curve
    pf, pl = {"model": "base", "lr": fast.best_lr}, {"model": "large", "lr": late.best_lr}
    assert late.clean(pl, 3) < 0.75 * fast.clean(pf, 3)  # ranked at epoch 3, it loses
    assert late.clean(pl, 7) > fast.clean(pf, 7)  # ... and it has overtaken by epoch 7
    assert late.best(pl, wl.epochs) > fast.best(pf, wl.epochs) + 0.05


@pytest.mark.parametrize(("path", "optimum"), [(BLOOM, 0.9450), (NOISY, 0.8230)])
def test_optimum_is_the_best_true_value_over_the_space(path: str, optimum: float) -> None:
    wl = load_workload(path)
    assert wl.optimum() == pytest.approx(optimum, abs=1e-4)
    grid = [10 ** (-5 + 3 * i / 300) for i in range(301)]
    brute = max(wl.true_value({wl.family_param: f, "lr": lr}) for f in wl.families for lr in grid)
    assert brute <= wl.optimum() + 1e-12
    assert brute == pytest.approx(wl.optimum(), abs=1e-4)


def test_noisy_workload_reports_noise_near_one_percent() -> None:
    wl = load_workload(NOISY)
    assert {f.curve.noise for f in wl.families.values()} == {0.01}


def test_bad_curve_is_one_line(tmp_path: Path) -> None:
    text = Path(NOISY).read_text().replace("noise: 0.01}", "noise: -0.1}", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"families\.small\.curve: .*noise in \[0, 0\.5\).*-0\.1"):
        load_workload(str(path))
