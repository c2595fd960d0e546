"""The ``hpo`` command line: ``hpo tune [overrides]``, and stats, status, dashboard, report.

User mistakes end as one line on stderr and exit code 2; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hpo.cli.control import add_stop_command, detach, stop
from hpo.cli.logs import setup_logging
from hpo.cli.look import LOOK_COMMANDS, add_look_commands
from hpo.errors import ConfigError, HpoError, StudyAborted

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo", description="Memory-aware Optuna hyperparameter optimisation."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tune = sub.add_parser("tune", help="run a study to its n_trials with par worker processes")
    tune.add_argument("--config-dir", help="the user's conf/ directory (default: ./conf)")
    tune.add_argument(
        "--node-id",
        help="this node's name in the study (default: $HPO_NODE_ID, else the host name)",
    )
    tune.add_argument(
        "--detach",
        action="store_true",
        help="run in the background, the log in the study's folder; stop with hpo stop",
    )
    tune.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides, e.g. study=criteria par=2 study.n_trials=20 pruner.patience=4",
    )
    init = sub.add_parser("init", help="write a runnable study NAME into this directory")
    init.add_argument("name", metavar="NAME", help="study and module name, e.g. mystudy")
    add_stop_command(sub)
    add_look_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "stop":
            return stop(args)
        if args.command in LOOK_COMMANDS:
            return LOOK_COMMANDS[args.command](args)
    except ConfigError as e:
        return _fail(args, e, EXIT_USAGE)
    except StudyAborted as e:
        return _fail(args, e, EXIT_FAILED)
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `hpo stats | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return EXIT_OK
    except HpoError as e:
        return _fail(args, e, EXIT_FAILED)
    except Exception as e:
        return _fail(args, e, EXIT_FAILED, unexpected=True)
    raise AssertionError(f"unhandled command {args.command!r}")


def _fail(args: argparse.Namespace, e: BaseException, code: int, unexpected: bool = False) -> int:
    if args.debug:
        logging.getLogger("hpo").exception("failed")
    text = f"{type(e).__name__}: {e}" if unexpected else str(e)
    print(f"hpo: error: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
    return code


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpo.cli.init import init_study

    for path in init_study(args.name, Path.cwd()):
        print(f"wrote {path}")
    print(f"run it: hpo tune study={args.name} par=2   (then: hpo stats study={args.name})")
    return EXIT_OK


def _tune(args: argparse.Namespace) -> int:
    from hpo.config import Settings, compose
    from hpo.supervisor import Supervisor

    overrides = [*args.overrides, "log_level=DEBUG"] if args.debug else list(args.overrides)
    if args.node_id:
        overrides.append(f"node_id={args.node_id}")
    settings = Settings.from_config(compose(overrides, args.config_dir))
    if args.detach:
        return detach(args, settings)
    setup_logging(settings.log_level)
    summary = Supervisor(settings).run()
    print(
        f"study {summary.study_name}: {summary.finished}/{summary.target} finished trials "
        f"in {summary.elapsed_s:.0f} s ({summary.storage_url})"
    )
    if summary.end_reasons:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.end_reasons.items()))
        print(f"this run: {reasons}")
    if summary.best is not None:
        from hpo.config.space import describe

        best, shown = summary.best, settings.study.show
        extra = ", ".join(
            _shown(key, best.user_attrs.get(key)) for key in shown if key in best.user_attrs
        )
        extra = f" ({extra})" if extra else ""
        print(f"best trial {best.number}: value {best.value:.4f}{extra} | {describe(best.params)}")
    return EXIT_INTERRUPTED if summary.interrupted else EXIT_OK


def _shown(key: str, value: object) -> str:
    """``key value``, a float to 4 decimals (a study's ``show`` attributes)."""
    return f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
