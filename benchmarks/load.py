"""Load: does a long `dpp generate` job keep its memory flat? (issue 8 item 4, issue 9 item 4)

Runs the real command line, as a user would, for each --n (default 1,000, 10,000 and 20,000 kept samples
of the shipped 32x32 toy-world generator; 2 DDIM steps so that the run measures everything around
the sampler, not the sampler), and watches the `dpp` process from outside: its resident memory (VmRSS)
and peak (VmHWM) from /proc every 0.2 s, and how many shards were committed at each moment. Prints a
markdown table and stores the figures in --work/load-N.json (finished sizes are reused on a rerun).

    python benchmarks/load.py [--n 1000 10000 20000] [--work runs/bench-load]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_section  # noqa: E402

DOC = ROOT / "docs/benchmarks.md"
DPP = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"]


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in bytes."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def dpp(*args: str) -> None:
    subprocess.run([*DPP, *args], cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def labeler(work: Path) -> Path:
    shots, lab = work / "shots-8", work / "labeler-8"
    if not (lab / "labeler.json").exists():
        dpp("toyworld", "--n", "8", "--seed", "1003", "--out", str(shots), "--quiet", "--overwrite")
        dpp(
            "train-labeler",
            "--generator",
            "toyworld",
            "--data",
            str(shots),
            "--shots",
            "8",
            "--out",
            str(lab),
        )
    return lab


def command(n: int, lab: Path, out: Path, steps: int, shard_size: int) -> list[str]:
    return [
        "generate", "--generator", "toyworld", "--labeler", str(lab), "--n", str(n), "--seed", "7",
        "--steps", str(steps), "--batch-size", "64", "--shard-size", str(shard_size),
        "--min-target-pixels", "0", "--drop-fraction", "0", "--out", str(out), "--quiet", "--device", "cpu",
    ]  # fmt: skip


def run_one(n: int, lab: Path, work: Path, steps: int, shard_size: int) -> dict:
    out = work / f"corpus-{n}"
    shutil.rmtree(out, ignore_errors=True)
    argv = command(n, lab, out, steps, shard_size)
    t0 = time.monotonic()
    proc = subprocess.Popen([*DPP, *argv], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    trace, peak = [], 0
    while proc.poll() is None:
        st = _status(proc.pid)
        if st:
            peak = max(peak, st.get("VmHWM", 0))
            committed = len(list((out / "manifest").glob("*.parquet"))) if (out / "manifest").is_dir() else 0
            trace.append((round(time.monotonic() - t0, 1), committed, st.get("VmRSS", 0)))
        time.sleep(0.2)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dpp generate --n {n} failed with exit code {proc.returncode}")
    shards = -(-n // shard_size)

    def rss_when(k: int) -> int:  # resident memory at the first moment k shards were committed
        return next((rss for _, c, rss in trace if c >= k), trace[-1][2])

    res = {
        "n": n,
        "command": "dpp " + " ".join(argv),
        "seconds": round(seconds, 1),
        "samples_per_s": round(n / seconds, 1),
        "peak_rss_mb": round(peak / 2**20),
        "rss_after_first_shard_mb": round(rss_when(1) / 2**20),
        "rss_at_half_mb": round(rss_when(max(1, shards // 2)) / 2**20),
        "rss_last_mb": round(trace[-1][2] / 2**20),
        "shards": shards,
        "corpus_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20, 1),
    }
    shutil.rmtree(out)
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 20000])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--work", type=Path, default=ROOT / "runs/bench-load")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    lab = labeler(args.work)
    rows = []
    for n in args.n:
        path = args.work / f"load-{n}-steps{args.steps}.json"
        if not path.exists():
            path.write_text(
                json.dumps(run_one(n, lab, args.work, args.steps, args.shard_size), indent=2) + "\n"
            )
        rows.append(json.loads(path.read_text()))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    lines = [
        "<!-- load:begin -->",
        "## Memory over a long job (`benchmarks/load.py`)",
        "",
        f"Produced by `python benchmarks/load.py --n {' '.join(str(r['n']) for r in rows)}` (`make bench`) on "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, 1 torch thread. "
        "Each row is one real `dpp generate` process (the Prefect flow, threads runner), watched from outside: "
        "resident memory (VmRSS) and its peak (VmHWM) read from /proc every 0.2 s, and the RSS at the moment "
        "the first shard, half the shards and the last shard were committed. 2 DDIM steps, so that the run "
        "measures everything around the sampler; 1,000 samples per shard; filters keep every candidate.",
        "",
        f"| kept samples | shards | wall time | samples/s | peak RSS | RSS after shard 1 | RSS at half | RSS at end | peak vs {base['n']:,} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['shards']} | {r['seconds'] / 60:.1f} min | {r['samples_per_s']} | "
            f"{r['peak_rss_mb']} MB | {r['rss_after_first_shard_mb']} MB | {r['rss_at_half_mb']} MB | "
            f"{r['rss_last_mb']} MB | **{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}** |"
        )
    lines += ["", f"Command of the last row: `{rows[-1]['command']}`", "<!-- load:end -->"]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(DOC, text, "<!-- load:begin -->", "<!-- load:end -->")


if __name__ == "__main__":
    main()
