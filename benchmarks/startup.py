"""The fixed start of `dpp generate`: wall time of `dpp generate --n 1 --steps 1` (imports, Prefect's
temporary server, model loads, one sample, commit), for this tree and a baseline tree run alternately in
the same session, so the machine's load falls on both alike. Writes the startup section of
docs/benchmarks.md.

    python benchmarks/startup.py --baseline-tree /tmp/wt-before --baseline-name d290757 --repeats 5

A baseline tree is another checkout of the repository (`git worktree add /tmp/wt-before REV`); it runs
with this venv, its own source first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_section  # noqa: E402

BEGIN, END = "<!-- startup:begin -->", "<!-- startup:end -->"
CMD = ["generate", "--n", "1", "--steps", "1", "--seed", "0", "--device", "cpu", "--quiet", "--overwrite"]


def run_once(tree: Path, labeler: Path, out: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tree))
    code = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", code, *CMD, "--labeler", str(labeler), "--out", str(out)],
        env=env, cwd=tree, check=True, capture_output=True,
    )  # fmt: skip
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline-tree", required=True, help="another checkout to compare with")
    p.add_argument("--baseline-name", default="baseline", help="how the table names the baseline")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "docs/benchmarks.md"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dpp-startup-"))
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        dpp = [str(Path(sys.executable).parent / "dpp")]
        subprocess.run([*dpp, "toyworld", "--n", "40", "--seed", "0", "--out", str(work / "real"), "--quiet"],
                       check=True, env=env)  # fmt: skip
        subprocess.run([*dpp, "train-labeler", "--data", str(work / "real"), "--shots", "4", "--members", "1",
                        "--out", str(work / "labeler"), "--device", "cpu", "--quiet"], check=True, env=env)  # fmt: skip
        trees = {args.baseline_name: Path(args.baseline_tree), "this tree": ROOT}
        times: dict[str, list[float]] = {name: [] for name in trees}
        run_once(ROOT, work / "labeler", work / "warm")  # warm the file cache and Prefect's database
        for _ in range(args.repeats):
            for name, tree in trees.items():
                times[name].append(run_once(tree, work / "labeler", work / name.replace(" ", "-")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(times[args.baseline_name])
    lines = [
        BEGIN,
        f"Written by `python benchmarks/startup.py --baseline-tree TREE --baseline-name {args.baseline_name} "
        f"--repeats {args.repeats}` ({time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, one torch thread). Wall time of `dpp {' '.join(CMD)}` with a 4-shot labeler "
        "on the shipped generator, the two trees run alternately.",
        "",
        "| tree | median s | min s | max s | vs baseline |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {med:.1f} | {min(ts):.1f} | {max(ts):.1f} | {med / base:.2f}x |")
    lines.append(END)
    write_section(Path(args.out), "\n".join(lines) + "\n", BEGIN, END)
    print("\n".join(lines[3:-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
