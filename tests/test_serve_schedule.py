"""`dpp serve` against a real local Prefect server: the deployment carries the cron schedule, a
triggered run appends to the corpus, and nothing is left running afterwards."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows.cli import main
from manifests.format.record import load_corpus
from manifests.verify import verify_corpus

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(env: dict) -> tuple[subprocess.Popen, str]:
    """A Prefect server on a free loopback port, healthy. The port is free when chosen but may be taken
    before the server binds it; a server that exits while starting is retried on another port."""
    for _ in range(3):
        port = _free_port()
        api = f"http://127.0.0.1:{port}/api"
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def healthy(server=server, api=api):
            return server.poll() is not None or _api(f"{api}/health") is True

        try:
            _wait("the Prefect server", healthy, 120)
        except BaseException:
            server.kill()
            raise
        if server.poll() is None:
            return server, api
    raise AssertionError("the Prefect server did not start on any of 3 ports")


def _api(url: str, data: dict | None = None) -> dict:
    """One REST call. Like Prefect's own client, retry a 503 a few times: the server answers it for
    errors a client may retry (such as a database timeout on a busy machine)."""
    body = None if data is None else json.dumps(data).encode()
    for attempt in range(6):
        req = urllib.request.Request(url, method="POST" if data is not None else "GET")
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, body, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 5:
                raise
        time.sleep(2 * (attempt + 1))


def _wait(what, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen, sig: int) -> int | None:
    """Send `sig`, wait up to 60 s, then kill: the return code, or None when it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def test_serve_registers_a_cron_schedule_and_a_triggered_run_appends(
    tw_copy, tiny32_model_dir, tmp_path, capsys
):
    lab = tmp_path / "lab"
    argv = ["train-labeler", "--generator", str(tiny32_model_dir), "--data", str(tw_copy), "--shots", "2"]
    assert main([*argv, "--members", "2", "--out", str(lab), "--quiet"]) == 0
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\nout = "{tw_copy}"\nn = 2\nseed = 4\nshard_size = 2\nappend = true\n'
        f'[model]\ngenerator = "{tiny32_model_dir}"\nlabeler = "{lab}"\nsteps = 2\nbatch_size = 4\n'
        "[filter]\nmin_target_pixels = 0\nblock = 4\n"
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    server, api = _start_server(env)
    serve = None
    try:
        code = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
        serve = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--config", str(job), "--cron", "0 3 * * *", "--name", "t"],
            cwd=ROOT,
            env={**env, "PREFECT_API_URL": api},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        dep = _wait("the deployment", lambda: _api(f"{api}/deployments/name/dpp-generate-scheduled/t"), 120)
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * *"]
        assert dep["parameters"]["settings"]["job.append"] is True
        run = _api(f"{api}/deployments/{dep['id']}/create_flow_run", {})
        final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        state = _wait(
            "the triggered run",
            lambda: (s := _api(f"{api}/flow_runs/{run['id']}")["state"]["type"]) in final and s,
            240,
        )
        assert state == "COMPLETED", serve.stderr.read1().decode() if serve.stderr else state
        rec = load_corpus(tw_copy)
        assert rec["version"] == 2 and rec["counts"]["synthetic"] == 2 and verify_corpus(tw_copy).ok
    finally:
        serve_rc = _stop(serve, signal.SIGTERM) if serve is not None else 0
        server_rc = _stop(server, signal.SIGINT)
    assert serve_rc is not None and server_rc is not None  # both stopped when asked; nothing left running
    out = serve.stdout.read().decode()
    assert "serving deployment dpp-generate-scheduled/t (cron '0 3 * * *'" in out


def test_serve_needs_a_valid_cron_and_a_server(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["serve", "--cron", "every day", "--out", str(tmp_path / "x")]) == 2
    assert "--cron 'every day' is not a valid cron schedule" in capsys.readouterr().err
    assert main(["serve", "--cron", "0 3 * * *", "--out", str(tmp_path / "x")]) == 2
    assert "dpp serve needs a Prefect server: start one with `dpp server`" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
