"""The SQL behind ``hpo stats`` and ``hpo status``, over Optuna's own RDB schema.

Every query is a named string here and, word for word, a ``sql`` block in ``docs/sql.md`` (a
test keeps the two equal and runs the document's copies with the ``sqlite3`` command line).
The text is SQLite's dialect; :func:`for_dialect` swaps the two SQLite-only expressions for
their PostgreSQL forms. Bind parameters: ``:study`` (the study name) everywhere; the memory
queries also take ``:param1``, ``:param2`` (parameter names to group by), ``:memory_key`` (the
user attribute, e.g. ``peak_vram_mib``) and ``:threshold_mib`` (NULL for none).
"""

from __future__ import annotations

# A trial's duration when it has no ``duration_s`` attribute (e.g. a trial killed with its study).
_SQLITE_DURATION = "(julianday(t.datetime_complete) - julianday(t.datetime_start)) * 86400.0"
_PG_DURATION = "EXTRACT(EPOCH FROM t.datetime_complete - t.datetime_start)"
# A categorical parameter is stored as the index of its choice; this looks the choice up.
_SQLITE_CHOICE = (
    "json_extract(p.distribution_json, '$.attributes.choices[' || CAST(p.param_value AS INTEGER)"
    " || ']')"
)
_PG_CHOICE = (
    "(CAST(p.distribution_json AS json) -> 'attributes' -> 'choices' ->> "
    "CAST(p.param_value AS INTEGER))"
)

STATE_COUNTS = """\
-- name: state_counts
WITH st AS (
  SELECT t.trial_id, t.state
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study
)
SELECT state, COUNT(*) AS n, 100.0 * COUNT(*) / (SELECT COUNT(*) FROM st) AS pct
FROM st
GROUP BY state
ORDER BY n DESC, CAST(state AS TEXT);"""

END_REASON_COUNTS = """\
-- name: end_reason_counts
WITH st AS (
  SELECT t.trial_id,
         (SELECT replace(a.value_json, '"', '') FROM trial_user_attributes a
          WHERE a.trial_id = t.trial_id AND a.key = 'end_reason') AS end_reason
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study
)
SELECT COALESCE(end_reason, '(none)') AS end_reason, COUNT(*) AS n,
       100.0 * COUNT(*) / (SELECT COUNT(*) FROM st) AS pct
FROM st
GROUP BY 1
ORDER BY n DESC, 1;"""

DURATION_BY_STATE = f"""\
-- name: duration_by_state
WITH st AS (
  SELECT t.state,
         COALESCE((SELECT CAST(a.value_json AS DOUBLE PRECISION) FROM trial_user_attributes a
                   WHERE a.trial_id = t.trial_id AND a.key = 'duration_s'),
                  {_SQLITE_DURATION}) AS duration_s
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')
)
SELECT state, COUNT(*) AS n, AVG(duration_s) AS avg_s, SUM(duration_s) AS total_s
FROM st
GROUP BY state
ORDER BY CAST(state AS TEXT);"""

PRUNED_BY_RUNG = """\
-- name: pruned_by_rung
WITH st AS (
  SELECT t.trial_id
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study AND t.state = 'PRUNED'
), last_step AS (
  SELECT st.trial_id, MAX(v.step) AS rung
  FROM st LEFT JOIN trial_intermediate_values v ON v.trial_id = st.trial_id
  GROUP BY st.trial_id
)
SELECT rung, COUNT(*) AS n
FROM last_step
GROUP BY rung
ORDER BY rung IS NULL, rung;"""

PRUNED_BY_BRACKET = """\
-- name: pruned_by_bracket
WITH st AS (
  SELECT t.state,
         (SELECT CAST(a.value_json AS INTEGER) FROM trial_user_attributes a
          WHERE a.trial_id = t.trial_id AND a.key = 'bracket') AS bracket
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')
)
SELECT bracket, COUNT(*) AS n,
       COUNT(CASE WHEN state = 'PRUNED' THEN 1 END) AS n_pruned,
       100.0 * COUNT(CASE WHEN state = 'PRUNED' THEN 1 END) / COUNT(*) AS pct_pruned
FROM st
GROUP BY bracket
ORDER BY bracket IS NULL, bracket;"""

