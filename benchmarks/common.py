"""Helpers every results script shares: timed log lines, cached steps, and writing one marked section."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from manifests.format.layout import write_bytes_atomic


def log(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:7.0f} s] {msg}", flush=True)


def cached(path: Path, fn) -> dict:
    """The result stored at `path`, or fn() stored there (written whole) and returned."""
    if path.exists():
        return json.loads(path.read_text())
    res = fn()
    write_bytes_atomic(path, (json.dumps(res, indent=2, sort_keys=True) + "\n").encode())
    return res


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the section of `path` between `begin` and `end` (or append it), keeping everything else."""
    text = path.read_text() if path.exists() else "# Results\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_bytes_atomic(path, text.encode())


def revision(root: Path) -> str:
    """The short git revision of the checkout the figures were made from ("unknown" outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"
