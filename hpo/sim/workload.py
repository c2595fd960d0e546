"""Workload spec files: a simulated device and the ground truth of a study's trials on it.

A workload file (YAML) says what a simulated card is (capacity, context per process) and how
each model family behaves on it: peak memory as a sum of terms of the parameters, time per
epoch, GPU utilisation demand, and a learning curve. The simulated objective follows it; the
estimator never reads it (it learns from what trials measure). See ``docs/workloads.md``.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpo.devices._base import GIB
from hpo.devices.simulated import SimulatedGpuSpec
from hpo.errors import ConfigError


@dataclass(frozen=True)
class Term:
    """``coef`` × Π param^power (GiB for memory terms)."""

    coef: float
    powers: Mapping[str, float] = field(default_factory=dict)

    def value(self, params: Mapping[str, Any]) -> float:
        out = self.coef
        for name, power in self.powers.items():
            out *= float(params[name]) ** power
        return out


@dataclass(frozen=True)
class Demand:
    """GPU utilisation demand: ``base`` at the reference params, × (p/ref)^exponent, ≤ max."""

    base: float
    ref: Mapping[str, float] = field(default_factory=dict)
    exponent: float = 0.5
    max: float = 1.0

    def value(self, params: Mapping[str, Any]) -> float:
        out = self.base
        for name, ref in self.ref.items():
            out *= (float(params[name]) / ref) ** self.exponent
        return min(self.max, out)


@dataclass(frozen=True)
class Curve:
    """Validation accuracy after ``epoch`` epochs, as real studies see it.

    The clean curve is ``max(floor, ceiling × lr fit × (1 − e^(−rate·(e − delay))))`` with
    ``e`` the epoch held at ``plateau_epoch`` (a plateau) and no progress before ``delay``
    epochs (a slow starter); after ``peak_epoch`` it loses ``overfit`` of its peak value per
    epoch (overfitting). Each report then carries validation noise: a Gaussian of standard
    deviation ``noise`` × the clean value, seeded by the trial and the epoch, so a trial's
    curve is the same every time it runs. The defaults give the plain saturating exponential.
    """

    ceiling: float
    rate: float = 0.3
    best_lr: float = 1e-3
    lr_width: float = 1.0  # decades of lr away from best_lr that cost a factor e^(-1/2)
    floor: float = 0.0  # the value before any learning (chance accuracy)
    delay: float = 0.0  # epochs before the curve starts to rise (a late bloomer)
    plateau_epoch: int | None = None  # from this epoch on, the clean curve is flat
    peak_epoch: int | None = None  # after this epoch the model overfits ...
    overfit: float = 0.0  # ... losing this fraction of the peak's value per epoch
    noise: float = 0.0  # standard deviation of a report's noise, as a fraction of its value

    def fit(self, params: Mapping[str, Any]) -> float:
        """The lr's factor on the ceiling: 1 at ``best_lr``."""
        if "lr" not in params:
            return 1.0
        decades = math.log10(float(params["lr"]) / self.best_lr)
        return math.exp(-(decades**2) / (2 * self.lr_width**2))

    def clean(self, params: Mapping[str, Any], epoch: int) -> float:
        """The value after ``epoch`` epochs without validation noise (unrounded)."""
        e = min([epoch, *(x for x in (self.plateau_epoch, self.peak_epoch) if x is not None)])
        progress = 1.0 - math.exp(-self.rate * max(0.0, e - self.delay))
        out = max(self.floor, self.ceiling * self.fit(params) * progress)
        if self.peak_epoch is not None and epoch > self.peak_epoch:
            out *= max(0.0, 1.0 - self.overfit * (epoch - self.peak_epoch))
        return out

    def value(self, params: Mapping[str, Any], epoch: int, seed: int | None = None) -> float:
        """The reported value: the clean curve, with the noise of trial ``seed`` when given."""
        out = self.clean(params, epoch)
        if seed is not None and self.noise > 0:
            out *= 1.0 + self.noise * random.Random(f"curve:{seed}:{epoch}").gauss(0.0, 1.0)
        return round(out, 4)

    def best(self, params: Mapping[str, Any], epochs: int) -> float:
        """The true value of ``params``: the best clean value of a full trial's epochs."""
        return max(self.clean(params, e) for e in range(1, epochs + 1))


@dataclass(frozen=True)
class Family:
    """One model family's ground truth."""

    peak_gib: tuple[Term, ...]  # trial peak without the process context
    epoch_s: float  # seconds of one epoch alone on the card, before time scaling
    demand: Demand
    curve: Curve
    setup_s: float = 0.0  # seconds before the first allocation (process, data, model)
    eval_extra_gib: tuple[Term, ...] = ()  # allocated for the evaluation after each epoch
    eval_s: float = 0.0  # seconds the evaluation holds it (part of the epoch's time)
    eval_spike: bool = False  # the evaluation is a declared memory spike (hpo.memory_spike)


