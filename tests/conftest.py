"""Shared helpers: compose configs against the repo's conf/, run the CLI in a subprocess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpo.config import Settings, compose

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "hpo" / "conf"


def pg_url() -> str:
    """The PostgreSQL URL of the tests (set by .ci/run): a failure in CI, a skip elsewhere."""
    url = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("HPO_TEST_POSTGRES_URL is not set in CI")
        pytest.skip("HPO_TEST_POSTGRES_URL not set")
    return url


@pytest.fixture
def postgres_url() -> str:
    return pg_url()


@pytest.fixture(scope="module")
def pg() -> Iterator[Any]:
    """A PostgreSQL server of the test's own (a free port, a password), to stop and start."""
    from bench.chaos import PgServer, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    server = PgServer().init()
    try:
        yield server
    finally:
        server.close()


def settings_of(*overrides: str) -> Settings:
    """The typed settings of the repo's config tree with ``overrides``."""
    return Settings.from_config(compose(list(overrides), str(CONF)))


def hpo_cmd(*args: str) -> list[str]:
    """The command line of ``hpo tune`` with the repo's config tree."""
    return [sys.executable, "-m", "hpo.cli", "tune", "--config-dir", str(CONF), *args]


def run_hpo(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``hpo tune`` to completion in ``cwd``."""
    return subprocess.run(
        hpo_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env()
    )


def start_hpo(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``hpo tune`` in the background (stderr merged into stdout)."""
    return subprocess.Popen(
        hpo_cmd(*args),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run SQL on a study database with the plain sqlite3 module."""
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def user_attrs(db: Path, trial_number: int) -> dict[str, Any]:
    """User attributes of a trial, JSON-decoded."""
    import json

    rows = query(
        db,
        "select a.key, a.value_json from trial_user_attributes a join trials t "
        "on a.trial_id = t.trial_id where t.number = ?",
        trial_number,
    )
    return {key: json.loads(value) for key, value in rows}


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except sqlite3.OperationalError:  # the database is being created
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def toy_args(tmp_path: Path) -> list[str]:
    """Overrides for a quick toy study stored under ``tmp_path``."""
    return ["study=toy", f"storage.dir={tmp_path / '_optuna'}", "study.epoch_s=0.01"]
