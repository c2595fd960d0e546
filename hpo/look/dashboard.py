"""``hpo dashboard``: optuna-dashboard on a study's storage, on 127.0.0.1 unless told otherwise.

The storage is opened without creating tables (the study must exist) and served by a small
threaded WSGI server, so the browser's parallel requests do not queue behind each other.
"""

from __future__ import annotations

import logging
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpo.errors import ConfigError
from hpo.look import queries
from hpo.look.db import StudyDB, StudyRef
from hpo.storage.readonly import open_optuna_storage

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Requests go to the debug log instead of one stderr line each."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        logger.debug("dashboard: " + format, *args)


class DashboardServer:
    """optuna-dashboard for one study's storage; :meth:`serve_forever` blocks until stopped."""

    def __init__(self, ref: StudyRef, host: str = "127.0.0.1", port: int = 8080) -> None:
        with StudyDB(ref) as db:  # ConfigError, nothing created, when the study is missing
            self.study_id = int(db.rows(queries.STUDY_ID)[0]["study_id"])
        app = _create_app(ref)
        try:
            self._server = make_server(
                host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
            )
        except OSError as e:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({e})") from e
        self.host, self.port = host, int(self._server.server_port)

    @property
    def url(self) -> str:
        """The study's page."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard/studies/{self.study_id}"

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()

    def start_in_thread(self) -> threading.Thread:
        """Serve from a daemon thread (for tests and notebooks); stop with :meth:`shutdown`."""
        thread = threading.Thread(target=self.serve_forever, name="hpo-dashboard", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self._server.shutdown()


def _create_app(ref: StudyRef) -> Callable[..., Any]:
    from optuna_dashboard import wsgi

    return wsgi(open_optuna_storage(ref.url, ref.busy_timeout_s))


def serve(ref: StudyRef, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the dashboard until Ctrl-C, after printing the study page's address."""
    server = DashboardServer(ref, host, port)
    print(f"optuna-dashboard for study {ref.name} ({ref.url}): {server.url}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("dashboard listens on %s: anyone who can reach it can edit the study", host)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
