"""The cold-start prior: peak memory of one training step, traced before any trial runs.

The study's step builder (or the user's analytic ``estimate_fn``) is evaluated in a separate
process (``python -m hpo.memory.trace``) with a time limit, so torch never enters the
supervisor and a crash of the tracer costs nothing but the prior. For each group (model
family) it is evaluated at the smallest and largest value of the memory-scaling parameters;
in between, memory is affine in their product. A traced step also gives the bytes of its state
(parameters, buffers, optimizer state), which do not depend on the scaling parameters.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo.memory.fit import Line, fit_line

logger = logging.getLogger(__name__)


@dataclass
class Prior:
    """Traced bytes per group at a few ``x`` (product of the scaling params); affine between;
    and per group the bytes of the step's state (0 where unknown: an ``estimate_fn``)."""

    groups: tuple[str, ...]
    table: dict[tuple[Any, ...], list[tuple[float, float]]] = field(default_factory=dict)
    state: dict[tuple[Any, ...], float] = field(default_factory=dict)

    def state_bytes(self, params: Mapping[str, Any]) -> float:
        return self.state.get(tuple(params.get(g) for g in self.groups), 0.0)

    def _line(self, params: Mapping[str, Any]) -> tuple[float, float] | None:
        points = sorted(self.table.get(tuple(params.get(g) for g in self.groups), []))
        if not points:
            return None
        (x0, y0), (x1, y1) = points[0], points[-1]
        slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
        return y0 - slope * x0, max(0.0, slope)

    def bytes_at(self, params: Mapping[str, Any], x: float) -> float | None:
        line = self._line(params)
        return None if line is None else line[0] + line[1] * x

    def slope(self, params: Mapping[str, Any]) -> float | None:
        line = self._line(params)
        return None if line is None else line[1]


Points = Sequence[tuple[tuple[float, ...], float]]  # (scaling values, measured bytes)


def calibrate(
    prior: Prior,
    measured: Mapping[tuple[Any, ...], Points],
    groups: Sequence[str],
    context: float,
    min_uplift: float,
    cold_uplift: float,
) -> tuple[Line, float] | None:
    """measured − state ≈ context + factor × (traced − state), over every measured trial the
    prior covers (``measured``: by group), fitted on relative error; with how far that
    transfers between groups (the calibration's relative error on a group left out)."""
    pairs: dict[tuple[Any, ...], list[tuple[float, float, float]]] = {}
    for key, points in measured.items():
        params = dict(zip(groups, key, strict=True))
        state = prior.state_bytes(params)
        for sp, y in points:
            traced = prior.bytes_at(params, math.prod(sp))
            if traced is not None:
                pairs.setdefault(key, []).append((traced - state, y - state, y))
    if not pairs:
        return None
    line = _calibrate([p for group in pairs.values() for p in group], context)
    if len(pairs) < 2:  # in-sample, plus the cold uplift, with a single group
        in_sample = max(abs(d - line.at(t)) / y for t, d, y in next(iter(pairs.values())))
        return line, max(min_uplift, in_sample + cold_uplift)
    worst = 0.0
    for key, held_out in pairs.items():
        other = _calibrate([p for k, group in pairs.items() if k != key for p in group], context)
        worst = max(worst, *(abs(d - other.at(t)) / y for t, d, y in held_out))
    return line, max(min_uplift, worst)


def _calibrate(pairs: list[tuple[float, float, float]], context: float) -> Line:
    """The (context, factor) line through (dynamic traced, dynamic measured, measured)."""
    line = fit_line([(t, d) for t, d, _ in pairs], [1.0 / (y * y) for *_, y in pairs])
    if line is not None:
        return line
    # One traced size measured: a factor on top of the known context.
    traced, dynamic = pairs[0][0], sum(p[1] for p in pairs) / len(pairs)
    factor = max(0.0, dynamic - context) / traced if traced > 0 else 1.0
    return Line(context, factor)


def grid_points(
    space: Mapping[str, Mapping[str, Any]], scaling: Sequence[str], groups: Sequence[str]
) -> list[dict[str, Any]]:
    """Parameter sets to trace: every group, at the low and high corner of the scaling params."""
    group_values = [list(space[g]["choices"]) for g in groups]
    points = []
    for combo in itertools.product(*group_values):
        for corner in (min, max):
            params = {name: _middle(dist) for name, dist in space.items()}
            params.update(dict(zip(groups, combo, strict=True)))
            for name in scaling:
                params[name] = corner(_extremes(space[name]))
            points.append(params)
    return points


def _extremes(dist: Mapping[str, Any]) -> list[Any]:
    if dist.get("choices"):
        return list(dist["choices"])
    cast = int if dist["type"] == "int" else float
    return [cast(dist["low"]), cast(dist["high"])]


def _middle(dist: Mapping[str, Any]) -> Any:
    """A representative value of a parameter that does not change memory."""
    if dist.get("choices"):
        return dist["choices"][0]
    low, high = float(dist["low"]), float(dist["high"])
    mid = math.sqrt(low * high) if dist.get("log") and low > 0 else (low + high) / 2
    return int(round(mid)) if dist["type"] == "int" else mid


def build_prior(
    cfg: Mapping[str, Any],
    scaling: Sequence[str],
    groups: Sequence[str],
    timeout_s: float,
) -> Prior | None:
    """Trace the study's step builder (or call its estimate_fn) at the grid points; None if
    the study has neither, or tracing failed (logged)."""
    memory = cfg["study"].get("memory") or {}
    if not (memory.get("step_builder") or memory.get("estimate_fn")):
        return None
    if any(not cfg["study"]["space"][g].get("choices") for g in groups):
        logger.warning("no memory prior: every group parameter must be categorical")
        return None
    points = grid_points(cfg["study"]["space"], scaling, groups)
    results = run_tracer(cfg, points, timeout_s)
    prior = Prior(tuple(groups))
    for params, result in zip(points, results, strict=True):
        if result.get("bytes") is None:
            logger.warning("memory prior at %s failed: %s", params, result.get("error"))
            continue
        x = math.prod(float(params[s]) for s in scaling)
        key = tuple(params[g] for g in groups)
        prior.table.setdefault(key, []).append((x, float(result["bytes"])))
        if result.get("state_bytes") is not None:
            prior.state[key] = float(result["state_bytes"])
    return prior if prior.table else None


def run_tracer(
    cfg: Mapping[str, Any], points: list[dict[str, Any]], timeout_s: float
) -> list[dict[str, Any]]:
    """Evaluate the prior at ``points`` in a subprocess; one result dict per point."""
    request = json.dumps({"cfg": cfg, "points": points})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hpo.memory.trace"],
            input=request,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return [{"error": f"tracing took longer than {timeout_s:g} s"}] * len(points)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"error": f"tracer exited with {proc.returncode}: {tail}"}] * len(points)
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(results, list) and len(results) == len(points)
    return results
