"""`dpp generate` on clusters: a Ray cluster the test starts (--ray-address), Ray's own local instance
(--runner ray) and a Dask scheduler the test starts (--dask-address) each give the threads corpus, byte
for byte. The local Dask cluster is tests/test_flow_generate.py's."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flows.cli import main

from .test_flow_generate import _data, _job_file

RAY = str(Path(sys.executable).with_name("ray"))
RAY_TOKEN = secrets.token_hex(32)  # one per run: a process may keep the first token Ray read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def threads_corpus(tmp_path_factory, tiny32_model_dir, labeler_dir) -> tuple[Path, Path]:
    """The job (4 kept samples in 2 shards) and its corpus on --runner threads: the reference bytes."""
    root = tmp_path_factory.mktemp("runners")
    job = _job_file(
        root / "j.toml", tiny32_model_dir, labeler_dir, root / "threads", job__n=4, model__scheduler="ddim"
    )
    assert main(["generate", "--config", str(job), "--quiet"]) == 0
    return job, root / "threads"


@pytest.fixture
def loopback_ray(monkeypatch):
    """Ray on 127.0.0.1 only (by default it binds to the machine's outward address), its files in a
    temporary folder, with token authentication (Ray's default) but the token from the environment:
    nothing is left in /tmp/ray or ~/.ray. The head, this process (the driver) and the workers all read
    these variables."""
    temp = Path(tempfile.mkdtemp(prefix="dpp-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", str(temp))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # single node: the loopback address
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", RAY_TOKEN)
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # read at import, maybe earlier
    sigterm = signal.getsignal(signal.SIGTERM)  # a Ray driver sets its own
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_head(tmp_path, loopback_ray):
    """A one-node Ray cluster (1 CPU, no dashboard) in its own process group, as `ray start --head`
    starts one; stopped, with everything it spawned, when the test ends, passed or not."""
    port = _free_port()
    argv = [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    argv += ["--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    log_path = tmp_path / "ray-head.log"
    log = log_path.open("wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b"--block" not in log_path.read_bytes():  # printed once the node is up
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "ray start did not come up in 60 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of that group still alive (the group is ours)
        except ProcessLookupError:
            pass
        log.close()


def _other_ray_jobs(address: str) -> list[dict]:
    """The jobs (drivers) that have run on the cluster at `address`, other than this look-up's."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        me = ray.get_runtime_context().get_job_id()
        return [j for j in ray._private.state.jobs() if j["JobID"] != me]
    finally:
        ray.shutdown()


def test_ray_address_gives_the_threads_corpus(threads_corpus, ray_head, tmp_path):
    job, ref = threads_corpus
    argv = ["generate", "--config", str(job), "--runner", "ray", "--ray-address", ray_head, "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 0
    assert _data(tmp_path / "r") == _data(ref)
    import ray

    assert not ray.is_initialized()  # the flow disconnected; the cluster is still the test's
    jobs = _other_ray_jobs(ray_head)  # the flow's: it ran there, and has finished
    assert [(j["DriverPid"], j["IsDead"]) for j in jobs] == [(os.getpid(), True)]


def test_ray_runner_starts_its_own_local_instance(threads_corpus, loopback_ray, tmp_path):
    import ray

    job, ref = threads_corpus
    argv = ["generate", "--config", str(job), "--runner", "ray", "--quiet"]
    try:
        assert main([*argv, "--out", str(tmp_path / "r")]) == 0
        assert not ray.is_initialized()  # the runner stopped the instance it started
    finally:
        ray.shutdown()  # in case it did not
    assert _data(tmp_path / "r") == _data(ref)


@pytest.fixture
def dask_cluster():
    """A Dask scheduler with one worker process (one thread), as an existing cluster; closed at the end."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        yield cluster
    finally:
        cluster.close()


def test_dask_address_gives_the_threads_corpus(threads_corpus, dask_cluster, tmp_path):
    job, ref = threads_corpus
    address = dask_cluster.scheduler_address
    argv = ["generate", "--config", str(job), "--runner", "dask", "--dask-address", address, "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "d")]) == 0
    assert _data(tmp_path / "d") == _data(ref)
    assert "render_shard" in dask_cluster.scheduler.task_prefixes  # the shards ran on that cluster
