"""Helpers every results script shares: one torch thread, timed log lines, cached steps, and writing one
marked section."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from manifests.format.layout import write_bytes_atomic

# On a CPU a float sum depends on how many threads split it: `dpp eval-seg --steps 200` on the same data
# and seed (64 images of `dpp generate --generator toyworld --n 64 --seed 3`, 100 test images of
# `dpp toyworld --seed 1001`) gave mIoU 0.31044 with OMP_NUM_THREADS=1 and 0.31028 with 2. Every results
# script therefore runs with one, whatever the machine, so a rerun anywhere gives the published digits;
# `make -j2 results` uses a second core by running two sections at once.
RESULTS_THREADS = 1


def one_thread(device: str = "cpu") -> str:
    """Pin torch to RESULTS_THREADS and say where the figures are made, for a section's first line."""
    torch.set_num_threads(RESULTS_THREADS)
    if device != "cpu" and torch.cuda.is_available():
        return f"{platform.machine()} with {torch.cuda.get_device_name(0)}"
    return f"{platform.machine()} (no GPU, {RESULTS_THREADS} torch thread)"


def log(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:7.0f} s] {msg}", flush=True)


@contextlib.contextmanager
def step_lock(work: Path, name: str):
    """Hold an exclusive lock named `name` under `work`/locks while a step runs. Two processes sharing one
    work folder (a results script's `--jobs 2`) then never compute the same step at once: the second waits,
    and finds the step done. Each process holds one step's lock at a time, its prerequisites taken inside;
    the steps form a DAG, so the waits cannot deadlock."""
    folder = Path(work) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def cached(path: Path, fn) -> dict:
    """The result stored at `path`, or fn() stored there (written whole) and returned. The check and the
    computation hold the step's lock (step_lock), so a second process waiting on it reads the result."""
    path = Path(path)
    with step_lock(path.parent, path.name):
        if path.exists():
            return json.loads(path.read_text())
        res = fn()
        write_bytes_atomic(path, (json.dumps(res, indent=2, sort_keys=True) + "\n").encode())
        return res


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the section of `path` between `begin` and `end` (or append it), keeping everything else.
    Holds a lock on the file's folder while it reads and writes, so two scripts finishing at once (`make -j2
    results`) cannot drop each other's section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else "# Results\n\n"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1].lstrip("\n")
            text = head + section + ("\n" + tail if tail else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        write_bytes_atomic(path, text.encode())
    finally:
        os.close(folder)  # releases the lock


def revision(root: Path) -> str:
    """The short git revision of the checkout the figures were made from ("unknown" outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"
