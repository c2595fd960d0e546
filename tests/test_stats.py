"""``hpo stats``: docs/sql.md is the code's SQL, and sqlite3 on it gives ``--json``'s numbers."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.look import queries
from tests.look import ROOT, make_toy_study, run_look

DOC = ROOT / "docs" / "sql.md"
BLOCK = re.compile(r"```sql\n(-- name: (\w+)\n.*?)\n```", re.S)


def doc_queries() -> dict[str, str]:
    """The named ``sql`` blocks of docs/sql.md."""
    return {name: text for text, name in BLOCK.findall(DOC.read_text())}


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real toy study, then GPU-only attributes a CPU run cannot write, added with SQL.

    Even trials get ``device=sim:0``, a ``peak_vram_mib`` and a ``bracket``, so the GPU-seconds,
    VRAM and bracket queries have rows to compute; trial 1 becomes a memory-estimate pre-prune.
    """
    db = make_toy_study(tmp_path_factory.mktemp("stats"))
    with sqlite3.connect(db) as conn:
        ids = conn.execute("select trial_id, number from trials order by number").fetchall()
        for trial_id, number in ids:
            if number % 2 == 0:
                conn.execute(
                    "update trial_user_attributes set value_json = '\"sim:0\"' "
                    "where trial_id = ? and key = 'device'",
                    (trial_id,),
                )
                for key, value in (("peak_vram_mib", 1000 + 37 * number), ("bracket", number % 4)):
                    conn.execute(  # the supervisor records a real bracket already
                        "delete from trial_user_attributes where trial_id = ? and key = ?",
                        (trial_id, key),
                    )
                    conn.execute(
                        "insert into trial_user_attributes (trial_id, key, value_json) "
                        "values (?, ?, ?)",
                        (trial_id, key, json.dumps(value)),
                    )
        trial_1 = ids[1][0]
        conn.execute("delete from trial_intermediate_values where trial_id = ?", (trial_1,))
        conn.execute("update trials set state = 'PRUNED' where trial_id = ?", (trial_1,))
        conn.execute(
            "update trial_user_attributes set value_json = '\"memory_estimate\"' "
            "where trial_id = ? and key = 'end_reason'",
            (trial_1,),
        )
    return db


