"""A password in the storage URL is never printed or written: tune, stats, status, report,
dashboard and their errors, against a real PostgreSQL server with a password-protected role."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos import PgServer
from hpo.errors import ConfigError
from hpo.look.db import StudyRef
from hpo.storage import display_url, sqlite_path
from tests.conftest import CONF, _env, run_hpo


def test_display_url_masks_the_password() -> None:
    url = "postgresql+psycopg2://user:s3cret@db.example:5432/hpo"
    assert display_url(url) == "postgresql+psycopg2://user:***@db.example:5432/hpo"
    assert StudyRef("s", url).shown == display_url(url)


def test_an_unparseable_url_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as e:
        sqlite_path("postgresql://user:s3cret@host:notaport/db")
    assert "s3cret" not in str(e.value)


def _look(cwd: Path, env: dict[str, str], command: str, *args: str) -> str:
    cmd = [sys.executable, "-m", "hpo.cli", command, "--config-dir", str(CONF), *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_no_output_or_file_holds_the_password(
    pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPO_POSTGRES_URL", pg.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    study = ["study=toy", "study.name=secret", "storage=postgres"]
    tune = run_hpo(tmp_path, *study, "study.n_trials=3", "par=1", "study.epoch_s=0.01")
    assert tune.returncode == 0, tune.stderr[-2000:]
    outputs = [tune.stdout, tune.stderr]
    masked = "hpo:***@127.0.0.1"
    assert masked in tune.stdout  # the summary line
    env = _env()
    stats = _look(tmp_path, env, "stats", *study)
    stats_json = _look(tmp_path, env, "stats", "--json", *study)
    status = _look(tmp_path, env, "status", "--once", *study)
    report = _look(tmp_path, env, "report", "--out", str(tmp_path / "report"), *study)
    missing = _look(tmp_path, env, "stats", *study, "study.name=nope")
    assert masked in stats and f'"storage": "postgresql+psycopg2://{masked}' in stats_json
    assert masked in status
    assert "no study 'nope' in postgresql+psycopg2://hpo:***@" in missing
    html = (tmp_path / "report" / "report.html").read_text()
    assert masked in html
    cmd = [sys.executable, "-m", "hpo.cli", "dashboard", "--config-dir", str(CONF), *study,
           "--port", "0"]  # fmt: skip
    dash = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    assert dash.stdout is not None
    line = dash.stdout.readline()
    dash.terminate()
    dash.wait(timeout=30)
    assert line.startswith("optuna-dashboard for study secret") and masked in line, line
    outputs += [stats, stats_json, status, report, missing, line]
    assert not [o for o in outputs if pg.password in o]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    assert not [p for p in written if pg.password.encode() in p.read_bytes()]
