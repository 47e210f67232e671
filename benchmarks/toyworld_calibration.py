"""The toy world's calibration table: how hard each style is for the fixed segmenter, with many and few labels.

For each style, the fixed segmenter of `dpp eval-seg` (2,000 steps) is trained on 2,000 real images and
on K = 8 real images (three different draws of 8), and tested on 500 held-out real images of the same
style. The flat world is meant to be learnable at 32x32 on a CPU (2,000 real >= 0.85 mIoU) while 8 images
stay far below (>= 0.2 under it), so the few-shot problem is real. Writes its table into docs/toyworld.md
between its markers; finished rows are kept under --work, so an interrupted run resumes.

    python benchmarks/toyworld_calibration.py --styles flat   # about 20 minutes on one core
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cached, write_section  # noqa: E402
from pipeline.evaluation.segmentation import SEG_CONFIG, eval_seg  # noqa: E402
from pipeline.realdata.ingest import write_toyworld  # noqa: E402

TEST_SEED, FULL_SEED, SHOT_SEEDS = 2000, 2001, (2002, 2003, 2004)
BEGIN, END = "<!-- toyworld-calibration:begin -->", "<!-- toyworld-calibration:end -->"


def run(args: argparse.Namespace) -> str:
    t0 = time.monotonic()
    work = Path(args.work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    rows = []
    for style in args.styles.split(","):
        test = work / f"{style}-test"
        write_toyworld(test, args.n_test, TEST_SEED, quiet=True, style=style)
        full = work / f"{style}-real-{args.n}"
        write_toyworld(full, args.n, FULL_SEED, quiet=True, style=style)
        res_full = cached(
            work / "results" / f"{style}-full.json", lambda f=full, t=test: eval_seg([f], t, args.steps)
        )
        print(
            f"[{time.monotonic() - t0:5.0f} s] {style}: {args.n} real -> {res_full['miou']:.3f}", flush=True
        )
        shots = []
        for seed in SHOT_SEEDS:
            k = work / f"{style}-shots-{args.shots}-{seed}"
            write_toyworld(k, args.shots, seed, quiet=True, style=style)
            r = cached(
                work / "results" / f"{style}-shots-{seed}.json",
                lambda k=k, t=test: eval_seg([k], t, args.steps),
            )
            shots.append(r)
            print(
                f"[{time.monotonic() - t0:5.0f} s] {style}: {args.shots} real (seed {seed}) -> {r['miou']:.3f}"
            )
        rows.append((style, res_full, shots))
    lines = [
        BEGIN,
        f"Written by `python benchmarks/toyworld_calibration.py --styles {args.styles}` "
        f"({time.strftime('%Y-%m-%d')}, Python {platform.python_version()}; rows stored under --work are "
        "reused). Fixed segmenter of `dpp eval-seg`, "
        f"{args.steps} steps; test: `dpp toyworld --style STYLE --n {args.n_test} --seed {TEST_SEED}`.",
        "",
        f"| style | {args.n} real (seed {FULL_SEED}) | {args.shots} real, seeds "
        + ", ".join(map(str, SHOT_SEEDS))
        + f" | mean of the {args.shots}-real rows | gap | per-class IoU, {args.n} real | "
        f"per-class IoU, {args.shots} real (mean) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for style, full, shots in rows:
        mean = sum(r["miou"] for r in shots) / len(shots)
        classes = list(full["iou"])
        per_full = " / ".join(f"{full['iou'][c]:.2f}" for c in classes)
        per_shot = " / ".join(f"{sum(r['iou'][c] for r in shots) / len(shots):.2f}" for c in classes)
        lines.append(
            f"| {style} | {full['miou']:.3f} | "
            + ", ".join(f"{r['miou']:.3f}" for r in shots)
            + f" | {mean:.3f} | {full['miou'] - mean:.3f} | {per_full} | {per_shot} |"
        )
    lines += [
        "",
        f"Per-class order: {', '.join(classes)}. The commands behind one style's rows:",
        "```",
        f"dpp toyworld --style STYLE --n {args.n_test} --seed {TEST_SEED} --out test",
        f"dpp toyworld --style STYLE --n {args.n} --seed {FULL_SEED} --out real",
        f"dpp eval-seg --train real --test test --steps {args.steps}",
        f"dpp toyworld --style STYLE --n {args.shots} --seed {SHOT_SEEDS[0]} --out shots   # and the other seeds",
        f"dpp eval-seg --train shots --test test --steps {args.steps}",
        "```",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs/toyworld-calibration"), help="folder for corpora")
    p.add_argument("--out", default=str(ROOT / "docs/toyworld.md"), help="markdown file to write into")
    p.add_argument("--styles", default="flat,textured", help="comma-separated styles to measure")
    p.add_argument("--n", type=int, default=2000, help="real training images of the full row")
    p.add_argument("--n-test", type=int, default=500, help="held-out real test images")
    p.add_argument("--shots", type=int, default=8, help="K of the few-shot rows")
    p.add_argument("--steps", type=int, default=SEG_CONFIG.steps, help="eval-seg optimizer steps per row")
    args = p.parse_args(argv)
    section = run(args)
    write_section(Path(args.out), section, BEGIN, END)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
