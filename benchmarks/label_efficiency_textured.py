"""The label-efficiency table on the textured world: how far a few-shot head's synthetic labels get a segmenter.

The record of the first world and generator, superseded by the flat world's table (benchmarks/
label_efficiency.py). One command (`make results-textured`, or `python benchmarks/label_efficiency_textured.py`)
runs every row and writes the table into docs/results-textured.md between its markers. Each step is the library call behind one `dpp`
command (listed in the output), run with the same settings for every row. Finished steps are kept
under --work (corpora, labelers, one JSON per result), so an interrupted run resumes.

Support sets are nested: shots-K is `dpp toyworld --style textured --n K --seed 1003`, and the first K scenes of a
seed are the same whatever n is, so shots-1 is in shots-4 is in shots-8 ... The N synthetic images
are the same for every K (`dpp generate --seed 3` draws the same pictures whatever the labeler); the
script renders them once and labels them with each head (`generate(..., render=memo)`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cached, log, one_thread, revision, write_section  # noqa: E402
from manifests.format.record import load_corpus  # noqa: E402
from manifests.storage.reader import iter_samples  # noqa: E402
from pipeline.diffusion.load import load_generator  # noqa: E402
from pipeline.diffusion.pixel import sample  # noqa: E402
from pipeline.evaluation.segmentation import SEG_CONFIG, eval_seg  # noqa: E402
from pipeline.filtering.rules import FilterRules  # noqa: E402
from pipeline.generate.run import generate  # noqa: E402
from pipeline.guidance.classifier import alphas_cumprod, load_classifier  # noqa: E402
from pipeline.guidance.guide import Guide  # noqa: E402
from pipeline.labeling.fewshot import eval_labeler, load_labeler, train_labeler  # noqa: E402
from pipeline.realdata.ingest import write_toyworld  # noqa: E402

# The published tables were made on the textured world with the first (unconditional) generator; the
# script keeps making them there until they are rerun on the flat world (docs/results.md).
GENERATOR, STYLE = "toyworld-textured", "textured"

TEST_SEED, REAL_SEED, SHOTS_SEED, SYN_SEED = 1001, 1002, 1003, 3
# the plain rows keep every candidate: no mask-sanity rule, no rank drop; blocks of 16 = the render batch
UNFILTERED = FilterRules(min_target_pixels=0, drop_fraction=0.0, block=16)
UNFILTERED_FLAGS = "--min-target-pixels 0 --drop-fraction 0 --filter-block 16"
BEGIN, END = "<!-- label-efficiency:begin -->", "<!-- label-efficiency:end -->"


def run(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    work = Path(args.work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    shots = sorted(set(args.shots))
    q = dict(quiet=True)

    test, real = work / "test", work / f"real-{args.n}"
    log(f"dpp toyworld --style {STYLE} --n {args.n_test} --seed {TEST_SEED} --out {test}", t0)
    write_toyworld(test, args.n_test, TEST_SEED, **q, style=STYLE)
    log(f"dpp toyworld --style {STYLE} --n {args.n} --seed {REAL_SEED} --out {real}", t0)
    write_toyworld(real, args.n, REAL_SEED, **q, style=STYLE)

    gen = load_generator(GENERATOR, args.device)
    renders: dict[int, np.ndarray] = {}
    for done in sorted(work.glob("syn-*"))[:1]:  # pictures already rendered (PNG is lossless): reuse them
        if (done / "corpus.json").exists() and load_corpus(done)["config"].get(
            "rules"
        ) == UNFILTERED.as_json():
            renders.update((s.meta["seed"], s.image) for s in iter_samples(done))
            log(f"reusing {len(renders)} rendered images of {done}", t0)

    def memo(seeds: list[int]) -> np.ndarray:
        missing = [s for s in seeds if s not in renders]
        if missing:
            renders.update(zip(missing, sample(gen, missing, "ddim", args.render_steps, 16), strict=True))
        return np.stack([renders[s] for s in seeds])

    def seg(name: str, train: list[Path]) -> dict:
        cmd = f"dpp eval-seg --train {' '.join(map(str, train))} --test {test} --steps {args.steps}"
        log(cmd, t0)
        res = cached(
            work / "results" / f"seg-{name}-{args.steps}.json", lambda: eval_seg(train, test, args.steps)
        )
        log(f"  mIoU {res['miou']:.3f}", t0)
        return res

    rows: dict = {"upper": seg(f"real-{args.n}", [real]), "shots": {}}
    if args.part in ("all", "filters"):
        rows["filters"] = filter_rows(args, gen, work, test, seg, t0)
    for k in shots if args.part in ("all", "base") else []:
        sk, head, syn = work / f"shots-{k}", work / f"head-{k}", work / f"syn-{k}"
        log(f"dpp toyworld --style {STYLE} --n {k} --seed {SHOTS_SEED} --out {sk}", t0)
        write_toyworld(sk, k, SHOTS_SEED, **q, style=STYLE)
        log(f"dpp train-labeler --generator {GENERATOR} --data {sk} --shots {k} --seed 0 --out {head}", t0)
        if (head / "labeler.json").exists():
            lab = load_labeler(head, gen)
        else:
            lab = train_labeler(gen, sk, k, head, seed=0)
        log(f"dpp eval-labeler --labeler {head} --data {test}", t0)
        head_res = cached(work / "results" / f"head-{k}.json", lambda lab=lab: eval_labeler(gen, lab, test))
        log(f"  head mIoU {head_res['miou']:.3f}", t0)
        log(
            f"dpp generate --generator {GENERATOR} --labeler {head} --n {args.n} --seed {SYN_SEED} "
            f"--steps {args.render_steps} {UNFILTERED_FLAGS} --out {syn}",
            t0,
        )
        uses_syn = [f"syn-{k}"] + ([f"shots-{k}+syn-{k}"] if k == args.main_shots or args.all_rows else [])
        if not all((work / "results" / f"seg-{x}-{args.steps}.json").exists() for x in uses_syn):
            generate(
                gen, lab, args.n, SYN_SEED, syn, steps=args.render_steps, render=memo, rules=UNFILTERED, **q
            )
        row = {
            "head": head_res,
            "real_only": seg(f"shots-{k}", [sk]),
            "synthetic_only": seg(f"syn-{k}", [syn]),
        }
        if k == args.main_shots or args.all_rows:
            row["real_plus_synthetic"] = seg(f"shots-{k}+syn-{k}", [sk, syn])
        rows["shots"][k] = row
    rows["seconds"] = round(time.monotonic() - t0)
    return rows


def filter_rows(args, gen, work: Path, test: Path, seg, t0: float) -> dict:
    """Rows for K = main shots: N kept synthetic samples under the default keep rules, and under them
    with classifier guidance towards a balanced class plan (benchmarks/guidance.py's classifier)."""
    k = args.main_shots
    sk, head = work / f"shots-{k}", work / f"head-{k}"
    write_toyworld(sk, k, SHOTS_SEED, quiet=True, style=STYLE)
    lab = (
        load_labeler(head, gen)
        if (head / "labeler.json").exists()
        else train_labeler(gen, sk, k, head, seed=0)
    )
    rules = FilterRules(block=16)
    out: dict = {}
    variants = [("filtered", None, "", ())]
    clf_dir = Path(args.classifier) if args.classifier else None
    if clf_dir is not None and (clf_dir / "classifier.json").exists():
        clf = load_classifier(clf_dir, gen)
        guide = Guide(clf.model, tuple(clf.classes), float(args.guidance_scale), alphas_cumprod(gen), clf.id)
        flags = f"--classes balanced --classifier {clf_dir} --guidance-scale {args.guidance_scale} "
        variants.append((f"guided-{args.guidance_scale}", guide, flags, tuple(clf.classes)))
    else:
        log(f"no classifier ({clf_dir}; see --classifier): no guided row", t0)
    for name, guide, flags, plan in variants:
        syn = work / f"syn-{k}-{name}"
        log(
            f"dpp generate --generator {GENERATOR} --labeler {head} --n {args.n} --seed {SYN_SEED} "
            f"--steps {args.render_steps} {flags}--filter-block 16 --out {syn}",
            t0,
        )
        result = work / "results" / f"seg-syn-{k}-{name}-{args.steps}.json"
        if not result.exists():
            generate(
                gen, lab, args.n, SYN_SEED, syn, steps=args.render_steps, rules=rules, guide=guide,
                class_plan=plan, quiet=True,
            )  # fmt: skip
        counts = cached(
            work / "results" / f"counts-syn-{k}-{name}.json", lambda syn=syn: load_corpus(syn)["counts"]
        )
        out[name] = {**seg(f"syn-{k}-{name}", [syn]), "counts": counts, "flags": flags}
    return out


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def render_markdown(args: argparse.Namespace, rows: dict, command: str, revision: str, where: str) -> str:
    up = rows["upper"]
    classes = list(up["iou"])
    main = rows["shots"][args.main_shots]
    k, n = args.main_shots, args.n
    lines = [
        BEGIN,
        "## Label efficiency (few-shot head on the shipped toy-world generator)",
        "",
        f"Written by `{command}` at revision {revision} on {where}; "
        "finished steps are reused when it is rerun (delete the work folder for a cold run). "
        f"Test set: {up['test_images']} real toy-world images (`dpp toyworld --style {STYLE} --n {up['test_images']} "
        f"--seed {TEST_SEED}`), never used for training. Every segmenter row is `dpp eval-seg` with the "
        f"same fixed network and {args.steps} optimizer steps (batch {SEG_CONFIG.batch_size}, seed 0).",
        "",
        f"| training data (K = {k}, N = {n}) | images | "
        + " | ".join(classes)
        + " | mIoU | % of upper bound |",
        "|---|---:|" + "---:|" * len(classes) + "---:|---:|",
    ]

    def line(name: str, r: dict) -> str:
        pct = 100 * r["miou"] / up["miou"]
        ious = " | ".join(_f(r["iou"][c]) for c in classes)
        return f"| {name} | {r['train_images']} | {ious} | **{r['miou']:.3f}** | {pct:.0f}% |"

    lines.append(line(f"K = {k} real annotated only", main["real_only"]))
    lines.append(line(f"N = {n} synthetic, labeled by the head on those K", main["synthetic_only"]))
    if "real_plus_synthetic" in main:
        lines.append(line("K real + N synthetic", main["real_plus_synthetic"]))
    for name, r in (rows.get("filters") or {}).items():
        c = r["counts"]
        what = (
            "default keep rules"
            if name == "filtered"
            else f"guidance s = {name.split('-', 1)[1]}, balanced classes, default keep rules"
        )
        lines.append(
            line(f"N = {n} synthetic, {what} (kept {c['synthetic']} of {c['synthetic'] + c['rejected']})", r)
        )
    lines.append(line(f"N = {n} real annotated (upper bound)", up))
    h = main["head"]
    lines += [
        "| the head itself on the test images (no segmenter) | – | "
        + " | ".join(_f(h["iou"][c]) for c in classes)
        + f" | **{h['miou']:.3f}** | {100 * h['miou'] / up['miou']:.0f}% |",
        "",
        f"Targets: synthetic-only ≥ 85% of the upper bound (measured "
        f"{100 * main['synthetic_only']['miou'] / up['miou']:.0f}%) and ≥ 15 mIoU points above K-real-only "
        f"(measured {100 * (main['synthetic_only']['miou'] - main['real_only']['miou']):+.1f} points).",
        "",
        "### Curve over K (same test set, same N synthetic images relabeled by each head)",
        "",
        "| K | head mIoU | K real only | N synthetic only | synthetic − real-only (points) "
        "| synthetic % of upper bound |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for kk, r in sorted(rows["shots"].items(), key=lambda kv: int(kv[0])):
        s, ro = r["synthetic_only"]["miou"], r["real_only"]["miou"]
        lines.append(
            f"| {kk} | {r['head']['miou']:.3f} | {ro:.3f} | {s:.3f} | {100 * (s - ro):+.1f} | "
            f"{100 * s / up['miou']:.0f}% |"
        )
    lines += [
        "",
        "The commands behind each step (what the script calls, in this order):",
        "",
        "```",
        f"dpp toyworld --style {STYLE} --n {up['test_images']} --seed {TEST_SEED} --out test",
        f"dpp toyworld --style {STYLE} --n {n} --seed {REAL_SEED} --out real-{n}",
        f"dpp eval-seg --train real-{n} --test test --steps {args.steps}",
        f"# for each K in {', '.join(map(str, sorted(rows['shots'], key=int)))}:",
        f"dpp toyworld --style {STYLE} --n K --seed {SHOTS_SEED} --out shots-K",
        f"dpp train-labeler --generator {GENERATOR} --data shots-K --shots K --seed 0 --out head-K",
        "dpp eval-labeler --labeler head-K --data test",
        f"dpp generate --generator {GENERATOR} --labeler head-K --n {n} --seed {SYN_SEED} "
        f"--steps {args.render_steps} {UNFILTERED_FLAGS} --out syn-K",
        f"dpp eval-seg --train shots-K --test test --steps {args.steps}",
        f"dpp eval-seg --train syn-K --test test --steps {args.steps}",
        f"dpp eval-seg --train shots-{k} syn-{k} --test test --steps {args.steps}   # K = {k} only",
        *[
            f"dpp generate --generator {GENERATOR} --labeler head-{k} --n {n} --seed {SYN_SEED} --steps "
            f"{args.render_steps} {r['flags']}--filter-block 16 --out syn-{k}-{name}\n"
            f"dpp eval-seg --train syn-{k}-{name} --test test --steps {args.steps}"
            for name, r in (rows.get("filters") or {}).items()
        ],
        "```",
        END,
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--work", default=str(ROOT / "runs/label-efficiency"), help="folder for corpora and results"
    )
    p.add_argument(
        "--out", default=str(ROOT / "docs/results-textured.md"), help="markdown file to write the table into"
    )
    p.add_argument("--n", type=int, default=2000, help="synthetic images, and real ones for the upper bound")
    p.add_argument("--n-test", type=int, default=500, help="held-out real test images")
    p.add_argument("--shots", default="1,4,8,16,32", help="K values of the curve")
    p.add_argument("--main-shots", type=int, default=8, help="K of the main table")
    p.add_argument("--steps", type=int, default=SEG_CONFIG.steps, help="eval-seg optimizer steps per row")
    p.add_argument("--render-steps", type=int, default=50, help="DDIM steps per synthetic image")
    p.add_argument(
        "--all-rows", action="store_true", help="K real + N synthetic for every K, not only the main K"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--part", default="all", choices=("all", "base", "filters"), help="rows to compute")
    p.add_argument(
        "--classifier",
        default=None,
        help="classifier folder for a guided row (benchmarks/guidance.py trains one)",
    )
    p.add_argument("--guidance-scale", type=float, default=3.0, help="for the guided row")
    args = p.parse_args(argv)
    args.shots = [int(s) for s in args.shots.split(",")]
    if args.part == "all" and args.main_shots not in args.shots:
        p.error(f"--main-shots {args.main_shots} must be one of --shots {args.shots}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    where = one_thread(args.device)
    rows = run(args)
    if args.part != "all":
        print(f"computed the {args.part} rows; run without --part to write {args.out}")
        return 0
    command = "python benchmarks/label_efficiency_textured.py" + (" " + " ".join(argv) if argv else "")
    if argv is None and len(sys.argv) > 1:
        command = "python benchmarks/label_efficiency_textured.py " + " ".join(sys.argv[1:])
    write_section(Path(args.out), render_markdown(args, rows, command, revision(ROOT), where), BEGIN, END)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
