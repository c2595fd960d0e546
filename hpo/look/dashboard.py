"""``hpo dashboard``: optuna-dashboard on a study's storage, on 127.0.0.1 unless told otherwise.

The storage is opened without creating tables (the study must exist) and served by a small
threaded WSGI server, so the browser's parallel requests do not queue behind each other. It is
read-only unless ``allow_writes``: deleting, renaming or annotating the study from the browser
then answers HTTP 403 with the reason, and nothing is written to the study's storage.
"""

from __future__ import annotations

import json
import logging
import signal
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

_HINT = "start hpo dashboard with --allow-writes to allow changes"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Requests go to the debug log instead of one stderr line each."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        logger.debug("dashboard: " + format, *args)


class DashboardServer:
    """optuna-dashboard for one study's storage; :meth:`serve_forever` blocks until stopped."""

    def __init__(
        self, ref: StudyRef, host: str = "127.0.0.1", port: int = 8080, allow_writes: bool = False
    ) -> None:
        with StudyDB(ref) as db:  # ConfigError, nothing created, when the study is missing
            self.study_id = int(db.rows(queries.STUDY_ID)[0]["study_id"])
        app = _create_app(ref, allow_writes)
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


def _create_app(ref: StudyRef, allow_writes: bool) -> Callable[..., Any]:
    from optuna_dashboard import wsgi

    storage = open_optuna_storage(
        ref.url, ref.busy_timeout_s, allow_writes=allow_writes, refusal=forbidden
    )
    app = wsgi(storage)
    return app if allow_writes else _refusing_writes(app)


def forbidden(message: str) -> Exception:
    """A write the read-only storage refused, as HTTP 403 whose reason the dashboard shows."""
    from bottle import HTTPError

    logger.warning("dashboard: %s", message)
    return HTTPError(403, f"{message}; {_HINT}")


def _refusing_writes(app: Callable[..., Any]) -> Callable[..., Any]:
    """Answer 403 to every request but GET/HEAD/OPTIONS (all of optuna-dashboard's writes) before
    the dashboard sees it; the read-only storage refuses whatever would still get through."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method in _SAFE_METHODS:
            return app(environ, start_response)
        message = f"{method} {environ.get('PATH_INFO', '')} refused: the dashboard is read-only"
        logger.warning("dashboard: %s", message)
        body = json.dumps({"reason": f"{message}; {_HINT}"}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("403 Forbidden", headers)
        return [body]

    return guarded


def serve(
    ref: StudyRef, host: str = "127.0.0.1", port: int = 8080, allow_writes: bool = False
) -> None:
    """Run the dashboard until Ctrl-C, after printing the study page's address."""
    server = DashboardServer(ref, host, port, allow_writes)
    print(f"optuna-dashboard for study {ref.name} ({ref.shown}): {server.url}", flush=True)
    if allow_writes:
        logger.warning("dashboard --allow-writes: the browser can change and delete the study")
    if host not in ("127.0.0.1", "localhost", "::1"):
        what = "change and delete" if allow_writes else "read"
        logger.warning(
            "dashboard listens on %s: anyone who can reach it can %s the study", host, what
        )
    _stop_on_signals()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) or SIGTERM ends :func:`serve` cleanly, however the process was started:
    one started with SIGINT ignored or blocked (as a shell's background job, or a child of one
    that blocked it) would otherwise serve on after a Ctrl-C, or die on SIGTERM mid-request."""
    if threading.current_thread() is not threading.main_thread():
        return
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    for sig in stops:
        signal.signal(sig, signal.default_int_handler)