GPU_SECONDS = f"""\
-- name: gpu_seconds
WITH st AS (
  SELECT t.state,
         (SELECT replace(a.value_json, '"', '') FROM trial_user_attributes a
          WHERE a.trial_id = t.trial_id AND a.key = 'device') AS device,
         COALESCE((SELECT CAST(a.value_json AS DOUBLE PRECISION) FROM trial_user_attributes a
                   WHERE a.trial_id = t.trial_id AND a.key = 'duration_s'),
                  {_SQLITE_DURATION}) AS duration_s
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')
)
SELECT state, COUNT(*) AS n, SUM(duration_s) AS gpu_s
FROM st
WHERE device LIKE 'cuda:%' OR device LIKE 'sim:%'
GROUP BY state
ORDER BY CAST(state AS TEXT);"""

# Shared by the two memory queries: each trial's memory attribute and two parameter values.
_MEMORY_CTES = f"""\
WITH st AS (
  SELECT t.trial_id, t.number, t.state
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study
), pv AS (
  SELECT p.trial_id, p.param_name, p.param_value AS sort_key,
         CASE WHEN p.distribution_json LIKE '{{"name": "CategoricalDistribution"%'
              THEN CAST({_SQLITE_CHOICE} AS TEXT)
              WHEN p.distribution_json LIKE '{{"name": "IntDistribution"%'
              THEN CAST(CAST(p.param_value AS INTEGER) AS TEXT)
              ELSE CAST(p.param_value AS TEXT) END AS value
  FROM trial_params p JOIN st ON st.trial_id = p.trial_id
), mem AS (
  SELECT st.number, st.state, v1.value AS value1, v2.value AS value2,
         v1.sort_key AS key1, v2.sort_key AS key2,
         CAST(a.value_json AS DOUBLE PRECISION) AS mib
  FROM st
  JOIN trial_user_attributes a ON a.trial_id = st.trial_id AND a.key = :memory_key
  LEFT JOIN pv v1 ON v1.trial_id = st.trial_id AND v1.param_name = :param1
  LEFT JOIN pv v2 ON v2.trial_id = st.trial_id AND v2.param_name = :param2
)"""

MEMORY_BY_GROUP = f"""\
-- name: memory_by_group
{_MEMORY_CTES}, ranked AS (
  SELECT value1, value2, key1, key2, mib,
         ROW_NUMBER() OVER (PARTITION BY value1, value2 ORDER BY mib) AS rn,
         COUNT(*) OVER (PARTITION BY value1, value2) AS cnt
  FROM mem
)
SELECT value1, value2, COUNT(*) AS n, MAX(mib) AS max_mib,
       AVG(CASE WHEN rn IN ((cnt + 1) / 2, (cnt + 2) / 2) THEN mib END) AS median_mib,
       COUNT(CASE WHEN mib > :threshold_mib THEN 1 END) AS n_over
FROM ranked
GROUP BY value1, value2
ORDER BY MIN(key1), MIN(key2);"""

OVER_THRESHOLD = f"""\
-- name: over_threshold
{_MEMORY_CTES}
SELECT number, state, value1, value2, mib
FROM mem
WHERE mib > :threshold_mib
ORDER BY mib DESC, number;"""

MEMORY_FAILURES = """\
-- name: memory_failures
WITH st AS (
  SELECT (SELECT replace(a.value_json, '"', '') FROM trial_user_attributes a
          WHERE a.trial_id = t.trial_id AND a.key = 'end_reason') AS end_reason
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study
)
SELECT COUNT(CASE WHEN end_reason = 'memory_estimate' THEN 1 END) AS pre_pruned,
       COUNT(CASE WHEN end_reason = 'oom' THEN 1 END) AS oom,
       COUNT(CASE WHEN end_reason = 'cap_exceeded' THEN 1 END) AS cap_exceeded,
       COUNT(CASE WHEN end_reason = 'cuda_error' THEN 1 END) AS cuda_error
FROM st;"""

