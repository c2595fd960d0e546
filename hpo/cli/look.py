"""The commands that look at a study without changing it: stats, status, dashboard, report.

Each selects its study with the same Hydra overrides as ``hpo tune`` (``study=criteria``,
``study.name=...``, ``storage.dir=...``); a storage or study that does not exist is a
:class:`ConfigError` (one line, exit 2) and nothing is created. All of them open the study
read-only (:mod:`hpo.storage.readonly`); only ``dashboard --allow-writes`` may change it. None of
them imports torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from hpo.errors import ConfigError

logger = logging.getLogger(__name__)


def add_look_commands(sub: Any) -> None:
    """Add the subcommands to ``hpo``'s subparsers."""
    stats = _with_study(sub.add_parser("stats", help="trial counts, durations, pruning, memory"))
    stats.add_argument("--json", action="store_true", help="print the query results as JSON")
    stats.add_argument(
        "--vram-threshold-mib",
        type=float,
        default=None,
        metavar="MIB",
        help="also list the trials whose peak memory exceeds MIB",
    )
    stats.add_argument(
        "--group-by",
        default=None,
        metavar="P1[,P2]",
        help="one or two parameters to group peak memory by (default: the study's memory "
        "groups and scaling parameters, e.g. model,batch_size)",
    )
    stats.add_argument(
        "--memory-key",
        default=None,
        metavar="ATTR",
        help="user attribute of the memory figures (default: peak_vram_mib, else peak_rss_mib)",
    )
    status = _with_study(sub.add_parser("status", help="live view of a running study"))
    status.add_argument("--once", action="store_true", help="print one snapshot and exit")
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes"
    )
    dash = _with_study(sub.add_parser("dashboard", help="optuna-dashboard on the study's storage"))
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    dash.add_argument(
        "--allow-writes",
        action="store_true",
        help="let the browser change and delete the study (default: the storage refuses writes)",
    )
    _add_plan(sub)
    report = _with_study(sub.add_parser("report", help="HTML report with plots, and a PNG"))
    report.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default: reports/<study>)"
    )
    report.add_argument(
        "--budget-mib",
        type=float,
        default=None,
        metavar="MIB",
        help="per-trial memory budget drawn on the memory plot",
    )
    report.add_argument(
        "--memory-param",
        default=None,
        metavar="NAME",
        help="parameter on the memory plot's x axis (default: the study's first memory scaling "
        "parameter, else its first numeric one)",
    )


def _add_plan(sub: Any) -> None:
    plan = _with_study(
        sub.add_parser("plan", help="what-if: trials/hour, OOMs and hours on other cards")
    )
    plan.add_argument(
        "--workload", metavar="FILE", help="replay a workload file instead of the study's history"
    )
    plan.add_argument("--jobs", type=int, default=200, help="configurations drawn (--workload)")
    plan.add_argument("--trials", type=int, help="target (default: the run's n_trials)")
    plan.add_argument("--card-gib", metavar="G[,G]", help="card sizes (default: the study's)")
    plan.add_argument("--cards", default="1", metavar="N[,N]", help="cards per node (default 1)")
    plan.add_argument(
        "--policies",
        default="par1,par2,par3,par4,auto,auto-oc",
        metavar="P[,P]",
        help="parN (memory-blind, fixed PAR), auto (memory-aware, reserving upper estimates) "
        "and auto-oc (memory-aware under safe overcommit); default par1..par4,auto,auto-oc",
    )
    plan.add_argument("--setup-s", type=float, help="seconds an OOM costs (default: measured)")
    plan.add_argument("--json", action="store_true", help="print the scenarios as JSON")


def _with_study(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config-dir", help="directory holding config.yaml (default: ./conf)")
    add_sweep_arg(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides that select the study, e.g. study=criteria study.name=foo",
    )
    return parser


def _study_ref(args: argparse.Namespace) -> Any:
    from hpo.look.db import StudyRef

    return StudyRef.from_settings(_settings(args))


def _settings(args: argparse.Namespace) -> Any:
    return study_settings(args)


def add_sweep_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sweep",
        metavar="NAME",
        help="the study of a Hydra sweep (hydra/sweeper=hpo) run from this directory: its "
        "hydra.sweeper.study_name, else the app's name; KEY=VALUE may add storage=... ",
    )


