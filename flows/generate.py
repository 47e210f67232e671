"""`dpp generate` as a Prefect flow: plan -> one render_shard task per shard -> reconcile -> commit.

The work lives in pipeline/generate.py; the tasks here are thin wrappers that add retries and let
Prefect run shards in threads, on a Dask cluster (prefect-dask) or on Ray (prefect-ray, an extra).
A task gets the job's settings (plain values), not models: each worker process loads the models once.
The flow process holds the output's lock from plan to commit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from manifests.errors import UsageError

PREFECT_LOG = "logs/prefect.log"


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


def task_runner(runner: str, workers: int, dask_address: str | None):
    """The Prefect task runner for --runner; one shard per task."""
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise UsageError("--runner dask needs prefect-dask (pip install prefect-dask)") from None
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    if runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise UsageError(
                "--runner ray needs prefect-ray, an optional extra: pip install 'dataplusplus[ray]'"
            ) from None
        return RayTaskRunner()
    raise UsageError(f"--runner {runner!r} is not allowed; choose threads, dask or ray")


def _build():
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from pipeline import generate as g
    from pipeline import output
    from pipeline.job import ShardPlan

    @task(name="render_shard", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
    def render_shard(settings: dict, plan: ShardPlan, corpus_id: str) -> dict:
        """Render, label, filter and commit one shard (pipeline.generate.render_shard)."""
        return g.render_shard(g.job_from_settings(settings), plan, corpus_id)

    @flow(name="dpp-generate", log_prints=False, validate_parameters=False)
    def generate_flow(settings: dict, overwrite: bool = False, progress=None) -> dict:
        """plan (lock, start or resume, job.json) -> render_shard per missing shard -> reconcile -> commit."""
        job = g.job_from_settings(settings)
        with output.output_lock(job.out) as created:
            st = g.start(job, overwrite)
            if st.done is not None:
                return {"record": st.done.record, "already_done": True, "resumed": False, "removed": []}
            infos = dict(st.committed)
            todo = [p for p in st.plans if p.index not in infos]
            with g.abandon_on_error(job, created, infos):
                futures = {p.index: render_shard.submit(settings, p, st.corpus_id) for p in todo}
                for p in todo:  # in plan order; each result is a committed shard
                    infos[p.index] = futures[p.index].result()
                    if progress is not None:
                        progress(p.kept)
            res = g.finish(job, st, infos)
        return {"record": res.record, "already_done": False, "resumed": st.resumed, "removed": st.removed}

    return generate_flow


_FLOW = None


def run_flow(settings: dict, overwrite: bool = False, progress=None, verbose: bool = False) -> dict:
    """Run the generate flow on the runner the settings name; Prefect's logs go to OUT/logs/prefect.log
    unless `verbose`. Returns {record, already_done, resumed, removed}."""
    global _FLOW
    quiet_prefect_env(default_prefect_home())
    if _FLOW is None:
        _FLOW = _build()
    runner = task_runner(settings["job.runner"], settings["job.workers"], settings["job.dask_address"])
    out = Path(settings["job.out"])
    handler = None if verbose else route_logs(out.parent / f".{out.name}.prefect.log")
    refused = False
    try:
        return _FLOW.with_options(task_runner=runner)(settings, overwrite, progress)
    except UsageError:
        refused = True  # a refused job leaves the output as it was, log included
        raise
    finally:
        if handler is not None:
            handler.close()
            _move_log(out.parent / f".{out.name}.prefect.log", None if refused else out / PREFECT_LOG)


def _move_log(src: Path, dest: Path | None) -> None:
    """The log is written beside the output (which may not exist yet) and appended to OUT/logs/ at the end."""
    if not src.exists():
        return
    text = src.read_bytes()
    if dest is not None and text and dest.parent.parent.is_dir():
        dest.parent.mkdir(exist_ok=True)
        with open(dest, "ab") as f:
            f.write(text)
    src.unlink()