PRUNING_SAVED = f"""\
-- name: pruning_saved
WITH st AS (
  SELECT t.trial_id, t.state,
         (SELECT replace(a.value_json, '"', '') FROM trial_user_attributes a
          WHERE a.trial_id = t.trial_id AND a.key = 'device') AS device,
         (SELECT replace(a.value_json, '"', '') FROM trial_user_attributes a
          WHERE a.trial_id = t.trial_id AND a.key = 'end_reason') AS end_reason,
         COALESCE((SELECT CAST(a.value_json AS DOUBLE PRECISION) FROM trial_user_attributes a
                   WHERE a.trial_id = t.trial_id AND a.key = 'duration_s'),
                  {_SQLITE_DURATION}) AS duration_s,
         (SELECT MAX(v.step) FROM trial_intermediate_values v
          WHERE v.trial_id = t.trial_id) AS last_step
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED')
), pv AS (
  SELECT p.trial_id, p.param_name,
         CASE WHEN p.distribution_json LIKE '{{"name": "CategoricalDistribution"%'
              THEN CAST({_SQLITE_CHOICE} AS TEXT)
              WHEN p.distribution_json LIKE '{{"name": "IntDistribution"%'
              THEN CAST(CAST(p.param_value AS INTEGER) AS TEXT)
              ELSE CAST(p.param_value AS TEXT) END AS value
  FROM trial_params p JOIN st ON st.trial_id = p.trial_id
), gpu AS (
  SELECT st.state, st.end_reason, st.duration_s, st.last_step,
         COALESCE(v1.value, '') AS g1, COALESCE(v2.value, '') AS g2
  FROM st
  LEFT JOIN pv v1 ON v1.trial_id = st.trial_id AND v1.param_name = :param1
  LEFT JOIN pv v2 ON v2.trial_id = st.trial_id AND v2.param_name = :param2
  WHERE st.device LIKE 'cuda:%' OR st.device LIKE 'sim:%'
), full_runs AS (
  SELECT g1, g2, AVG(duration_s / last_step) AS s_per_step, MAX(last_step) AS steps
  FROM gpu
  WHERE state = 'COMPLETE' AND last_step > 0
  GROUP BY g1, g2
), pruned AS (
  SELECT g.last_step, f.s_per_step, f.steps
  FROM gpu g LEFT JOIN full_runs f ON f.g1 = g.g1 AND f.g2 = g.g2
  WHERE g.state = 'PRUNED' AND COALESCE(g.end_reason, 'pruned') = 'pruned'
    AND g.last_step IS NOT NULL
)
SELECT COUNT(*) AS n_pruned, COUNT(s_per_step) AS n_estimated,
       COALESCE(SUM(CASE WHEN steps > last_step THEN s_per_step * (steps - last_step) END), 0)
         AS saved_gpu_s,
       (SELECT COALESCE(SUM(duration_s), 0) FROM gpu) AS spent_gpu_s
FROM pruned;"""

PRUNED_VS_MEDIAN = """\
-- name: pruned_vs_median
WITH st AS (
  SELECT t.trial_id, t.state,
         (SELECT replace(a.value_json, '"', '') FROM trial_user_attributes a
          WHERE a.trial_id = t.trial_id AND a.key = 'end_reason') AS end_reason
  FROM trials t JOIN studies s ON s.study_id = t.study_id
  WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED')
), sense AS (
  SELECT CASE WHEN CAST(d.direction AS TEXT) = 'MINIMIZE' THEN -1.0 ELSE 1.0 END AS k
  FROM study_directions d JOIN studies s ON s.study_id = d.study_id
  WHERE s.study_name = :study AND d.objective = 0
), vals AS (
  SELECT v.trial_id, v.step, v.intermediate_value * (SELECT k FROM sense) AS x
  FROM trial_intermediate_values v JOIN st ON st.trial_id = v.trial_id
  WHERE v.intermediate_value IS NOT NULL
), ranked AS (
  SELECT step, x, ROW_NUMBER() OVER (PARTITION BY step ORDER BY x) AS rn,
         COUNT(*) OVER (PARTITION BY step) AS cnt
  FROM vals
), medians AS (
  SELECT step, AVG(CASE WHEN rn IN ((cnt + 1) / 2, (cnt + 2) / 2) THEN x END) AS median_x
  FROM ranked
  GROUP BY step
), pruned AS (
  SELECT st.trial_id, MAX(v.step) AS step
  FROM st JOIN vals v ON v.trial_id = st.trial_id
  WHERE st.state = 'PRUNED' AND COALESCE(st.end_reason, 'pruned') = 'pruned'
  GROUP BY st.trial_id
)
SELECT COUNT(*) AS n_pruned,
       COUNT(CASE WHEN v.x > m.median_x THEN 1 END) AS n_above_median
FROM pruned p
JOIN vals v ON v.trial_id = p.trial_id AND v.step = p.step
JOIN medians m ON m.step = p.step;"""

#: The queries of ``hpo stats``, in the order of its report and of docs/sql.md.
STATS_QUERIES: dict[str, str] = {
    "state_counts": STATE_COUNTS,
    "end_reason_counts": END_REASON_COUNTS,
    "duration_by_state": DURATION_BY_STATE,
    "pruned_by_rung": PRUNED_BY_RUNG,
    "pruned_by_bracket": PRUNED_BY_BRACKET,
    "gpu_seconds": GPU_SECONDS,
    "pruning_saved": PRUNING_SAVED,
    "pruned_vs_median": PRUNED_VS_MEDIAN,
    "memory_by_group": MEMORY_BY_GROUP,
    "over_threshold": OVER_THRESHOLD,
    "memory_failures": MEMORY_FAILURES,
}