def study_settings(args: argparse.Namespace) -> Any:
    """The settings that select the study of ``args``: a study file's, or with ``--sweep`` a
    Hydra sweep's (hpo's built-in groups alone: the directory's ``conf/`` is the app's)."""
    from hpo.config import Settings, compose
    from hpo.config.compose import builtin_conf_dir

    if getattr(args, "sweep", None) is None:
        return Settings.from_config(compose(args.overrides, args.config_dir))
    if args.config_dir is not None:
        raise ConfigError("--sweep and --config-dir cannot be combined: a sweep has no study file")
    sweep = ["study=base_api", f"study.name={args.sweep}", "study.objective=hydra:sweep"]
    settings = Settings.from_config(compose([*sweep, *args.overrides], str(builtin_conf_dir())))
    return _with_recorded_space(settings)


def _with_recorded_space(settings: Any) -> Any:
    """A sweep's settings with the search space its trials recorded (a sweep declares it in
    the app's config, which the look commands do not read)."""
    import dataclasses

    from hpo.api import _param
    from hpo.config.settings import memory_groups
    from hpo.storage import display_url, storage_exists
    from hpo.storage.readonly import open_optuna_storage

    url, name = settings.storage.url, settings.study.name
    if not storage_exists(url):
        raise ConfigError(f"no study {name!r}: {display_url(url)} does not exist")
    storage = open_optuna_storage(url, settings.storage.busy_timeout_s)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError as e:
        raise ConfigError(f"no study {name!r} in {display_url(url)}") from e
    space: dict[str, Any] = {}
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        space.update(trial.distributions)
    conf = {key: _param(key, dist) for key, dist in space.items()}
    study = dataclasses.replace(
        settings.study, space=space, space_conf=conf, groups=memory_groups(conf, {})
    )
    return dataclasses.replace(settings, study=study)


def _quiet_logging(debug: bool) -> None:
    import optuna

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger("hpo")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _group_by(given: str | None, settings: Any) -> list[str]:
    """``--group-by`` names, checked against the study's space; by default its own memory
    groups, then its scaling parameters (at most two)."""
    study = settings.study
    if given is None:
        names = [*study.groups, *study.scaling][:2] or list(study.space)[:1]
        if not names:
            raise ConfigError(f"study {study.name!r} has no parameters yet (no trial ran)")
    else:
        names = [n.strip() for n in given.split(",") if n.strip()]
    if not 1 <= len(names) <= 2:
        raise ConfigError(f"--group-by takes one or two parameter names, got {given!r}")
    unknown = [n for n in names if n not in study.space]
    if unknown:
        known = ", ".join(study.space)
        raise ConfigError(f"--group-by {unknown[0]!r} is not a parameter of the study ({known})")
    return names


def memory_param(given: str | None, settings: Any) -> str:
    """The report's x axis: ``--memory-param``, else the first scaling parameter, else the
    first numeric parameter, else the first one."""
    space = settings.study.space
    if given is not None:
        if given not in space:
            known = ", ".join(space)
            raise ConfigError(f"--memory-param {given!r} is not a parameter of the study ({known})")
        return given
    numeric = [n for n, d in settings.study.space_conf.items() if d.get("type") != "categorical"]
    candidates = [*settings.study.scaling, *numeric] or list(space)
    if not candidates:
        raise ConfigError(f"study {settings.study.name!r} has no parameters yet (no trial ran)")
    return candidates[0]