def stats_json(db: Path, *args: str) -> dict[str, Any]:
    result = run_look(
        db.parent.parent, "stats", "--json", "study=toy", f"storage.dir={db.parent}", *args
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sqlite3_cli(db: Path, sql: str, binds: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one query with the sqlite3 command line, parameters set with ``.param set``."""
    cmds = ["-cmd", ".timeout 30000"]  # the CLI's default is to fail at once on a busy file
    for key, value in {"study": "toy", **binds}.items():
        literal = "NULL" if value is None else (repr(value) if value != "" else "''")
        cmds += ["-cmd", f".param set :{key} {literal}"]
    out = subprocess.run(
        ["sqlite3", "-json", *cmds, str(db)],
        input=sql,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return json.loads(out) if out.strip() else []


def assert_rows_equal(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [list(r) for r in got] == [list(r) for r in want]
    for g, w in zip(got, want, strict=True):
        for key in w:
            if isinstance(w[key], float):
                assert g[key] == pytest.approx(w[key], rel=1e-12), key
            else:
                assert g[key] == w[key], key


def test_docs_sql_is_the_code_sql() -> None:
    assert doc_queries() == {name: sql for name, sql in queries.STATS_QUERIES.items()}


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="sqlite3 command line not installed")
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--group-by", "family,width", "--vram-threshold-mib", "1200"],
        ["--group-by", "family", "--memory-key", "peak_rss_mib", "--vram-threshold-mib", "0"],
    ],
)
def test_stats_json_equals_docs_sql_run_with_sqlite3(study_db: Path, args: list[str]) -> None:
    stats = stats_json(study_db, *args)
    binds = stats["parameters"]
    for name, sql in doc_queries().items():
        assert_rows_equal(stats[name], sqlite3_cli(study_db, sql, binds))
    assert stats["gpu_seconds"] and stats["memory_by_group"] and stats["pruned_by_rung"]


def test_stats_figures_match_optuna(study_db: Path) -> None:
    stats = stats_json(study_db, "--group-by", "family", "--vram-threshold-mib", "1200")
    trials = optuna.load_study(study_name="toy", storage=f"sqlite:///{study_db}").trials
    by_state = {r["state"]: r["n"] for r in stats["state_counts"]}
    assert by_state == {s: sum(t.state.name == s for t in trials) for s in by_state}
    assert sum(r["pct"] for r in stats["state_counts"]) == pytest.approx(100.0)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    rungs = {r["rung"]: r["n"] for r in stats["pruned_by_rung"]}
    assert rungs == {
        step: sum(t.last_step == step for t in pruned) for step in {t.last_step for t in pruned}
    }
    assert stats["memory_failures"] == [
        {"pre_pruned": 1, "oom": 0, "cap_exceeded": 0, "cuda_error": 0}
    ]
    sim = [t for t in trials if t.user_attrs.get("device") == "sim:0"]
    gpu = {r["state"]: r["gpu_s"] for r in stats["gpu_seconds"]}
    for state, seconds in gpu.items():
        want = sum(t.user_attrs["duration_s"] for t in sim if t.state.name == state)
        assert seconds == pytest.approx(want)
    for row in stats["memory_by_group"]:
        vram = [
            t.user_attrs["peak_vram_mib"]
            for t in trials
            if "peak_vram_mib" in t.user_attrs and t.params["family"] == row["value1"]
        ]
        assert row["n"] == len(vram) and row["max_mib"] == max(vram)
        assert row["median_mib"] == statistics.median(vram)
        assert row["n_over"] == sum(v > 1200 for v in vram)
    over = [r["number"] for r in stats["over_threshold"]]
    assert sorted(over) == sorted(
        t.number for t in trials if t.user_attrs.get("peak_vram_mib", 0) > 1200
    )


def _pruning_study(directory: Path) -> Path:
    """A study written trial by trial: two families, complete and pruned trials on a GPU, a
    pruned trial on the CPU and a pre-pruned one, with known durations and curves."""
    db = directory / "_optuna" / "toy.db"
    db.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="toy", storage=f"sqlite:///{db}", direction="maximize")
    dist = {"family": optuna.distributions.CategoricalDistribution(["a", "b"])}
    rows = [  # family, state, end_reason, device, duration_s, curve
        ("a", "COMPLETE", "complete", "sim:0", 12.0, [0.2, 0.4, 0.5, 0.6]),
        ("a", "COMPLETE", "complete", "sim:0", 8.0, [0.1, 0.3, 0.5, 0.7]),
        ("a", "PRUNED", "pruned", "sim:0", 2.0, [0.3]),  # at the median of step 1: not above
        ("a", "PRUNED", "pruned", "sim:0", 5.0, [0.0, 0.1]),
        ("b", "COMPLETE", "complete", "sim:0", 30.0, [0.5, 0.6, 0.7]),
        ("b", "PRUNED", "pruned", "sim:0", 10.0, [0.4]),
        ("b", "PRUNED", "pruned", "cpu", 10.0, [0.45]),  # not on a GPU: saved nothing
        ("a", "PRUNED", "memory_estimate", "sim:0", 0.0, []),  # pre-pruned: not the pruner's
    ]
    for family, state, reason, device, duration, curve in rows:
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState[state],
                value=max(curve) if state == "COMPLETE" else None,
                params={"family": family},
                distributions=dist,
                intermediate_values=dict(enumerate(curve, start=1)),
                user_attrs={"end_reason": reason, "device": device, "duration_s": duration},
            )
        )
    return db


def test_pruning_figures_by_hand(tmp_path: Path) -> None:
    """What pruning saved, by the definition in docs/sql.md: family a's completed trials take
    2.5 s per step (12 / 4 and 8 / 4) over 4 steps, b's 10 s over 3."""
    db = _pruning_study(tmp_path)
    stats = stats_json(db, "--group-by", "family")
    saved = 2.5 * (4 - 1) + 2.5 * (4 - 2) + 10.0 * (3 - 1)
    assert stats["pruning_saved"] == [
        {"n_pruned": 3, "n_estimated": 3, "saved_gpu_s": saved, "spent_gpu_s": 67.0}
    ]
    # step 1 values 0.2 0.1 0.3 0.0 0.5 0.4 0.45: median 0.3; step 2 (0.4 0.3 0.1 0.6): 0.35
    assert stats["pruned_vs_median"] == [{"n_pruned": 4, "n_above_median": 2}]


def test_stats_text_prints_every_section(study_db: Path) -> None:
    result = run_look(
        study_db.parent.parent,
        "stats",
        "study=toy",
        f"storage.dir={study_db.parent}",
        "--vram-threshold-mib",
        "1200",
        "--group-by",
        "family,width",
    )
    assert result.returncode == 0, result.stderr
    for title in (
        "trials by state",
        "trials by end_reason",
        "duration by state",
        "pruned trials by last reported epoch",
        "Hyperband brackets",
        "GPU-seconds by state",
        "GPU-seconds not spent",
        "better than the eventual median",
        "peak_vram_mib by family x width",
        "trials over 1200 MiB",
        "memory failures",
    ):
        assert title in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["storage.dir=missing"], "does not exist"),
        (["--vram-threshold-mib", "-1"], "--vram-threshold-mib must be >= 0, got -1"),
        (["--group-by", "a,b,c"], "--group-by takes one or two parameter names, got 'a,b,c'"),
        (
            ["study.name=nope", "storage.url=sqlite:///{db}"],
            r"no study .nope. in .*\(studies there: toy\)",
        ),
    ],
)
def test_stats_user_mistakes_exit_2_and_create_nothing(
    study_db: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [a.format(db=study_db) for a in args]
    before = sorted(p.name for p in study_db.parent.iterdir())
    result = run_look(tmp_path, "stats", "study=toy", *args)
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    assert not (study_db.parent / "nope.db").exists()
    assert set(sorted(p.name for p in study_db.parent.iterdir())) <= set(before) | {
        "toy.db-wal",
        "toy.db-shm",
    }


def test_stats_on_postgres_equals_sqlite(tmp_path: Path, study_db: Path) -> None:
    url = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("HPO_TEST_POSTGRES_URL is not set in CI")
        pytest.skip("HPO_TEST_POSTGRES_URL not set")
    name = f"toy_{uuid.uuid4().hex[:8]}"
    optuna.copy_study(
        from_study_name="toy",
        from_storage=f"sqlite:///{study_db}",
        to_storage=url,
        to_study_name=name,
    )
    try:
        args = ["--group-by", "family,width", "--vram-threshold-mib", "1200"]
        on_pg = run_look(
            tmp_path,
            "stats",
            "--json",
            "study=toy",
            f"study.name={name}",
            f"storage.url={url}",
            *args,
        )
        assert on_pg.returncode == 0, on_pg.stderr
        pg = json.loads(on_pg.stdout)
        lite = stats_json(study_db, *args)
        for key in queries.STATS_QUERIES:
            assert_rows_equal(pg[key], lite[key])
    finally:
        optuna.delete_study(study_name=name, storage=url)