# ---- ``hpo status`` (not in docs/sql.md: plain look-ups) ----

STUDY_ID = "SELECT study_id FROM studies WHERE study_name = :study;"

STUDY_NAMES = "SELECT study_name FROM studies ORDER BY study_name;"

NODES = """\
SELECT a.key, a.value_json FROM study_system_attributes a
JOIN studies s ON s.study_id = a.study_id
WHERE s.study_name = :study AND a.key LIKE 'hpo:node:%';"""

RUNNING_BY_NODE = """\
SELECT u.value_json AS node, COUNT(*) AS n
FROM trials t JOIN studies s ON s.study_id = t.study_id
JOIN trial_user_attributes u ON u.trial_id = t.trial_id AND u.key = 'node_id'
WHERE s.study_name = :study AND t.state = 'RUNNING'
GROUP BY u.value_json;"""

FINISHED_BY_NODE = """\
SELECT u.value_json AS node, t.datetime_complete
FROM trials t JOIN studies s ON s.study_id = t.study_id
JOIN trial_user_attributes u ON u.trial_id = t.trial_id AND u.key = 'node_id'
WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED')
ORDER BY t.datetime_complete DESC LIMIT 5000;"""

RUN_ATTRS = """\
SELECT a.key, a.value_json FROM study_system_attributes a
JOIN studies s ON s.study_id = a.study_id
WHERE s.study_name = :study AND a.key LIKE 'hpo:run_%';"""

HAS_ATTR = """\
SELECT COUNT(*) AS n
FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id
JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = :study AND a.key = :key;"""

STUDY_TIMES = """\
SELECT MIN(t.datetime_start) AS first_start, MAX(t.datetime_complete) AS last_complete
FROM trials t JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = :study;"""

RUNNING_TRIALS = """\
SELECT t.trial_id, t.number, t.datetime_start
FROM trials t JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = :study AND t.state = 'RUNNING'
ORDER BY t.number;"""

RECENT_TRIALS = """\
SELECT t.trial_id, t.number, t.state, v.value
FROM trials t JOIN studies s ON s.study_id = t.study_id
LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')
ORDER BY t.datetime_complete DESC, t.number DESC
LIMIT :limit;"""

TRIAL_PARAMS = f"""\
SELECT p.param_name AS name,
       CASE WHEN p.distribution_json LIKE '{{"name": "CategoricalDistribution"%'
            THEN CAST({_SQLITE_CHOICE} AS TEXT)
            WHEN p.distribution_json LIKE '{{"name": "IntDistribution"%'
            THEN CAST(CAST(p.param_value AS INTEGER) AS TEXT)
            ELSE CAST(p.param_value AS TEXT) END AS value
FROM trial_params p
WHERE p.trial_id = :trial_id
ORDER BY p.param_id;"""

TRIAL_ATTRS = """\
SELECT a.key, a.value_json FROM trial_user_attributes a WHERE a.trial_id = :trial_id;"""

LAST_STEP = """\
SELECT MAX(v.step) AS step FROM trial_intermediate_values v WHERE v.trial_id = :trial_id;"""


# ``hpo plan``: every ended trial, its timing attributes and its parameters, in three reads.
PLAN_TRIALS = """\
SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete
FROM trials t JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')
ORDER BY t.number;"""

PLAN_ATTRS = """\
SELECT a.trial_id, a.key, a.value_json
FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id
JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')
  AND a.key IN ('end_reason', 'duration_s', 'admit_wait_s', 'peak_vram_mib', 'vram_reserved_mib',
                'error', 'steady_vram_mib', 'settled_after_s', 'vram_settled_mib',
                'est_vram_upper_mib', 'vram_budget_mib', 'worker_pid', 'device', 'node_id',
                'retry_of', 'micro_batch', 'accum_steps');"""

PLAN_PARAMS = """\
SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json
FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id
JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL');"""

RECENT_COMPLETIONS = """\
SELECT t.datetime_complete
FROM trials t JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = :study AND t.state IN ('COMPLETE', 'PRUNED')
ORDER BY t.datetime_complete DESC
LIMIT :limit;"""


def for_dialect(sql: str, dialect: str) -> str:
    """The query for a SQLAlchemy dialect name (``sqlite`` as written, ``postgresql``)."""
    if dialect == "sqlite":
        return sql
    if dialect == "postgresql":
        return sql.replace(_SQLITE_DURATION, _PG_DURATION).replace(_SQLITE_CHOICE, _PG_CHOICE)
    raise ValueError(f"dialect must be sqlite or postgresql, got {dialect!r}")
