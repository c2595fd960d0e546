"""The memory estimator: learning from measurements, censored OOMs, monotonicity, the prior."""

from __future__ import annotations

import itertools

import pytest

from hpo.memory import MemoryEstimator, Observation, Prior
from hpo.memory.oom import needed_lower_bound, requested_bytes

MIB = 2**20


def truth(model: str, bs: int) -> float:
    base = {"small": 1500, "large": 6000}[model]
    per = {"small": 60, "large": 420}[model]
    return (base + per * bs) * MIB


def _estimator(prior: Prior | None = None) -> MemoryEstimator:
    return MemoryEstimator(["batch_size"], ["model"], prior, context_bytes=512 * MIB)


def test_nothing_known_gives_no_estimate() -> None:
    assert _estimator().predict({"model": "small", "batch_size": 8}) is None


def test_learns_an_affine_family_from_two_sizes() -> None:
    est = _estimator()
    for bs in (8, 16, 8, 16):
        est.observe(Observation({"model": "large", "batch_size": bs}, truth("large", bs)))
    e = est.predict({"model": "large", "batch_size": 32})
    assert e is not None and e.source == "fit" and e.n_measured == 4
    assert e.point_bytes == pytest.approx(truth("large", 32), rel=1e-6)
    assert e.upper_bytes > e.point_bytes  # extrapolating: a margin above the fit
    assert est.predict({"model": "small", "batch_size": 8}) is None  # other group unknown


def test_one_measurement_extrapolates_on_the_safe_side() -> None:
    """Memory affine in the batch with a non-negative intercept grows at most in proportion:
    from one size, the upper bound is above that top, the point halfway from the measured
    value to it (the top as point made every larger batch look as if it could not fit)."""
    est = _estimator()
    y16 = truth("small", 16)
    est.observe(Observation({"model": "small", "batch_size": 16}, y16))
    e = est.predict({"model": "small", "batch_size": 64})
    assert e is not None and e.source == "one-point"
    assert e.upper_bytes > 4 * y16 >= truth("small", 64)
    assert e.point_bytes == pytest.approx((y16 + 4 * y16) / 2)
    smaller = est.predict({"model": "small", "batch_size": 8})  # below it: flat, and safe
    assert smaller is not None and smaller.point_bytes == pytest.approx(y16)


def test_oom_is_a_lower_bound_for_that_size_and_every_larger_one() -> None:
    est = _estimator()
    est.observe(Observation({"model": "large", "batch_size": 8}, truth("large", 8)))
    bound = 30000 * MIB
    est.observe(Observation({"model": "large", "batch_size": 32}, bound, censored=True))
    for bs in (32, 64):
        e = est.predict({"model": "large", "batch_size": bs})
        assert e is not None and e.point_bytes >= bound and e.upper_bytes > bound
    e16 = est.predict({"model": "large", "batch_size": 16})
    assert e16 is not None and e16.point_bytes < bound


def test_estimates_are_monotonic_in_the_scaling_parameter() -> None:
    prior = Prior(("model",), {("small",): [(8, 10 * MIB), (64, 40 * MIB)]})
    est = _estimator(prior)
    observations = [("small", 8, 1900), ("small", 64, 5400), ("small", 16, 2500)]
    steps = [[]] + [observations[:i] for i in range(1, 4)]
    for seen in steps:
        for model, bs, mib in seen:
            est.observe(Observation({"model": model, "batch_size": bs}, mib * MIB))
        points = [est.predict({"model": "small", "batch_size": bs}) for bs in (8, 16, 32, 64)]
        uppers = [p.upper_bytes for p in points if p is not None]
        assert uppers == sorted(uppers), f"not monotonic after {len(seen)} observations"


def test_cold_prior_adds_context_and_calibration_learns_factor_and_overhead() -> None:
    traced = {
        ("small",): [(8, 100 * MIB), (64, 400 * MIB)],
        ("large",): [(8, 1000 * MIB), (64, 3000 * MIB)],
    }
    est = _estimator(Prior(("model",), traced))
    cold = est.predict({"model": "large", "batch_size": 8})
    assert cold is not None and cold.source == "cold-prior"
    assert cold.point_bytes == pytest.approx(1512 * MIB)
    # measured = 300 MiB + 0.5 × traced on this device (fused kernels, another context)
    for bs, tr in ((8, 100), (64, 400)):
        est.observe(Observation({"model": "small", "batch_size": bs}, (300 + 0.5 * tr) * MIB))
    warm_prior = est.predict({"model": "large", "batch_size": 64})
    assert warm_prior is not None and warm_prior.source == "calibrated-prior"
    assert warm_prior.point_bytes == pytest.approx((300 + 1500) * MIB, rel=1e-6)