@dataclass(frozen=True)
class Workload:
    """A simulated card and the families of a study that runs on it."""

    name: str
    device: SimulatedGpuSpec
    device_count: int
    family_param: str  # the parameter that names the family
    families: Mapping[str, Family]
    space: Mapping[str, Any]  # the study's search space (hpo ParamConf mappings)
    epochs: int
    noise_frac: float  # measured peaks vary by up to ± this fraction around the terms
    scaling: tuple[str, ...] = ()  # memory-scaling params it declares (memory.scaling)

    def family(self, params: Mapping[str, Any]) -> Family:
        return self.families[str(params[self.family_param])]

    def peak_bytes(self, params: Mapping[str, Any], seed: int | None = None) -> int:
        """The trial's peak without context; with ``seed``, the run-to-run noise too. Terms
        may have negative coefficients; memory below zero is none."""
        gib = max(0.0, sum(t.value(params) for t in self.family(params).peak_gib))
        if seed is not None and self.noise_frac > 0:
            gib *= 1.0 + random.Random(seed).uniform(-self.noise_frac, self.noise_frac)
        return int(gib * GIB)

    def eval_extra_bytes(self, params: Mapping[str, Any]) -> int:
        """Memory the evaluation after each epoch allocates on top of the training peak."""
        return int(max(0.0, sum(t.value(params) for t in self.family(params).eval_extra_gib)) * GIB)

    def draw(self, rng: random.Random) -> dict[str, Any]:
        """One configuration at random from the search space (log-uniform where ``log``)."""
        out: dict[str, Any] = {}
        for name, dist in self.space.items():
            if dist.get("choices"):
                out[name] = rng.choice(list(dist["choices"]))
                continue
            low, high = float(dist["low"]), float(dist["high"])
            if dist.get("log"):
                value = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                value = rng.uniform(low, high)
            out[name] = round(value) if dist.get("type") == "int" else value
        return out

    def true_value(self, params: Mapping[str, Any]) -> float:
        """What ``params`` are truly worth: the best clean value of a full trial (no noise)."""
        return self.family(params).curve.best(params, self.epochs)

    def optimum(self) -> float:
        """The true optimum over the search space: the best :meth:`true_value` of any family at
        its best learning rate (held inside the space's ``lr`` range); other parameters do not
        change a curve."""
        lr = self.space.get("lr")
        best = 0.0
        for name in self.space[self.family_param]["choices"]:
            curve = self.families[str(name)].curve
            params: dict[str, Any] = {self.family_param: name}
            if lr is not None:
                params["lr"] = min(max(curve.best_lr, float(lr["low"])), float(lr["high"]))
            best = max(best, curve.best(params, self.epochs))
        return best

    def footprint_bytes(self, params: Mapping[str, Any]) -> int:
        """True device footprint of the trial (peak with its evaluation + context), without
        noise."""
        extra = self.eval_extra_bytes(params)
        return self.peak_bytes(params) + extra + int(self.device.context_gib * GIB)


BUILT_IN = Path(__file__).resolve().parent / "workloads"  # workloads shipped with hpo


