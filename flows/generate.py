"""`dpp generate` as a Prefect flow: plan -> one render_shard task per shard -> reconcile -> commit.

The steps are pipeline/generate/'s (run.start, shard.render_shard, run.finish); the tasks here add
retries and let Prefect run shards in threads, on a Dask cluster (prefect-dask) or on a Ray cluster
(prefect-ray).
A task gets the job's settings (plain values), not models: each worker process loads the models once.
The flow process holds the output's lock from plan to commit. `scheduled_generate` is what
`dpp serve` deploys: it picks the task runner from the settings and runs `generate_flow` as a subflow.
"""

from __future__ import annotations

import os
from pathlib import Path

from flows.prefect_env import default_prefect_home, quiet_prefect_env, route_logs

quiet_prefect_env(default_prefect_home())

from prefect import flow, task  # noqa: E402 - after the environment above
from prefect.cache_policies import NO_CACHE  # noqa: E402

from manifests.errors import Refused, UsageError  # noqa: E402
from manifests.storage import commit as output  # noqa: E402
from pipeline.generate import run as g  # noqa: E402
from pipeline.generate.job import job_from_settings  # noqa: E402
from pipeline.generate.settings import ShardPlan  # noqa: E402
from pipeline.generate.shard import render_shard as render_one_shard  # noqa: E402

PREFECT_LOG = "logs/prefect.log"


def task_runner(runner: str, workers: int, dask_address: str | None, ray_address: str | None = None):
    """The Prefect task runner for --runner; one shard per task. Without an address, dask and ray start a
    local cluster for the job and stop it after; with one, they use that running cluster."""
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
        # Warnings only, and worker prints stay on the workers (Ray's logs show them); a task's error still
        # reaches the flow. "local" always starts a new instance: RAY_ADDRESS or a `ray start` cluster on
        # this machine is used only when --ray-address names it ("auto" finds one, or fails).
        init = {"log_to_driver": False, "logging_level": "WARNING"}
        if ray_address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports (as for Prefect)
            return RayTaskRunner(init_kwargs={**init, "address": "local", "include_dashboard": False})
        if ray_address == "auto":  # prefect-ray reads "auto" as "start one if none is found"
            return RayTaskRunner(address="auto", init_kwargs={**init, "address": "auto"})
        return RayTaskRunner(address=ray_address, init_kwargs=init)
    raise UsageError(f"--runner {runner!r} is not allowed; choose threads, dask or ray")


def _runner_of(settings: dict):
    """The task runner the settings name (settings saved before job.ray_address existed lack it)."""
    v = settings
    return task_runner(v["job.runner"], v["job.workers"], v["job.dask_address"], v.get("job.ray_address"))


@task(name="render_shard", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def render_shard(settings: dict, plan: ShardPlan, corpus_id: str) -> dict:
    """Render, label, filter and commit one shard (pipeline/generate/shard.py)."""
    return render_one_shard(job_from_settings(settings), plan, corpus_id)


@flow(name="dpp-generate", log_prints=False, validate_parameters=False)
def generate_flow(settings: dict, overwrite: bool = False, progress=None) -> dict:
    """plan (lock, start or resume, job.json) -> render_shard per missing shard -> reconcile -> commit."""
    job = job_from_settings(settings)
    with output.output_lock(job.cfg.out) as created:
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


@flow(name="dpp-generate-scheduled", log_prints=False, validate_parameters=False)
def scheduled_generate(settings: dict) -> dict:
    """One scheduled run (dpp serve): the job on the runner its settings name. Returns a summary."""
    runner = _runner_of(settings)
    res = generate_flow.with_options(task_runner=runner)(settings)
    rec = res["record"]
    return {
        "corpus_id": rec["corpus_id"],
        "version": rec.get("version", 1),
        "kept": rec["counts"]["real"] + rec["counts"]["synthetic"],
        "synthetic_fraction": rec["synthetic_fraction"],
        "already_done": res["already_done"],
    }


def run_flow(settings: dict, overwrite: bool = False, progress=None, verbose: bool = False) -> dict:
    """Run the generate flow on the runner the settings name; Prefect's logs go to OUT/logs/prefect.log
    unless `verbose`. Returns {record, already_done, resumed, removed}."""
    runner = _runner_of(settings)
    out = Path(settings["job.out"])
    handler = None if verbose else route_logs(out.parent / f".{out.name}.prefect.log")
    refused = False
    try:
        return generate_flow.with_options(task_runner=runner)(settings, overwrite, progress)
    except (UsageError, Refused):
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


def check_cron(cron: str) -> None:
    """A clear error for a cron string Prefect would not schedule."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise UsageError(
            f"--cron {cron!r} is not a valid cron schedule; write five fields, e.g. '0 3 * * *' (03:00 daily)"
        ) from None


def serve(settings: dict, cron: str, name: str) -> None:
    """Register `scheduled_generate` with these settings as deployment `name` on the Prefect server at
    PREFECT_API_URL, with a cron schedule, and run its scheduled runs until interrupted."""
    check_cron(cron)
    scheduled_generate.serve(
        name=name, cron=cron, parameters={"settings": settings}, print_starting_message=False
    )