def _stats(args: argparse.Namespace) -> int:
    from hpo.look.db import StudyDB, StudyRef
    from hpo.look.stats import StatsParams, collect, render

    settings = _settings(args)
    names = _group_by(args.group_by, settings)
    threshold = args.vram_threshold_mib
    if threshold is not None and threshold < 0:
        raise ConfigError(f"--vram-threshold-mib must be >= 0, got {threshold:g}")
    params = StatsParams((names[0], names[1] if len(names) > 1 else ""), args.memory_key, threshold)
    with StudyDB(StudyRef.from_settings(settings)) as db:
        result = collect(db, params)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def _status(args: argparse.Namespace) -> int:
    from hpo.look.status import watch

    if args.interval <= 0:
        raise ConfigError(f"--interval must be > 0, got {args.interval:g}")
    from hpo.look.db import StudyRef

    _quiet_logging(args.debug)
    settings = _settings(args)
    watch(
        StudyRef.from_settings(settings),
        settings.devices,
        once=args.once,
        interval_s=args.interval,
    )
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from hpo.look.dashboard import serve

    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    _quiet_logging(args.debug)
    serve(_study_ref(args), host=args.host, port=args.port, allow_writes=args.allow_writes)
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpo.look.report import write_report

    if args.budget_mib is not None and args.budget_mib <= 0:
        raise ConfigError(f"--budget-mib must be > 0, got {args.budget_mib:g}")
    _quiet_logging(args.debug)
    from hpo.look.db import StudyRef

    settings = _settings(args)
    ref = StudyRef.from_settings(settings)
    param = memory_param(args.memory_param, settings)
    out = Path(args.out) if args.out else Path("reports") / ref.name
    html, png = write_report(ref, out, budget_mib=args.budget_mib, memory_param=param)
    print(f"report: {html}")
    print(f"memory plot: {png}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from hpo.look import plan
    from hpo.scheduling.replay import Policy

    settings = _settings(args)
    margin = settings.memory.device_margin_frac
    try:
        policies = [Policy.parse(p, settings.memory.max_par) for p in args.policies.split(",")]
        counts = [int(c) for c in args.cards.split(",")]
        sizes = [float(g) for g in args.card_gib.split(",")] if args.card_gib else []
    except ValueError as e:
        raise ConfigError(f"plan: {e}") from e
    if any(c < 1 for c in counts) or any(not g > 0 for g in sizes):
        raise ConfigError("plan: --cards must be >= 1 and --card-gib > 0")
    if args.jobs < 1 or (args.trials is not None and args.trials < 1):
        raise ConfigError("plan: --jobs and --trials must be >= 1")
    if args.setup_s is not None and args.setup_s < 0:
        raise ConfigError(f"--setup-s must be >= 0, got {args.setup_s:g}")
    if args.workload:
        from hpo.sim import load_workload

        wl = load_workload(args.workload)  # a mistake in it: ConfigError
        trials = plan.from_workload(wl, args.jobs)
        source, groups = f"workload {wl.name}: {args.jobs} configurations", [wl.family_param]
    else:
        from hpo.look.db import StudyDB, StudyRef

        ref = StudyRef.from_settings(settings)
        with StudyDB(ref) as db:
            ctx = _context_bytes(settings)
            space = settings.study
            trials = plan.from_study(
                db,
                margin,
                ctx,
                args.setup_s,
                space.groups,
                space.scaling,
                space.batch_param,
                space.max_accum_steps,
            )
        source, groups = f"study {ref.name} ({ref.shown})", list(settings.study.groups)
    if not sizes and trials.capacity_bytes is None:
        raise ConfigError("plan: the study ran without device memory; say --card-gib")
    sizes = sizes or [round(trials.capacity_bytes / 1024**3, 2)]  # type: ignore[operator]
    default = args.jobs if args.workload else trials.target or settings.study.n_trials
    target = args.trials or default  # a study: its latest run's n_trials, else the config's
    rows = plan.what_if(trials, target, sizes, counts, policies, margin, groups)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(plan.render(rows, trials, source))
    return 0


def _context_bytes(settings: Any) -> int:
    """A worker's context on the study's devices (0 where they cannot be opened here)."""
    from hpo.devices import context_bytes, open_devices

    try:
        return context_bytes(open_devices(settings.devices, readonly=True))
    except Exception:  # e.g. CUDA devices seen from a machine without them
        return 0


LOOK_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "stats": _stats,
    "status": _status,
    "dashboard": _dashboard,
    "report": _report,
    "plan": _plan,
}
