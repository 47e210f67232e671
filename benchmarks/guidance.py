"""Classifier guidance on the shipped toy-world generator: does a sample contain its target class?

One command (`make results` runs it after the label-efficiency table, or `python benchmarks/guidance.py`):
1. a real corpus and a noise-aware classifier trained on it (`dpp toyworld`, `dpp train-classifier`);
2. for each guidance scale s, the same candidate seeds rendered with a balanced class plan
   (disk, square, triangle, disk, ...), guided towards their target;
3. each sample judged by an independent network — the shipped evaluation network (a segmenter trained
   on real toy-world data, pipeline/evaluation/evalnet.py), not the classifier that guided — target present or not;
   precision and recall of the samples against real images in that network's feature space (what
   `dpp eval-generator` reports); seconds per sample guided vs unguided.
Writes its table into docs/results.md between its markers. Finished steps are kept under --work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cached, log, one_thread, revision, write_section  # noqa: E402
from manifests.storage.reader import load_images  # noqa: E402
from pipeline.diffusion.load import load_generator  # noqa: E402
from pipeline.evaluation.evalnet import embed, load_evalnet, predicted_presence  # noqa: E402
from pipeline.evaluation.generator_quality import precision_recall  # noqa: E402
from pipeline.guidance.classifier import alphas_cumprod, load_classifier, train_classifier  # noqa: E402
from pipeline.guidance.guide import Guide, render  # noqa: E402
from pipeline.models import TEXTURED_EVALNET  # noqa: E402
from pipeline.realdata.ingest import write_toyworld  # noqa: E402

# The published tables were made on the textured world with the first (unconditional) generator; the
# script keeps making them there until they are rerun on the flat world (docs/results.md).
GENERATOR, STYLE = "toyworld-textured", "textured"
from pipeline.seeds import sample_seed  # noqa: E402

CLF_SEED, REF_SEED, JOB_SEED = 1004, 1, 11


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


def run(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    work = Path(args.work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    gen = load_generator(GENERATOR, args.device)
    data, ref, clf_dir = work / f"clf-train-{args.n_train}", work / "reference", work / "classifier"
    log(f"dpp toyworld --style {STYLE} --n {args.n_train} --seed {CLF_SEED} --out {data}", t0)
    write_toyworld(data, args.n_train, CLF_SEED, quiet=True, style=STYLE)
    dense = f" --dense-loss {args.dense_loss}" if args.dense_loss else " --no-dense-loss"
    log(
        f"dpp train-classifier --generator {GENERATOR} --data {data} --steps {args.clf_steps}{dense} --out {clf_dir}",
        t0,
    )
    # every setting that changes the classifier is in the names of what is cached from it
    key = f"dense{args.dense_loss}-n{args.n_train}-steps{args.clf_steps}"
    report_path = work / "results" / f"classifier-{key}.json"
    if (clf_dir / "classifier.json").exists() and not report_path.exists():
        raise SystemExit(
            f"{clf_dir} holds a classifier of another recipe than {key}; delete it or use another --work"
        )
    report = cached(
        report_path,
        lambda: train_classifier(
            gen, data, clf_dir, steps=args.clf_steps, seed=0, dense_weight=args.dense_loss
        ),
    )
    clf = load_classifier(clf_dir, gen)
    log(f"dpp toyworld --style {STYLE} --n {args.n_ref} --seed {REF_SEED} --out {ref}", t0)
    write_toyworld(ref, args.n_ref, REF_SEED, quiet=True, style=STYLE)
    net, cfg = load_evalnet(TEXTURED_EVALNET)
    real = load_images([ref])
    real_feats = embed(net, cfg, real)[0]
    real_share = predicted_presence(net, cfg, real).mean(0).tolist()
    objects = list(cfg.classes[1:])
    plan = tuple(c for c in clf.classes)
    ab = alphas_cumprod(gen)
    rows = {}
    for s in args.scales:

        def one(s=s) -> dict:
            images, secs = [], []
            seeds = [sample_seed(JOB_SEED, 0, c) for c in range(args.n)]
            targets = [(plan[c % len(plan)],) for c in range(args.n)]
            guide = Guide(clf.model, tuple(clf.classes), float(s), ab, clf.id)
            for b in range(0, args.n, args.batch_size):
                t = time.perf_counter()
                im, _ = render(
                    gen,
                    seeds[b : b + args.batch_size],
                    "ddim",
                    args.steps,
                    guide,
                    targets[b : b + args.batch_size],
                )
                secs.append((time.perf_counter() - t) / len(im))
                images.append(im)
            images = np.concatenate(images)
            pres = predicted_presence(net, cfg, images)
            hit = np.array([pres[i, objects.index(targets[i][0])] for i in range(args.n)])
            p, r = precision_recall(real_feats, embed(net, cfg, images)[0], 3)
            per_class = {c: float(hit[[t[0] == c for t in targets]].mean()) for c in plan}
            return {
                "scale": s,
                "n": args.n,
                "target_present": float(hit.mean()),
                "per_class": per_class,
                "precision": p,
                "recall": r,
                "seconds_per_sample_median": float(np.median(secs)),
            }

        log(f"guidance scale {s}: {args.n} samples, balanced targets", t0)
        rows[str(s)] = cached(work / "results" / f"scale-{s}-n{args.n}-steps{args.steps}-{key}.json", one)
        r = rows[str(s)]
        log(f"  target present {r['target_present']:.3f}, precision {r['precision']:.3f}", t0)
    return {
        "classifier": report,
        "classifier_id": clf.id,
        "real_share": dict(zip(objects, real_share, strict=True)),
        "scales": rows,
        "seconds": round(time.monotonic() - t0),
    }


def render_markdown(args, res: dict, command: str, revision: str, where: str) -> str:
    base = res["scales"][str(args.scales[0])]
    rep = res["classifier"]
    acc = rep.get("heldout_accuracy") or rep.get("accuracy") or {}
    lines = [
        markers(args.section)[0],
        "## Classifier guidance (shipped toy-world generator"
        + (", classifier with a pixel loss)" if args.dense_loss else ")"),
        "",
        f"Written by `{command}` at revision {revision} on {where}; this run took {res['seconds'] / 60:.0f} "
        "min (finished steps under --work are reused: delete it for a cold run). The guiding classifier "
        f"({res['classifier_id']}) is `dpp train-classifier` on {args.n_train} real toy-world images "
        f"(`dpp toyworld --style {STYLE} --seed {CLF_SEED}`), {args.clf_steps} steps"
        + (f", with a pixel loss on the masks (`--dense-loss {args.dense_loss}`)" if args.dense_loss else "")
        + f". Each scale renders the same {args.n} "
        f"seeds with a balanced plan (`--classes balanced`), {args.steps} DDIM steps. **Judge**: the shipped "
        "evaluation network (a segmenter trained on real toy-world data, not the guiding classifier): the "
        "target counts as present when it predicts at least 30 of its pixels. Precision/recall: against "
        f"{args.n_ref} real images (`dpp toyworld --style {STYLE} --seed {REF_SEED}`) in that network's features, k = 3.",
        "",
        "| guidance scale s | target present | "
        + " | ".join(f"{c}" for c in base["per_class"])
        + " | precision | recall | s per sample (median) | cost vs s = 0 |",
        "|---:|---:|" + "---:|" * len(base["per_class"]) + "---:|---:|---:|---:|",
    ]
    for s in args.scales:
        r = res["scales"][str(s)]
        lines.append(
            f"| {s} | **{r['target_present']:.3f}** | "
            + " | ".join(f"{v:.3f}" for v in r["per_class"].values())
            + f" | {r['precision']:.3f} | {r['recall']:.3f} | {r['seconds_per_sample_median']:.3f} | "
            f"{r['seconds_per_sample_median'] / base['seconds_per_sample_median']:.2f}× |"
        )
    share = ", ".join(f"{c} {v:.2f}" for c, v in res["real_share"].items())
    lines += [
        "",
        f"Class prior, for scale: the judge finds each class in this share of real images: {share}.",
        f"Guiding classifier, held-out accuracy (mean over classes) by noise level t: {_acc(acc)}.",
        markers(args.section)[1],
    ]
    return "\n".join(lines) + "\n"


def _acc(acc) -> str:
    if isinstance(acc, list):
        return (
            ", ".join(f"t={a['t']} {a['mean']:.3f}" for a in acc) + f" ({acc[0]['images']} held-out images)"
        )
    return json.dumps(acc, sort_keys=True)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs/guidance"))
    p.add_argument("--out", default=str(ROOT / "docs/results.md"))
    p.add_argument("--n", type=int, default=240, help="samples per guidance scale")
    p.add_argument("--n-train", type=int, default=5000, help="real images the classifier trains on")
    p.add_argument("--n-ref", type=int, default=1000, help="real images for precision/recall")
    p.add_argument("--clf-steps", type=int, default=8000, help="classifier optimizer steps")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--section", default="guidance", help="the docs section (its markers) to write")
    p.add_argument(
        "--dense-loss", type=float, default=0.0, help="classifier's pixel-loss weight (0: labels only)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--scales", default="0,1,3,10,30,100")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = p.parse_args(argv)
    args.scales = [float(s) if "." in s else int(s) for s in args.scales.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    where = one_thread(args.device)
    res = run(args)
    shown = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/guidance.py" + (" " + " ".join(shown) if shown else "")
    section = render_markdown(args, res, command, revision(ROOT), where)
    write_section(Path(args.out), section, *markers(args.section))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
