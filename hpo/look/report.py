"""``hpo report``: one self-contained HTML file of a study's plots, and a PNG of its memory plot.

The HTML embeds plotly.js, so it opens offline and can be mailed as one file. The study is read
through a read-only storage: writing the report changes nothing next to the database. Plots that a
study cannot have yet (importances before two complete trials, memory without measurements)
become a one-line note in the report instead of an error.
"""

from __future__ import annotations

import html
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.look.db import StudyDB, StudyRef
from hpo.look.report_plots import end_reasons_figure, memory_data, memory_figure, memory_png
from hpo.storage.readonly import open_optuna_storage

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna

logger = logging.getLogger(__name__)

Section = tuple[str, Any]  # (title, plotly figure or a note string)


def write_report(
    ref: StudyRef, out_dir: Path, budget_mib: float | None = None, memory_param: str = "batch_size"
) -> tuple[Path, Path]:
    """Write ``<out_dir>/report.html`` and ``<out_dir>/memory.png``; return their paths."""
    import optuna

    with StudyDB(ref):  # ConfigError, nothing created, when the storage or study is missing
        pass
    storage = open_optuna_storage(ref.url, ref.busy_timeout_s)  # refuses writes
    study = optuna.load_study(study_name=ref.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    memory = memory_data(trials, memory_param, budget_mib)
    sections = _optuna_sections(study)
    if memory.points:
        sections.insert(3, ("Peak memory", memory_figure(memory)))
    else:
        sections.insert(
            3,
            (
                "Peak memory",
                f"no trial has both {memory_param!r} and a memory measurement (try --memory-param)",
            ),
        )
    sections.append(("End reasons over time", end_reasons_figure(trials)))
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, png_path = out_dir / "report.html", out_dir / "memory.png"
    _write_html(html_path, ref, len(trials), sections)
    memory_png(memory, png_path)
    logger.debug("report of %d trials written to %s", len(trials), out_dir)
    return html_path, png_path


def _optuna_sections(study: optuna.Study) -> list[Section]:
    import optuna
    from optuna import visualization as vis
    from optuna.importance import PedAnovaImportanceEvaluator

    def importances(s: optuna.Study) -> Any:
        # PED-ANOVA needs no scikit-learn (fANOVA, Optuna's default, does).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return vis.plot_param_importances(s, evaluator=PedAnovaImportanceEvaluator())

    plots: list[tuple[str, Callable[[optuna.Study], Any]]] = [
        ("Optimisation history", vis.plot_optimization_history),
        ("Intermediate values", vis.plot_intermediate_values),
        ("Parameter importances", importances),
    ]
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    reported = any(t.intermediate_values for t in trials)
    missing = {  # an empty plot says nothing: say why there is none instead
        "Optimisation history": None if complete else "no COMPLETE trial yet",
        "Intermediate values": None if reported else "no trial has reported a value yet",
        "Parameter importances": None if len(complete) >= 2 else "needs two COMPLETE trials",
    }
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the notes replace Optuna's warnings
    try:
        return [(title, missing[title] or _figure_or_note(make, study)) for title, make in plots]
    finally:
        optuna.logging.set_verbosity(verbosity)


def _figure_or_note(make: Callable[[optuna.Study], Any], study: optuna.Study) -> Any:
    import optuna

    try:
        return make(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return f"not available: {e}"
    except optuna.exceptions.OptunaError as e:
        return f"not available: {e}"


def _write_html(path: Path, ref: StudyRef, n_trials: int, sections: list[Section]) -> None:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>hpo report: {html.escape(ref.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em} .note{color:#777}</style></head><body>",
        f"<h1>Study {html.escape(ref.name)}</h1>",
        f"<p>{n_trials} trials in <code>{html.escape(ref.shown)}</code></p>",
    ]
    plotly_js_included = False
    for title, content in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(content, str):
            parts.append(f"<p class='note'>{html.escape(content)}</p>")
            continue
        parts.append(content.to_html(full_html=False, include_plotlyjs=not plotly_js_included))
        plotly_js_included = True
    parts.append("</body></html>")
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
