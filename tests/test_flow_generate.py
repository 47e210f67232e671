"""`dpp generate` as a Prefect flow: job files, dry run, resume after SIGKILL, refusals, lock, append,
the Dask runner."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from flows.cli import main
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.verify import verify_corpus
from pipeline.generate import settings as jobmod

from .conftest import tree_bytes

ROOT = Path(__file__).resolve().parents[1]


def _job_file(path: Path, model: Path, lab: Path, out: Path, **extra) -> Path:
    job = {
        "job": {"out": str(out), "n": 6, "seed": 5, "shard_size": 2},
        "model": {"generator": str(model), "labeler": str(lab), "steps": 2, "batch_size": 4},
        "filter": {"min_target_pixels": 0, "block": 4},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        job.setdefault(section, {})[name] = value
    lines = []
    for section, table in job.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _data(root: Path) -> dict[str, bytes]:
    """The corpus's files, without the run's log and lock."""
    return {k: v for k, v in tree_bytes(root).items() if not k.startswith("logs/") and k != ".dpp.lock"}


def test_example_job_file_documents_every_field():
    values = jobmod.read_job_file(ROOT / "examples/job.toml")
    text = (ROOT / "examples/job.toml").read_text()
    for f in jobmod.FIELDS:  # each field appears, set or commented out
        assert f"{f.name} =" in text, f.key
    assert set(values) <= set(jobmod.BY_KEY)


def test_job_file_errors_name_the_key(tmp_path, tiny32_model_dir, labeler_dir, capsys):
    job = _job_file(tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tmp_path / "o", filter__min_area=3)
    assert main(["generate", "--config", str(job), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "unknown key 'filter.min_area'" in err and "min_target_pixels" in err
    )
    job = _job_file(
        tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tmp_path / "o", filter__drop_fraction=1.5
    )
    assert main(["generate", "--config", str(job), "--dry-run"]) == 2
    assert "filter.drop_fraction = 1.5 is not allowed; it must be in [0.0, 0.99]" in capsys.readouterr().err
    assert (
        main(["generate", "--config", str(job), "--set", "filter.drop_fraction=0.2", "--set", "x.y=1"]) == 2
    )
    assert "unknown key 'x.y'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tiny32_model_dir, labeler_dir, capsys):
    job = _job_file(tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tmp_path / "o")
    before = tree_bytes(tmp_path)
    argv = ["generate", "--config", str(job), "--set", "job.n=5", "--seed", "9", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    settings = jobmod.resolve(jobmod.read_job_file(job), {"job.seed": 9}, {"job.n": 5})
    plans = jobmod.plan_shards(5, 2, 9, 10)
    assert [p.kept for p in plans] == [2, 2, 1]
    assert "5 kept samples in 3 shard(s)" in out and "0..9" in out and "0..19" in out
    assert str(plans[2].seed(0)) in out and str(tmp_path / "o" / "shards/shard-000002.tar") in out
    from pipeline.generate.job import job_from_settings

    assert f"config hash {job_from_settings(settings).chash}" in out
    assert "dry run: nothing was written" in out and tree_bytes(tmp_path) == before


def test_job_file_and_flags_give_the_same_corpus(tmp_path, tiny32_model_dir, labeler_dir):
    job = _job_file(tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tmp_path / "a")
    assert main(["generate", "--config", str(job), "--quiet"]) == 0
    argv = ["generate", "--generator", str(tiny32_model_dir), "--labeler", str(labeler_dir), "--n", "6"]
    argv += ["--seed", "5", "--shard-size", "2", "--steps", "2", "--batch-size", "4", "--filter-block", "4"]
    assert main([*argv, "--min-target-pixels", "0", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert _data(tmp_path / "a") == _data(tmp_path / "b")
    rec = load_corpus(tmp_path / "a")
    assert rec["version"] == 1 and verify_corpus(tmp_path / "a").ok
    for s in rec["shards"]:  # every manifest carries the resolved config and its hash
        meta = read_manifest(manifest_path(tmp_path / "a", s["name"]))
        assert set(meta.column("config_hash").to_pylist()) == {rec["config_hash"]}
    assert not (tmp_path / "a/job.json").exists()


def _api_env() -> dict:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_shard_then_resume_is_byte_identical(tmp_path, tiny32_model_dir, labeler_dir, capsys):
    job = _job_file(
        tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tmp_path / "k", job__n=8, model__steps=8
    )
    assert (
        main(["generate", "--config", str(job), "--set", f'job.out="{tmp_path / "whole"}"', "--quiet"]) == 0
    )
    # SIGKILL while shard 1 is half-written (its temporary tar holds 1 of 2 samples), after shard 0 has
    # committed: the 4th kept sample is shard 1's second (2 per shard). A fault point, not a timed kill,
    # so the moment is the same on any machine.
    code = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "generate", "--config", str(job), "--quiet"],
        cwd=ROOT,
        env={**_api_env(), "DPP_FAULT": "shard.sample:kill@4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    out = tmp_path / "k"
    assert (out / "manifest/shard-000000.parquet").exists()
    assert not (out / "corpus.json").exists() and (out / "job.json").exists()
    assert list(out.glob("shards/*.tmp"))
    capsys.readouterr()
    assert main(["generate", "--config", str(job)]) == 0
    said = capsys.readouterr().out
    assert "resumed" in said and "removed" in said
    assert _data(out) == _data(tmp_path / "whole")
    rows = [
        r
        for s in load_corpus(out)["shards"]
        for r in read_manifest(manifest_path(out, s["name"])).to_pylist()
    ]  # noqa: E501
    assert len({r["key"] for r in rows}) == len(rows) and sum(r["kept"] for r in rows) == 8
    assert main(["generate", "--config", str(job)]) == 0  # done: nothing to do
    assert "nothing to do" in capsys.readouterr().out


def test_other_config_refused_and_lock_refuses_a_second_job(tmp_path, tiny32_model_dir, labeler_dir, capsys):
    from manifests.storage.commit import output_lock

    job = _job_file(tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tmp_path / "c", job__n=2)
    assert main(["generate", "--config", str(job), "--quiet"]) == 0
    before = tree_bytes(tmp_path / "c")
    assert main(["generate", "--config", str(job), "--set", "job.seed=6", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a different corpus" in err and "--overwrite" in err
    assert tree_bytes(tmp_path / "c") == before
    with output_lock(tmp_path / "c"):
        assert main(["generate", "--config", str(job), "--set", "job.seed=6", "--overwrite", "--quiet"]) == 2
    assert "being written by another dpp job" in capsys.readouterr().err
    assert tree_bytes(tmp_path / "c") == before
    assert main(["generate", "--config", str(job), "--set", "job.seed=6", "--overwrite", "--quiet"]) == 0
    assert load_corpus(tmp_path / "c")["config"]["seed"] == 6


def test_append_commits_a_new_version_and_keeps_the_old(
    tw_copy, tmp_path, tiny32_model_dir, labeler_dir, capsys
):
    old = (tw_copy / "corpus.json").read_bytes()
    job = _job_file(tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tw_copy, job__n=4, job__append=True)
    assert main(["generate", "--config", str(job), "--quiet"]) == 0
    rec = load_corpus(tw_copy)
    assert rec["version"] == 2 and (tw_copy / "versions/corpus.v1.json").read_bytes() == old
    assert rec["counts"]["real"] == 40 and rec["counts"]["synthetic"] == 4
    assert [h["version"] for h in rec["history"]] == [1, 2]
    assert (
        rec["history"][0]["synthetic_fraction"] == 0.0 and rec["history"][1]["synthetic_fraction"] == 4 / 44
    )
    assert verify_corpus(tw_copy).ok
    # a second append: fresh shards and seeds, version 3
    assert main(["generate", "--config", str(job), "--quiet"]) == 0
    rec3 = load_corpus(tw_copy)
    assert rec3["version"] == 3 and (tw_copy / "versions/corpus.v2.json").exists()
    rows = [r for s in rec3["shards"] for r in read_manifest(manifest_path(tw_copy, s["name"])).to_pylist()]  # noqa: E501
    seeds = [r["seed"] for r in rows if r["origin"] == "synthetic"]
    assert len(set(seeds)) == len(seeds) and sum(r["kept"] and r["origin"] == "synthetic" for r in rows) == 8
    capsys.readouterr()
    assert main(["audit", str(tw_copy)]) == 0
    text = capsys.readouterr().out
    assert "version" in text and "0.091" in text and "0.167" in text


def test_dask_runner_gives_the_threads_corpus(tmp_path, tiny32_model_dir, labeler_dir):
    # DDIM: runners compare bytes across processes whose torch thread counts differ; on this tiny random
    # model DPM-Solver++'s float differences can flip the rank rule's choice
    job = _job_file(
        tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tmp_path / "t", job__n=4, model__scheduler="ddim"
    )
    assert main(["generate", "--config", str(job), "--set", "job.workers=2", "--quiet"]) == 0
    argv = ["generate", "--config", str(job), "--runner", "dask", "--workers", "2", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "d")]) == 0
    assert _data(tmp_path / "d") == _data(tmp_path / "t")


def test_a_temporary_server_started_early_is_killed_when_the_job_is_refused(tmp_path):
    """dpp generate starts Prefect's temporary server while models load; a refused job must not leave
    that server process behind (nor a thread waiting for it). Run without the test session's server."""
    script = """
import os, time
from flows.prefect_env import TemporaryServer, quiet_prefect_env
quiet_prefect_env()
server = TemporaryServer()
assert server.thread is not None, "no temporary server was started"
deadline = time.monotonic() + 60
while server.server.server_process is None and time.monotonic() < deadline:
    time.sleep(0.05)
pid = server.server.server_process.pid
server.stop()
try:
    os.kill(pid, 0)
    alive = True
except ProcessLookupError:
    alive = False
print(pid, alive, server.thread.is_alive())
"""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    pid, alive, thread_alive = out.stdout.split()
    assert (alive, thread_alive) == ("False", "False"), (
        f"temporary server {pid} or its thread survived stop()"
    )


