"""Prefect's environment, set before prefect is imported: quiet, no analytics, a patient temporary
server, and a PREFECT_HOME of ours unless the user chose one. Also where Prefect's log records go."""

from __future__ import annotations

import logging
import os
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
