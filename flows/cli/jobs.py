"""`dpp` commands that run the generate job: generate (once, or --dry-run), serve (on a cron schedule) and
server (the local Prefect server that serve needs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flows.cli.args import _check_writable, _common, _int_type, _job_args, _report_filter, _say, job_settings
from manifests.errors import UsageError


def cmd_generate(args) -> int:
    settings = job_settings(args)
    if args.dry_run:
        return _dry_run(settings)
    from tqdm import tqdm

    from flows.prefect_env import TemporaryServer, default_prefect_home, quiet_prefect_env

    quiet_prefect_env(default_prefect_home())
    server = TemporaryServer()  # comes up in its own process while torch is imported and models load
    try:
        from flows.generate import run_flow
        from pipeline.generate.job import job_from_settings

        job_from_settings(settings)  # bad models, classes or rules are refused before the flow starts
        _check_writable("--out", Path(settings["job.out"]))
        server.wait()
    except BaseException:
        server.stop()
        raise
    with tqdm(
        total=settings["job.n"], desc=f"generating {Path(settings['job.out']).name}", unit="sample",
        disable=args.quiet, leave=False,
    ) as bar:  # fmt: skip
        res = run_flow(settings, args.overwrite, bar.update, verbose=args.verbose)
    out, rec = Path(settings["job.out"]), res["record"]
    if res["removed"]:
        _say(
            args,
            f"removed {len(res['removed'])} orphan or temporary file(s): {', '.join(res['removed'][:5])}",
        )
    if res["resumed"]:
        _say(args, "resumed: shards committed by the interrupted run were kept")
    if res["already_done"]:
        _say(args, f"{out} already holds this corpus ({rec['corpus_id']}); nothing to do")
        return 0
    n = rec["counts"]["real"] + rec["counts"]["synthetic"]
    version = rec.get("version", 1)
    what = f"version {version}, " if version > 1 else ""
    _say(
        args,
        f"wrote {out}: corpus {rec['corpus_id']} ({what}{n} samples in {len(rec['shards'])} shard(s), "
        f"synthetic fraction {rec['synthetic_fraction']:.3f}), classes {', '.join(rec['classes'])}",
    )
    _report_filter(args, out, rec, (rec.get("history") or [{}])[-1].get("shards"))
    return 0


def cmd_serve(args) -> int:
    from flows.generate import check_cron, serve

    check_cron(args.cron)
    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError(
            "dpp serve needs a Prefect server: start one with `dpp server` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (schedules do not run on a temporary server)"
        )
    settings = job_settings(args)
    from pipeline.generate.job import job_from_settings

    job_from_settings(settings)  # bad models, classes or rules are refused before anything is registered
    print(
        f"serving deployment dpp-generate-scheduled/{args.name} (cron {args.cron!r}, "
        f"{'appending to' if settings['job.append'] else 'writing'} {settings['job.out']}) on "
        f"{os.environ.get('PREFECT_API_URL', '(no server)')}; Ctrl-C stops",
        flush=True,
    )
    serve(settings, args.cron, args.name)
    return 0


def cmd_server(args) -> int:
    """`prefect server start` on loopback, with our quiet environment; runs until interrupted."""
    import subprocess

    from flows.prefect_env import default_prefect_home, quiet_prefect_env

    quiet_prefect_env(default_prefect_home())
    url = f"http://127.0.0.1:{args.port}/api"
    print(
        f"Prefect server on {url} (PREFECT_HOME {os.environ['PREFECT_HOME']}); in another shell:", flush=True
    )
    print(f"  export PREFECT_API_URL={url}", flush=True)
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    return subprocess.call(cmd)


def _dry_run(settings: dict) -> int:
    from manifests.format.layout import CORPUS_FILE
    from manifests.format.record import load_corpus
    from manifests.storage.commit import next_shard_index
    from pipeline.generate.job import job_from_settings
    from pipeline.generate.settings import format_plan, plan_shards, to_toml

    job = job_from_settings(settings)
    out = job.cfg.out
    first, version = 0, None
    if job.cfg.append:
        if not (out / CORPUS_FILE).is_file():
            raise UsageError(f"--append: {out} holds no corpus to append to; run without --append first")
        rec = load_corpus(out)
        version = rec.get("version", 1)
        first = next_shard_index(rec)
    plans = plan_shards(job.cfg.n, job.cfg.shard_size, job.cfg.seed, job.cfg.max_attempts, first)
    print("job settings:")
    print("\n".join(f"  {line}".rstrip() for line in to_toml(settings).strip().splitlines()))
    print(format_plan(plans, out, job.chash, job.config, version))
    return 0


# --- parsers ---


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="render, label, filter and shard a synthetic corpus (a resumable Prefect flow)"
    )
    p.add_argument("--config", type=Path, default=None, help="TOML job file (see examples/job.toml)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override one job-file field (repeatable)"
    )
    _job_args(p)
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and the resolved config; write nothing"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a different corpus (or unfinished job) at --out"
    )
    p.add_argument("--verbose", action="store_true", help="Prefect's logs on the terminal, not in OUT/logs/")
    _common(p)
    p.set_defaults(func=cmd_generate)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the generate job on a cron schedule through a Prefect server")
    p.add_argument("--config", type=Path, default=None, help="TOML job file (see examples/job.toml)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override one job-file field (repeatable)"
    )
    p.add_argument("--cron", required=True, help="cron schedule, e.g. '0 3 * * *' (03:00 every day)")
    p.add_argument("--name", default="default", help="deployment name (default 'default')")
    _job_args(p)
    _common(p, quiet=False)
    p.set_defaults(func=cmd_serve)


def _add_server(sub) -> None:
    p = sub.add_parser("server", help="start a local Prefect server (SQLite, loopback) for dpp serve")
    p.add_argument("--port", type=_int_type(1, 65535), default=4200, help="port (default 4200)")
    _common(p, quiet=False)
    p.set_defaults(func=cmd_server)


# The sub-parsers this module owns, by command name; build_parser adds them in its COMMANDS order.
PARSERS = {
    "generate": _add_generate,
    "serve": _add_serve,
    "server": _add_server,
}
