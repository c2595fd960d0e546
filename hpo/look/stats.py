"""``hpo stats``: where a study's trials and GPU time went, all from the SQL of
:mod:`hpo.look.queries`.

:func:`collect` runs every named query once and returns their rows under the query's name
(what ``hpo stats --json`` prints); :func:`render` turns that into the text report. No figure
is computed outside SQL, so ``docs/sql.md`` run with ``sqlite3`` gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpo.look import queries
from hpo.look.db import Row, StudyDB

VRAM_KEY, RSS_KEY = "peak_vram_mib", "peak_rss_mib"


@dataclass(frozen=True)
class StatsParams:
    """The bind parameters of the memory queries."""

    group_by: tuple[str, str] = ("model", "batch_size")  # parameter names to group memory by
    memory_key: str | None = None  # user attribute; None = peak_vram_mib, else peak_rss_mib
    threshold_mib: float | None = None  # list trials whose memory exceeds this (MiB)

    def __post_init__(self) -> None:
        if self.threshold_mib is not None and self.threshold_mib < 0:
            raise ValueError(f"threshold_mib must be >= 0, got {self.threshold_mib}")


def collect(db: StudyDB, params: StatsParams) -> dict[str, Any]:
    """Every figure of ``hpo stats``: the rows of each named query, and the parameters used."""
    memory_key = params.memory_key or pick_memory_key(db)
    binds = {
        "param1": params.group_by[0],
        "param2": params.group_by[1],
        "memory_key": memory_key,
        "threshold_mib": params.threshold_mib,
    }
    out: dict[str, Any] = {"study": db.ref.name, "storage": db.ref.shown, "parameters": binds}
    for name, sql in queries.STATS_QUERIES.items():
        out[name] = db.rows(sql, **binds)
    return out


def pick_memory_key(db: StudyDB) -> str:
    """``peak_vram_mib`` when any trial has it, else ``peak_rss_mib`` (a CPU-only study)."""
    return VRAM_KEY if db.rows(queries.HAS_ATTR, key=VRAM_KEY)[0]["n"] else RSS_KEY


def render(stats: dict[str, Any]) -> str:
    """The text report of :func:`collect`'s result."""
    binds = stats["parameters"]
    parts = [
        f"study {stats['study']} ({stats['storage']})",
        _table("trials by state", stats["state_counts"], ["state", "n", "pct"]),
        _table("trials by end_reason", stats["end_reason_counts"], ["end_reason", "n", "pct"]),
        _table(
            "duration by state (s)", stats["duration_by_state"], ["state", "n", "avg_s", "total_s"]
        ),
        _table(
            "pruned trials by last reported epoch (rung; - = none)",
            stats["pruned_by_rung"],
            ["rung", "n"],
        ),
        _bracket_section(stats["pruned_by_bracket"]),
        _gpu_section(stats["gpu_seconds"]),
        _pruning_section(stats, binds),
        _memory_section(stats, binds),
        _table(
            "memory failures",
            stats["memory_failures"],
            ["pre_pruned", "oom", "cap_exceeded", "cuda_error"],
        ),
    ]
    return "\n\n".join(parts)


def _bracket_section(rows: list[Row]) -> str:
    title = "Hyperband brackets (user attribute 'bracket'; - = not recorded)"
    return _table(title, rows, ["bracket", "n", "n_pruned", "pct_pruned"])


def _gpu_section(rows: list[Row]) -> str:
    if not rows:
        return "GPU-seconds: no trial ran on a GPU (device cuda:N or sim:N)"
    total = sum(r["gpu_s"] or 0.0 for r in rows)
    wasted = sum(r["gpu_s"] or 0.0 for r in rows if r["state"] in ("PRUNED", "FAIL"))
    share = f"{100.0 * wasted / total:.1f}%" if total else "-"
    title = f"GPU-seconds by state (pruned + failed: {wasted:.1f} s of {total:.1f} s, {share})"
    return _table(title, rows, ["state", "n", "gpu_s"])


def _pruning_section(stats: dict[str, Any], binds: dict[str, Any]) -> str:
    """What the pruner saved, and what it may have cost (trials pruned above the median)."""
    saved, risk = stats["pruning_saved"][0], stats["pruned_vs_median"][0]
    lines = ["pruning (trials pruned by the pruner)"]
    if saved["n_pruned"]:
        spent = saved["spent_gpu_s"]
        share = f"{100.0 * saved['saved_gpu_s'] / (spent + saved['saved_gpu_s']):.1f}%"
        group = " x ".join(p for p in (binds["param1"], binds["param2"]) if p)
        lines.append(
            f"  GPU-seconds not spent: {saved['saved_gpu_s']:.1f} s ({share} of the study's "
            f"work without pruning; {saved['n_estimated']} of {saved['n_pruned']} pruned GPU "
            f"trials estimated from completed trials of their {group or 'study'})"
        )
    else:
        lines.append("  GPU-seconds not spent: none (no pruned trial ran on a GPU)")
    lines.append(
        f"  pruned while better than the eventual median at their step: "
        f"{risk['n_above_median']} of {risk['n_pruned']}"
    )
    return "\n".join(lines)


def _memory_section(stats: dict[str, Any], binds: dict[str, Any]) -> str:
    key = binds["memory_key"]
    label = key if key != RSS_KEY else f"{key} (no VRAM recorded: host RAM instead)"
    p1, p2 = binds["param1"], binds["param2"]
    rows = [{p1: r["value1"], p2: r["value2"], **r} for r in stats["memory_by_group"]]
    cols = [p1, p2, "n", "max_mib", "median_mib"]
    threshold = binds["threshold_mib"]
    if threshold is None:
        note = "no threshold given (--vram-threshold-mib)"
        return f"{_table(f'{label} by {p1} x {p2}', rows, cols)}\n{note}"
    cols.append("n_over")
    over = [{p1: r["value1"], p2: r["value2"], **r} for r in stats["over_threshold"]]
    over_table = _table(f"trials over {threshold:g} MiB", over, ["number", "state", p1, p2, "mib"])
    return f"{_table(f'{label} by {p1} x {p2}', rows, cols)}\n\n{over_table}"


def _table(title: str, rows: list[Row], cols: list[str]) -> str:
    """A plain aligned text table (no colours: the output is meant to be pasted and diffed)."""
    if not rows:
        return f"{title}: none"
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [title, "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
