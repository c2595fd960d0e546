"""``hpo report``: a self-contained HTML with every plot, and the memory PNG."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.look import make_toy_study, run_look
from tests.test_dashboard import browser  # noqa: F401 (fixture)

SECTIONS = (
    "Optimisation history",
    "Intermediate values",
    "Parameter importances",
    "Peak memory",
    "End reasons over time",
)


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_study(tmp_path_factory.mktemp("report"))


def test_report_writes_offline_html_and_png(toy_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = run_look(
        tmp_path,
        "report",
        "study=toy",
        f"storage.dir={toy_db.parent}",
        "--memory-param",
        "width",
        "--budget-mib",
        "90",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "class='note'" not in page  # every plot was drawn
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing loaded from elsewhere:
    assert len(page) > 1_000_000  # plotly.js itself is inline
    assert page.count('class="plotly-graph-div"') == len(SECTIONS)
    assert "peak RSS per trial" in page and "budget 90 MiB" in page
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_uses_vram_and_the_recorded_budget(toy_db: Path, tmp_path: Path) -> None:
    """With VRAM attributes (as a GPU run writes them), VRAM is plotted against its budget."""
    db = tmp_path / "toy.db"
    db.write_bytes(toy_db.read_bytes())
    with sqlite3.connect(db) as conn:
        for (trial_id,) in conn.execute("select trial_id from trials").fetchall():
            for key, value in (("peak_vram_mib", 700.0 + trial_id), ("vram_budget_mib", 4000.0)):
                conn.execute(
                    "insert into trial_user_attributes (trial_id, key, value_json) "
                    "values (?, ?, ?)",
                    (trial_id, key, json.dumps(value)),
                )
    out = tmp_path / "rep"
    result = run_look(
        tmp_path,
        "report",
        "study=toy",
        f"storage.dir={tmp_path}",
        "--memory-param",
        "family",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    assert "peak VRAM per trial (MiB)" in page
    assert "budget 4000 MiB (vram_budget_mib attribute)" in page


def test_report_renders_in_chromium_from_a_file(
    toy_db: Path,
    tmp_path: Path,
    browser: object,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "rep"
    result = run_look(
        tmp_path,
        "report",
        "study=toy",
        f"storage.dir={toy_db.parent}",
        "--memory-param",
        "width",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    browser.get((out / "report.html").as_uri())  # type: ignore[attr-defined]
    plots = WebDriverWait(browser, 30).until(  # type: ignore[arg-type]
        lambda d: len(found := d.find_elements(By.CSS_SELECTOR, ".plotly .main-svg")) >= 5 and found
    )
    assert plots
    browser.save_screenshot(str(tmp_path / "report.png"))  # type: ignore[attr-defined]


def test_report_of_a_missing_study_exits_2(tmp_path: Path) -> None:
    result = run_look(tmp_path, "report", "study=toy", f"storage.dir={tmp_path}")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_study_without_complete_trials_gets_notes_not_empty_plots(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'toy.db'}"
    study = optuna.create_study(study_name="toy", storage=storage, direction="maximize")
    for _ in range(2):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    out = tmp_path / "rep"
    result = run_look(tmp_path, "report", "study=toy", f"storage.dir={tmp_path}", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "There are no complete trials" not in result.stderr  # Optuna's warnings, replaced
    text = (out / "report.html").read_text()
    assert "no COMPLETE trial yet" in text and "needs two COMPLETE trials" in text
    assert "no trial has reported a value yet" in text
