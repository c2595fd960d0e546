"""The figures of ``hpo report``: memory against a scaling parameter, and end reasons over time.

Optuna's own plots (history, intermediate values, importances) come from
``optuna.visualization``; these two are hpo's. The memory plot exists twice, as a plotly figure
for the HTML and as a matplotlib PNG (drawn without a browser, so it works offline).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datetime as dt
    from pathlib import Path

    from optuna.trial import FrozenTrial

VRAM_KEY, RSS_KEY = "peak_vram_mib", "peak_rss_mib"


@dataclass(frozen=True)
class MemoryPoint:
    """One trial on the memory plot."""

    number: int
    x: Any  # the scaling parameter's value
    mib: float  # measured peak
    estimate_mib: float | None  # estimate used at admission, if any
    state: str


@dataclass(frozen=True)
class MemoryData:
    """What the memory plot shows, and its labels."""

    param: str
    key: str  # user attribute plotted (VRAM, else RSS)
    points: list[MemoryPoint]
    budget_mib: float | None
    budget_source: str | None

    @property
    def y_label(self) -> str:
        if self.key == VRAM_KEY:
            return "peak VRAM per trial (MiB)"
        return "peak RSS per trial (MiB, host RAM: no VRAM recorded)"


def memory_data(trials: list[FrozenTrial], param: str, budget_mib: float | None) -> MemoryData:
    """Peak memory of the trials that have ``param``; VRAM if any trial has it, else RSS."""
    key = VRAM_KEY if any(VRAM_KEY in t.user_attrs for t in trials) else RSS_KEY
    points = [
        MemoryPoint(
            t.number,
            t.params[param],
            float(t.user_attrs[key]),
            _float(t.user_attrs.get("est_vram_mib")) if key == VRAM_KEY else None,
            t.state.name,
        )
        for t in trials
        if param in t.params and isinstance(t.user_attrs.get(key), (int, float))
    ]
    source = "--budget-mib" if budget_mib is not None else None
    if budget_mib is None:
        recorded = [
            t.user_attrs["vram_budget_mib"]
            for t in trials
            if isinstance(t.user_attrs.get("vram_budget_mib"), (int, float))
        ]
        if recorded:
            budget_mib, source = float(recorded[-1]), "vram_budget_mib attribute"
    return MemoryData(param, key, points, budget_mib, source)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _numeric(data: MemoryData) -> bool:
    """Whether the x parameter is a number (then the axis is numeric, not categories)."""
    return bool(data.points) and all(
        isinstance(p.x, (int, float)) and not isinstance(p.x, bool) for p in data.points
    )


def _log_x(data: MemoryData) -> bool:
    """A numeric axis spanning a factor of 8 or more (batch sizes 8…64) reads best in log."""
    if not _numeric(data):
        return False
    xs = [float(p.x) for p in data.points]
    return min(xs) > 0 and max(xs) / min(xs) >= 8


def _x_positions(data: MemoryData) -> tuple[list[Any], list[float]]:
    """Numbers at their values; categories in order, one step apart."""
    values = sorted({p.x for p in data.points}, key=lambda v: (isinstance(v, str), v))
    if _numeric(data):
        return values, [float(v) for v in values]
    return values, [float(i) for i in range(len(values))]


def memory_figure(data: MemoryData) -> Any:
    """Plotly scatter of peak memory against the scaling parameter, with the budget line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    numeric = _numeric(data)
    for state in sorted({p.state for p in data.points}):
        pts = [p for p in data.points if p.state == state]
        fig.add_trace(
            go.Scatter(
                x=[p.x if numeric else str(p.x) for p in pts],
                y=[p.mib for p in pts],
                mode="markers",
                name=state,
                text=[f"trial {p.number}" for p in pts],
                marker={"size": 9},
            )
        )
    estimated = [p for p in data.points if p.estimate_mib is not None]
    if estimated:
        fig.add_trace(
            go.Scatter(
                x=[p.x if numeric else str(p.x) for p in estimated],
                y=[p.estimate_mib for p in estimated],
                mode="markers",
                name="estimate at admission",
                marker={"symbol": "x", "size": 8},
            )
        )
    if data.budget_mib is not None:
        fig.add_hline(
            y=data.budget_mib,
            line_dash="dash",
            line_color="red",
            annotation_text=f"budget {data.budget_mib:.0f} MiB ({data.budget_source})",
        )
    order = [str(v) for v in _x_positions(data)[0]]
    fig.update_layout(
        title=f"Peak memory by {data.param}",
        xaxis_title=data.param,
        yaxis_title=data.y_label,
        legend_title="trial state",
    )
    if numeric:
        fig.update_xaxes(type="log" if _log_x(data) else "linear", tickvals=_x_positions(data)[0])
    else:
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    fig.update_yaxes(rangemode="tozero")  # a few MiB of noise must not look like a trend
    return fig


def memory_png(data: MemoryData, path: Path) -> None:
    """The same plot as a PNG with matplotlib (no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values, positions = _x_positions(data)
    where = dict(zip(values, positions, strict=True))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    try:
        for state in sorted({p.state for p in data.points}):
            pts = [p for p in data.points if p.state == state]
            ax.scatter([where[p.x] for p in pts], [p.mib for p in pts], label=state, alpha=0.8)
        estimated = [p for p in data.points if p.estimate_mib is not None]
        if estimated:
            ax.scatter(
                [where[p.x] for p in estimated],
                [float(p.estimate_mib or 0.0) for p in estimated],
                marker="x",
                color="black",
                label="estimate at admission",
            )
        if data.budget_mib is not None:
            ax.axhline(
                data.budget_mib,
                color="red",
                linestyle="--",
                label=f"budget {data.budget_mib:.0f} MiB ({data.budget_source})",
            )
        else:
            ax.text(
                0.01,
                0.01,
                "no budget known (hpo report --budget-mib)",
                transform=ax.transAxes,
                fontsize="small",
                color="gray",
            )
        if not data.points:
            ax.text(
                0.5,
                0.5,
                f"no trial has {data.param} and {data.key}",
                transform=ax.transAxes,
                ha="center",
            )
        if _log_x(data):
            ax.set_xscale("log", base=2)
        ax.set_xticks(positions, [str(v) for v in values])
        ax.set_ylim(bottom=0)  # a few MiB of noise must not look like a trend
        ax.set_xlabel(data.param)
        ax.set_ylabel(data.y_label)
        ax.set_title(f"Peak memory by {data.param} ({len(data.points)} trials)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def end_reasons_figure(trials: list[FrozenTrial]) -> Any:
    """Cumulative count of each end reason against the time trials finished."""
    import plotly.graph_objects as go

    done = sorted(
        (t for t in trials if t.datetime_complete is not None),
        key=lambda t: t.datetime_complete,  # type: ignore[arg-type, return-value]
    )
    series: dict[str, tuple[list[dt.datetime], list[int]]] = {}
    counts: Counter[str] = Counter()
    for t in done:
        reason = str(t.user_attrs.get("end_reason", t.state.name.lower()))
        counts[reason] += 1
        xs, ys = series.setdefault(reason, ([], []))
        xs.append(t.datetime_complete)  # type: ignore[arg-type]
        ys.append(counts[reason])
    fig = go.Figure()
    for reason, (xs, ys) in sorted(series.items()):
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines+markers", name=reason, line={"shape": "hv"})
        )
    fig.update_layout(
        title="End reasons over time (cumulative)",
        xaxis_title="trial finished at",
        yaxis_title="trials",
        legend_title="end_reason",
    )
    return fig