def test_verbose_leaves_prefects_log_on_the_terminal_not_in_out_logs(
    tmp_path, tiny32_model_dir, labeler_dir, monkeypatch, capsys
):
    """Prefect logs at WARNING and above: a job that fails at its commit (a full disk when corpus.json is
    written; its shard is committed, so OUT stays) makes the flow log the error. --verbose leaves it to
    Prefect's terminal handler; without, it goes to OUT/logs/prefect.log and not to the terminal."""
    import logging
    from collections import Counter

    import flows.generate  # noqa: F401 - Prefect configures its logging once, on import
    from manifests import faults

    # Prefect's loggers as a fresh `dpp` process has them (flow and task runs propagate to a console
    # handler; an earlier run in this process has routed them to its file), with a stand-in console
    terminal = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logging.getLogger("prefect"), "handlers", [terminal])
    monkeypatch.setattr(logging.getLogger("prefect"), "propagate", False)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    monkeypatch.setattr(faults, "_hits", Counter())
    monkeypatch.setenv(faults.ENV, "atomic:corpus.json:enospc@1+")
    said = {}
    for name, extra in (("verbose", ["--verbose"]), ("quiet", [])):
        job = _job_file(tmp_path / "j.toml", tiny32_model_dir, labeler_dir, tmp_path / name, job__n=2)
        assert main(["generate", "--config", str(job), "--quiet", *extra]) == 1
        said[name] = capsys.readouterr().err
        assert (tmp_path / name / "manifest/shard-000000.parquet").exists()
    needle = "Encountered exception during execution: OSError(28, 'No space left on device')"
    assert needle in said["verbose"] and not (tmp_path / "verbose/logs").exists()
    assert needle not in said["quiet"] and needle in (tmp_path / "quiet/logs/prefect.log").read_text()
    assert "No space left on device" in said["quiet"]  # dpp's own one-line error stays on the terminal
