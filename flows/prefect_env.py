"""Prefect's environment, set before prefect is imported: quiet, no analytics, a patient temporary
server, and a PREFECT_HOME of ours unless the user chose one. Also where Prefect's log records go."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path


def quiet_prefect_env(home: Path | None = None) -> None:
    """Environment for a quiet Prefect before it is imported: warnings only, no analytics, a patient
    temporary server; PREFECT_HOME stays the user's if set."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if home is not None and "PREFECT_HOME" not in os.environ:
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)


def default_prefect_home() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "dataplusplus" / "prefect"


def route_logs(logfile: Path | None) -> logging.Handler | None:
    """Send Prefect's log records to `logfile` instead of the terminal (None: leave them on the terminal)."""
    if logfile is None:
        return None
    logfile.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logfile)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "distributed"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.addHandler(handler)
        lg.propagate = False
    return handler


class TemporaryServer:
    """Prefect's temporary server, started in a thread so that it comes up (in its own process) while this
    one imports torch and loads models. `wait()` before the flow runs; `stop()` if the job is refused.
    Nothing is started when a server is configured (PREFECT_API_URL) or temporary servers are off."""

    def __init__(self):
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        self.error: BaseException | None = None
        self.thread = None
        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return
        from prefect.server.api.server import SubprocessASGIServer

        self.server = SubprocessASGIServer()
        self.thread = threading.Thread(target=self._start, name="prefect-temporary-server", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.server.start()
        except BaseException as e:  # raised in the caller's thread by wait()
            self.error = e

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            if self.error is not None:
                raise self.error

    def stop(self) -> None:
        """Kill a server no flow will use (the job was refused): at once, not after a graceful shutdown, and
        also when the thread was still starting it."""
        if self.thread is None:
            return
        self._kill()  # a starting thread then stops waiting for it (its process is gone)
        self.thread.join(timeout=60)
        self._kill()  # a thread that had not spawned it yet has done so by now

    def _kill(self) -> None:
        if self.server.server_process is not None:
            self.server.server_process.kill()
        self.server.stop()
