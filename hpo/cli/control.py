"""Controlling a study from any terminal: ``hpo stop`` and ``hpo tune --detach``.

Both act through the study's storage or the process table only, so they work from another
terminal (``hpo stop`` from another node too, wherever the storage is reachable).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hpo.errors import ConfigError


def add_stop_command(sub: Any) -> None:
    stop = sub.add_parser("stop", help="stop every node of a study: drain, or --now")
    stop.add_argument("--config-dir", help="the user's conf/ directory (default: ./conf)")
    stop.add_argument(
        "--now", action="store_true", help="interrupt running trials (default: let them finish)"
    )
    stop.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="select the study, e.g. study=criteria"
    )
    from hpo.cli.look import add_sweep_arg

    add_sweep_arg(stop)


def stop(args: argparse.Namespace) -> int:
    """Write the stop request into the study; every running supervisor obeys it within a few
    seconds (``hpo status`` shows the nodes leave)."""
    from hpo.cli.look import study_settings
    from hpo.storage import StudyStore, display_url, open_storage, storage_exists
    from hpo.supervisor.nodes import request_stop

    settings = study_settings(args)
    url, name = settings.storage.url, settings.study.name
    if not storage_exists(url):
        raise ConfigError(f"no study {name!r}: {display_url(url)} does not exist")
    storage = open_storage(url, settings.storage.busy_timeout_s)
    try:
        store = StudyStore(storage, name)
    except KeyError as e:
        raise ConfigError(f"no study {name!r} in {display_url(url)}") from e
    mode = "now" if args.now else "drain"
    request_stop(store, mode)
    what = "interrupting running trials" if args.now else "running trials finish, none start"
    print(f"stop ({mode}) requested for study {name} in {display_url(url)}: {what}")
    return 0


def detach(args: argparse.Namespace, settings: Any) -> int:
    """Run the same ``hpo tune`` in the background, its log in the study's folder."""
    log_dir = _log_dir(settings)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{settings.study.name}.{settings.node_id}.log"
    argv = [a for a in sys.argv[1:] if a != "--detach"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.cli", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C or closing this terminal does not reach it
            env={**os.environ, "HPO_NODE_ID": settings.node_id},
        )
    study = settings.study.name
    print(f"study {study}: supervisor started in the background (pid {proc.pid}), log {log}")
    print(f"watch: hpo status study={study}    stop: hpo stop study={study} [--now]")
    return 0


def _log_dir(settings: Any) -> Path:
    """The SQLite database's folder (:mod:`hpo.storage.files`), else the project's _optuna/."""
    from hpo.storage.files import study_folder

    folder = study_folder(settings.storage.url)
    return folder if folder is not None else settings.project_dir / "_optuna"
