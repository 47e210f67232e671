"""The collapse study's section of docs/results.md, written by the study itself.

One command (`python benchmarks/collapse_study.py`, part of `make results`) runs `dpp study collapse`
(the library call behind it, pipeline/studies/collapse.py) with the settings below, then writes its
table, its plot (docs/collapse.png), the command, the wall time and the code revision between the
`collapse` markers of docs/results.md. Finished steps are kept under --work, so an interrupted run
resumes; a work folder made with other settings is refused (its study-settings.json). Each seed can be
run on its own core first (`dpp study collapse ... --seeds 1`, same --out); this script then finds
every step done and only writes the section.

The wall time shown is this run's; the compute time is the sum, over every step, of the seconds
recorded when that step was first computed (each step's timing.json), i.e. what a cold run costs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import one_thread, revision, write_section  # noqa: E402
from pipeline.studies.collapse import (  # noqa: E402
    POLICIES,
    StudyConfig,
    config_from_flags,
    format_table,
    parse_seeds,
    run_study,
    seed_folder,
)

BEGIN, END = "<!-- collapse:begin -->", "<!-- collapse:end -->"


def compute_seconds(work: Path, seeds: tuple[int, ...]) -> dict[int, float]:
    """Per seed: the seconds its steps took when they were first computed (their timing.json files)."""
    out = {}
    for seed in seeds:
        folder = seed_folder(work, seed)
        # seed S > 0 lives inside seed 0's folder: its steps are its own
        inside = [f for f in (seed_folder(work, s) for s in seeds if s != seed) if folder in f.parents]
        total = 0.0
        for path in folder.rglob("timing.json"):
            if any(f in path.parents for f in inside):
                continue
            total += sum(json.loads(path.read_text()).values())
        out[seed] = total
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def render_markdown(args, cfg: StudyConfig, result: dict, command: str, rev: str, where: str, wall: float,
                    compute: dict[int, float], plot_name: str) -> str:  # fmt: skip
    per_seed = ", ".join(f"seed {s} {_minutes(t)}" for s, t in compute.items())
    dpp = (
        f"dpp study collapse --out {args.work} --generations {cfg.generations} --policies "
        f"{','.join(cfg.policies)} --n-real {cfg.n_real} --n-synthetic {cfg.n_synthetic} --n-eval {cfg.n_eval} "
        f"--finetune-steps {cfg.finetune_steps} --seg-steps {cfg.seg_steps} --seeds "
        f"{','.join(map(str, cfg.seeds))}"
    )
    lines = [
        BEGIN,
        "## Model collapse on the flat toy world (`dpp study collapse`)",
        "",
        f"Written by `{command}` at revision {rev} on {where}. This run took "
        f"{_minutes(wall)} (finished steps under {args.work} are reused: delete it for a cold run); the "
        f"steps recorded there took {_minutes(sum(compute.values()))} of computation when first run "
        f"({per_seed}; one CPU thread each). The same study as a `dpp` command:",
        "",
        "```",
        dpp,
        "```",
        "",
        f"Settings: generation 1 is the shipped class-conditional generator (`{result['generator']}`, trained "
        f"on 20,000 real flat toy-world images). Each seed is a full repeat of every arm with its own real "
        f"set (R = {cfg.n_real}, `dpp toyworld` seed 2001 + seed), held-out set ({cfg.n_eval} images, seed "
        f"2002 + seed), samples and fine-tunes. Each generation draws N = {cfg.n_synthetic} balanced, "
        f"unguided, unfiltered samples (DPM-Solver++ {cfg.denoise_steps} steps) labeled by a K = "
        f"{cfg.shots} head on the real set, and is measured against the held-out images in the evaluation "
        f"network's space (k = 3 precision and recall, Fréchet distance, share of samples the network sees "
        f"each class in), by the labeled mask-area share per class, by the mIoU on the held-out images of "
        f"the fixed segmenter (`dpp eval-seg`, {cfg.seg_steps} steps) trained on its {cfg.n_synthetic} "
        f"labeled samples, and by the diversity of the set it was trained on (Vendi score of the first "
        f"{cfg.diversity_images} images by key in the evaluation network's embedding; generation 1: the "
        f"real set). The next generator is the current one fine-tuned for {cfg.finetune_steps} steps "
        f"(batch 32, peak lr {cfg.lr:g}, {max(1, cfg.finetune_steps // 10)} warm-up steps) on the next "
        f"training set: `replace` = the samples just drawn; `accumulate` = the previous training set plus "
        f"them; `fresh` = {cfg.n_real} new real images plus them (`dpp mix --policy fresh`); `control` = "
        f"{cfg.n_real} + {cfg.n_synthetic} new real images and nothing generated (fine-tuning alone).",
        "",
        format_table(result),
        "",
        f"![precision, recall, Fréchet distance, segmenter mIoU and diversity per generation, one line per "
        f"policy, mean over seeds with the range as a bar]({plot_name})",
        END,
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/collapse5"), help="the study's --out folder")
    p.add_argument("--out", type=Path, default=ROOT / "docs/results.md", help="the results file")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/collapse.png", help="where the plot is copied")
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--n-real", type=int, default=300)
    p.add_argument("--n-synthetic", type=int, default=150)
    p.add_argument("--n-eval", type=int, default=300)
    p.add_argument("--finetune-steps", type=int, default=60)
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps per sample")
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--seg-steps", type=int, default=300)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    cfg = config_from_flags(args, parse_seeds(args.seeds))
    where = one_thread(args.device)
    t0 = time.monotonic()
    result = run_study(cfg, args.work, device=args.device, say=lambda t: print(t, flush=True))
    wall = time.monotonic() - t0
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.work / "collapse.png", args.plot)
    plot_name = args.plot.name if args.plot.parent.resolve() == args.out.parent.resolve() else str(args.plot)
    command = " ".join(["python benchmarks/collapse_study.py", *argv])
    compute = compute_seconds(args.work, cfg.seeds)
    text = render_markdown(args, cfg, result, command, revision(ROOT), where, wall, compute, plot_name)
    write_section(args.out, text, BEGIN, END)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
