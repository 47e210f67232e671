"""The labeler table: which head settings raise held-out mIoU at K = 8 on the flat world.

Each variant is `dpp train-labeler` on the same K annotated images (`dpp toyworld --n K --seed 1003`, the
label-efficiency table's support set) with one setting changed, then `dpp eval-labeler --class-given` on
the same 500 held-out real images (`dpp toyworld --n 500 --seed 1001`): the masks the head would write
into a class-conditional synthetic corpus (its foreground as the drawn class), measured on real images.
Each variant changes one setting of the baseline. Results are cached under --work by their settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cached, log, one_thread, revision, write_section  # noqa: E402
from pipeline.diffusion.features import FeatureSpec  # noqa: E402
from pipeline.diffusion.load import load_generator  # noqa: E402
from pipeline.labeling.fewshot import eval_labeler, load_labeler, train_labeler  # noqa: E402
from pipeline.realdata.ingest import write_toyworld  # noqa: E402

GENERATOR = "toyworld"
TEST_SEED, SHOTS_SEED = 1001, 1003
BEGIN, END = "<!-- labeler-variants:begin -->", "<!-- labeler-variants:end -->"
# name: (blocks, timesteps, views, members)
VARIANTS = {
    "baseline (mid, up0, up1 at t = 50; 10 members)": (("mid", "up0", "up1"), (50,), 1, 10),
    "+ up2 block": (("mid", "up0", "up1", "up2"), (50,), 1, 10),
    "timesteps 50 and 200": (("mid", "up0", "up1"), (50, 200), 1, 10),
    "4 views (re-noisings averaged)": (("mid", "up0", "up1"), (50,), 4, 10),
    "t = 150 only": (("mid", "up0", "up1"), (150,), 1, 10),
}


def run(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    work = Path(args.work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    test, shots = work / "test", work / f"shots-{args.shots}"
    write_toyworld(test, args.n_test, TEST_SEED, quiet=True)
    write_toyworld(shots, args.shots, SHOTS_SEED, quiet=True)
    gen = load_generator(GENERATOR, args.device)
    rows = {}
    for name, (blocks, timesteps, views, members) in VARIANTS.items():
        key = f"k{args.shots}-{'+'.join(blocks)}-t{'+'.join(map(str, timesteps))}-v{views}-m{members}"
        folder = work / f"head-{key}"
        log(
            f"dpp train-labeler --generator {GENERATOR} --data {shots} --shots {args.shots} --blocks "
            f"{','.join(blocks)} --timesteps {','.join(map(str, timesteps))} --views {views} --members {members} "
            f"--out {folder}",
            t0,
        )
        spec = FeatureSpec(blocks, timesteps, 32)

        def one(folder=folder, spec=spec, views=views, members=members) -> dict:
            if (folder / "labeler.json").exists():
                lab = load_labeler(folder, gen)
            else:
                lab = train_labeler(gen, shots, args.shots, folder, spec=spec, members=members, views=views)
            t = time.monotonic()
            res = eval_labeler(gen, lab, test, class_given=True)
            return {**res, "label_seconds_per_image": (time.monotonic() - t) / res["images"]}

        log(f"dpp eval-labeler --labeler {folder} --data {test} --class-given", t0)
        rows[name] = {**cached(work / "results" / f"{key}-test{args.n_test}.json", one), "key": key}
        log(f"  mIoU {rows[name]['miou']:.3f}", t0)
    return {"rows": rows, "seconds": round(time.monotonic() - t0)}


def render_markdown(args, res: dict, command: str, revision: str, where: str) -> str:
    rows = res["rows"]
    base = next(iter(rows.values()))
    classes = list(base["iou"])
    lines = [
        BEGIN,
        f"## Labeler settings at K = {args.shots} (flat world, shipped class-conditional generator)",
        "",
        f"Written by `{command}` at revision {revision} on {where}. Each row trains the "
        f"head on the same {args.shots} annotated images (`dpp toyworld --n {args.shots} --seed {SHOTS_SEED}`) "
        f"and scores it with `dpp eval-labeler --class-given` on {base['images']} held-out real images "
        f"(`dpp toyworld --n {args.n_test} --seed {TEST_SEED}`): the masks the head writes into a "
        "class-conditional synthetic corpus (its foreground as the drawn class), measured on real images.",
        "",
        "| head setting | " + " | ".join(classes) + " | mIoU | vs baseline | labeling s/image |",
        "|---|" + "---:|" * len(classes) + "---:|---:|---:|",
    ]
    for name, r in rows.items():
        ious = " | ".join(f"{r['iou'][c]:.3f}" for c in classes)
        delta = 100 * (r["miou"] - base["miou"])
        lines.append(
            f"| {name} | {ious} | **{r['miou']:.3f}** | {delta:+.1f} | {r['label_seconds_per_image']:.3f} |"
        )
    lines += [
        "",
        "Commands (per row, with that row's settings):",
        "",
        "```",
        f"dpp toyworld --n {args.n_test} --seed {TEST_SEED} --out test",
        f"dpp toyworld --n {args.shots} --seed {SHOTS_SEED} --out shots",
        f"dpp train-labeler --generator {GENERATOR} --data shots --shots {args.shots} --blocks B --timesteps T "
        "--views V --out head",
        "dpp eval-labeler --labeler head --data test --class-given",
        "```",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs/labeler-variants"), help="folder for heads and results")
    p.add_argument("--out", default=str(ROOT / "docs/results.md"), help="markdown file to write into")
    p.add_argument("--shots", type=int, default=8, help="annotated images K")
    p.add_argument("--n-test", type=int, default=500, help="held-out real test images")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = p.parse_args(argv)
    where = one_thread(args.device)
    res = run(args)
    command = " ".join(["python benchmarks/labeler_variants.py", *argv])
    write_section(Path(args.out), render_markdown(args, res, command, revision(ROOT), where), BEGIN, END)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