def test_calibration_keeps_state_at_its_size_and_scales_the_rest() -> None:
    """measured = context + state + factor × (traced − state): a family whose traced peak is
    mostly parameters and optimizer state is not scaled by the activations' factor."""
    traced = {
        ("tiny",): [(8, 10 * MIB), (64, 50 * MIB)],
        ("small",): [(8, 40 * MIB), (64, 200 * MIB)],
        ("large",): [(8, 1200 * MIB), (64, 2000 * MIB)],
    }
    state = {("tiny",): 2 * MIB, ("small",): 8 * MIB, ("large",): 1000 * MIB}
    est = _estimator(Prior(("model",), traced, state))

    def measured(model: str, bs: int) -> float:
        st, (lo, hi) = state[(model,)], traced[(model,)]
        dynamic = lo[1] + (hi[1] - lo[1]) * (bs - 8) / 56 - st
        return 90 * MIB + st + 1.6 * dynamic

    for model, bs in itertools.product(("tiny", "small"), (8, 16, 32, 64)):
        est.observe(Observation({"model": model, "batch_size": bs}, measured(model, bs)))
    for bs in (8, 64):
        cold = est.predict({"model": "large", "batch_size": bs})
        assert cold is not None and cold.source == "calibrated-prior"
        assert cold.point_bytes == pytest.approx(measured("large", bs), rel=1e-6)
        assert cold.upper_bytes >= cold.point_bytes


def test_extrapolation_takes_the_safer_of_fitted_and_prior_slope_and_widens_the_bound() -> None:
    """A convex family measured at 8–32: the calibrated prior's steeper slope carries it to 64,
    and the upper bound widens with the distance beyond the measured sizes, either way."""
    traced = {("a",): [(8, 100 * MIB), (64, 1780 * MIB)], ("b",): [(8, 100 * MIB), (64, 660 * MIB)]}
    est = _estimator(Prior(("model",), traced))
    for bs in (8, 16, 32, 64):  # b: measured = traced exactly (no context on this device)
        est.observe(Observation({"model": "b", "batch_size": bs}, (90 + 10 * bs) * MIB))
    for bs, y in ((8, 260), (16, 420), (32, 760)):  # a: about 21 MiB per sample; traced 30
        est.observe(Observation({"model": "a", "batch_size": bs}, y * MIB))
    up = est.predict({"model": "a", "batch_size": 64})
    assert up is not None and up.source == "fit"
    line_at_64 = 1428 * MIB  # what the fitted line alone says (20.9 MiB per sample)
    assert up.point_bytes > line_at_64 * 1.1
    inside = est.predict({"model": "a", "batch_size": 16})
    assert inside is not None and up.upper_bytes / up.point_bytes > (
        inside.upper_bytes / inside.point_bytes
    )


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.19 GiB total)", 20 * MIB),
        ("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has", int(2.5 * 2**30)),
        (
            "CUDA out of memory (simulated sim:0). Tried to allocate 3118.75 MiB; …",
            int(3118.75 * MIB),
        ),
        ("some other error", None),
        (None, None),
    ],
)
def test_oom_messages_give_the_failed_request(message: str | None, expected: int | None) -> None:
    assert requested_bytes(message) == expected


def test_oom_bound_is_peak_plus_request() -> None:
    assert needed_lower_bound(1000.0, "Tried to allocate 1.00 KiB") == 2024.0
    assert needed_lower_bound(None, "Tried to allocate 1.00 KiB") is None


def test_grid_of_the_prior_covers_every_group_at_both_corners() -> None:
    from hpo.memory.prior import grid_points

    space = {
        "model": {"type": "categorical", "choices": ["a", "b"]},
        "batch_size": {"type": "categorical", "choices": [16, 8, 64]},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    points = grid_points(space, ["batch_size"], ["model"])
    assert {(p["model"], p["batch_size"]) for p in points} == set(
        itertools.product(["a", "b"], [8, 64])
    )
    assert all(p["lr"] == pytest.approx(1e-3) for p in points)


def test_the_version_changes_on_new_sizes_and_bounds_and_every_twentieth_repeat() -> None:
    """What the supervisor sends the workers' copies again for: not every repeated peak of a
    long study (pickling the whole estimator per trial grew with the study)."""
    est = _estimator()
    versions = []
    for bs in (8, 16, 32):  # new sizes: each one
        est.observe(Observation({"model": "small", "batch_size": bs}, truth("small", bs)))
        versions.append(est.version)
    assert versions == [1, 2, 3]
    for _ in range(17):  # repeats while fewer than 20 peaks: each one
        est.observe(Observation({"model": "small", "batch_size": 8}, truth("small", 8)))
    assert est.version == 20
    for _ in range(980):  # then once per twentieth more: 90 times up to 1,000 peaks
        est.observe(Observation({"model": "small", "batch_size": 8}, truth("small", 8)))
    assert 20 < est.version < 20 + 100
    bumped = est.version
    est.observe(Observation({"model": "small", "batch_size": 64}, 9e12, censored=True))
    assert est.version == bumped + 1  # an OOM bound: at once