def builtin_path(name: str) -> Path | None:
    """The file of built-in workload ``name`` (``criteria24``); None when ``name`` is a path
    (it has a ``/`` or a YAML suffix); ConfigError for an unknown name."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        return None
    known = sorted(p.stem for p in BUILT_IN.glob("*.yaml"))
    if name not in known:
        raise ConfigError(f"no built-in workload {name!r} (built in: {', '.join(known)})")
    return BUILT_IN / f"{name}.yaml"


@functools.lru_cache(maxsize=16)
def load_workload(path: str) -> Workload:
    """Read and check a workload file, or a built-in workload by name; ConfigError (one line)
    for any mistake in it."""
    path = str(builtin_path(path) or path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"workload file {path!r} cannot be read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"workload file {path!r} is not valid YAML: {e}") from e
    try:
        return _parse(raw, Path(path).stem)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"workload file {path!r}: {_describe(e)}") from e


def _parse(raw: Any, name: str) -> Workload:
    if not isinstance(raw, dict):
        raise TypeError("top level must be a mapping")
    dev = _mapping(raw, "device")
    families = {str(k): _family(str(k), v) for k, v in _mapping(raw, "families").items()}
    if not families:
        raise ValueError("families must name at least one family")
    wl = Workload(
        name=str(raw.get("name", name)),
        device=SimulatedGpuSpec(float(dev["capacity_gib"]), float(dev.get("context_gib", 0.5))),
        device_count=int(dev.get("count", 1)),
        family_param=str(raw.get("family_param", "model")),
        families=families,
        space=_mapping(raw, "space"),
        epochs=int(raw.get("epochs", 12)),
        noise_frac=float(raw.get("noise_frac", 0.0)),
        scaling=tuple(str(p) for p in (raw.get("memory") or {}).get("scaling") or ()),
    )
    _check(wl)
    return wl


def _terms(raw: Any) -> tuple[Term, ...]:
    return tuple(
        Term(float(t["coef"]), {str(k): float(v) for k, v in (t.get("powers") or {}).items()})
        for t in raw
    )


def _family(name: str, raw: Any) -> Family:
    if not isinstance(raw, dict):
        raise TypeError(f"families.{name} must be a mapping")
    terms = _terms(raw["peak_gib"])
    d = raw["demand"]
    demand = Demand(
        float(d["base"]),
        {str(k): float(v) for k, v in (d.get("ref") or {}).items()},
        float(d.get("exponent", 0.5)),
        float(d.get("max", 1.0)),
    )
    curve = _curve(raw["curve"])
    return Family(
        terms,
        float(raw.get("epoch_s", 1.0)),
        demand,
        curve,
        setup_s=float(raw.get("setup_s", 0.0)),
        eval_extra_gib=_terms(raw.get("eval_extra_gib") or ()),
        eval_s=float(raw.get("eval_s", 0.0)),
        eval_spike=_flag(raw.get("eval_spike", False), f"families.{name}.eval_spike"),
    )


def _curve(c: Any) -> Curve:
    def optional_int(key: str) -> int | None:
        return None if c.get(key) is None else int(c[key])

    return Curve(
        float(c["ceiling"]),
        float(c.get("rate", 0.3)),
        float(c.get("best_lr", 1e-3)),
        float(c.get("lr_width", 1.0)),
        floor=float(c.get("floor", 0.0)),
        delay=float(c.get("delay", 0.0)),
        plateau_epoch=optional_int("plateau_epoch"),
        peak_epoch=optional_int("peak_epoch"),
        overfit=float(c.get("overfit", 0.0)),
        noise=float(c.get("noise", 0.0)),
    )


def _check_curve(fname: str, curve: Curve) -> None:
    where = f"families.{fname}.curve"
    if curve.rate <= 0 or curve.lr_width <= 0:
        raise ValueError(
            f"{where}: rate and lr_width must be > 0, got {curve.rate} and {curve.lr_width}"
        )
    if curve.delay < 0 or not 0 <= curve.overfit < 1 or not 0 <= curve.noise < 0.5:
        raise ValueError(
            f"{where}: delay must be >= 0, overfit in [0, 1) and noise in [0, 0.5), got "
            f"{curve.delay}, {curve.overfit} and {curve.noise}"
        )
    for key in ("plateau_epoch", "peak_epoch"):
        epoch = getattr(curve, key)
        if epoch is not None and epoch < 1:
            raise ValueError(f"{where}.{key} must be >= 1, got {epoch}")


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def _check(wl: Workload) -> None:
    if wl.device_count < 1:
        raise ValueError(f"device.count must be >= 1, got {wl.device_count}")
    if not 0 <= wl.noise_frac < 0.5:
        raise ValueError(f"noise_frac must be in [0, 0.5), got {wl.noise_frac}")
    if wl.family_param not in wl.space:
        raise ValueError(f"family_param {wl.family_param!r} is not in space")
    choices = wl.space[wl.family_param].get("choices") or []
    unknown = [c for c in choices if str(c) not in wl.families]
    if unknown:
        raise ValueError(f"space.{wl.family_param} has choices without a family: {unknown}")
    unknown_scaling = [p for p in wl.scaling if p not in wl.space]
    if unknown_scaling:
        raise ValueError(f"memory.scaling names params not in space: {unknown_scaling}")
    for fname, fam in wl.families.items():
        _check_curve(fname, fam.curve)
        if fam.epoch_s <= 0:
            raise ValueError(f"families.{fname}.epoch_s must be > 0, got {fam.epoch_s}")
        if fam.setup_s < 0 or not 0 <= fam.eval_s < fam.epoch_s:
            raise ValueError(
                f"families.{fname}: setup_s must be >= 0 and eval_s in [0, epoch_s), got "
                f"{fam.setup_s} and {fam.eval_s}"
            )
        for term in fam.peak_gib + fam.eval_extra_gib:
            missing = [p for p in term.powers if p not in wl.space]
            if missing:
                raise ValueError(f"families.{fname}.peak_gib uses params not in space: {missing}")


def _mapping(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw[key]
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a mapping, got {type(value).__name__}")
    return value


def _describe(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing key {e.args[0]!r}"
    return str(e)
