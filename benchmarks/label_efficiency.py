"""The label-efficiency table on the flat toy world: how far a generator plus K annotated images gets a
segmenter, beside what a user would do instead.

One command (`python benchmarks/label_efficiency.py`, part of `make results`) runs every row and writes
the table into docs/results.md between its markers. Each step is the library call behind one `dpp`
command (listed in the output), with the same settings for every row. Finished steps are kept under
--work (corpora, labelers, one JSON per result), so an interrupted run resumes; every cached file's name
carries every setting that changes it.

The shipped generator is class-conditional: `dpp generate --classes balanced` draws each sample as its
class, and the head's foreground is written as that class (docs/toyworld.md), so the head only has to
find the pixels. The N synthetic images are rendered once (with the main K's head) and relabeled by
every other head with `dpp relabel` (one UNet pass per image). Support sets are nested: shots-K is
`dpp toyworld --n K --seed 1003`, and the first K scenes of a seed are the same whatever n is.

The baseline a user would pick instead of generating data is self-training on the same 2,000 real
images the upper bound uses, unlabeled (`dpp eval-seg --self-train`), given their image-level class tags
(`--tags`), as the class-conditional generator learned from tags.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cached, log, one_thread, revision, step_lock, write_section  # noqa: E402
from manifests.format.record import load_corpus  # noqa: E402
from manifests.storage.reader import iter_samples  # noqa: E402
from pipeline.diffusion.load import load_generator  # noqa: E402
from pipeline.evaluation.segmentation import SEG_CONFIG, eval_seg  # noqa: E402
from pipeline.filtering.rules import FilterRules  # noqa: E402
from pipeline.generate.job import GenerateConfig  # noqa: E402
from pipeline.generate.relabel import relabel  # noqa: E402
from pipeline.generate.run import generate  # noqa: E402
from pipeline.labeling.fewshot import eval_labeler, load_labeler, train_labeler  # noqa: E402
from pipeline.realdata.ingest import write_toyworld  # noqa: E402

GENERATOR = "toyworld"
TEST_SEED, REAL_SEED, SHOTS_SEED, SYN_SEED = 1001, 1002, 1003, 3
# the plain rows keep every candidate: no mask-sanity rule, no rank drop; blocks of 16 = the render batch
UNFILTERED = FilterRules(min_target_pixels=0, drop_fraction=0.0, block=16)
UNFILTERED_FLAGS = "--min-target-pixels 0 --drop-fraction 0 --filter-block 16"
KEEP_RULES = FilterRules(block=16)  # the default keep rules
PSEUDO_THRESHOLD = 0.9
BEGIN, END = "<!-- label-efficiency-flat:begin -->", "<!-- label-efficiency-flat:end -->"


def run(args: argparse.Namespace, helper: bool = False) -> dict:
    t0 = time.monotonic()
    work = Path(args.work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    shots = sorted(set(args.shots))
    main_k, n, steps = args.main_shots, args.n, args.steps

    test, real = work / "test", work / f"real-{n}"
    for folder, count, seed in ((test, args.n_test, TEST_SEED), (real, n, REAL_SEED)):
        log(f"dpp toyworld --n {count} --seed {seed} --out {folder}", t0)
        with step_lock(work, folder.name):
            write_toyworld(folder, count, seed, quiet=True)
    gen = load_generator(GENERATOR, args.device)
    classes = tuple(gen.class_names)

    def seg(name: str, train: list[Path], self_train: Path | None = None, tags: bool = False) -> dict:
        extra = ""
        if self_train is not None:
            extra = f" --self-train {self_train}" + (" --tags" if tags else "")
        log(f"dpp eval-seg --train {' '.join(map(str, train))} --test {test} --steps {steps}{extra}", t0)
        res = cached(
            work / "results" / f"seg-{name}-{steps}-test{args.n_test}.json",
            lambda: eval_seg(
                train, test, steps, self_train=self_train, threshold=PSEUDO_THRESHOLD, tags=tags
            ),
        )
        log(f"  mIoU {res['miou']:.3f}", t0)
        return res

    def head(k: int, ignore_above: float | None = None):
        sk, folder = work / f"shots-{k}", work / f"head-{k}"
        flag = ""
        if ignore_above is not None:
            folder, flag = work / f"head-{k}-ignore{ignore_above}", f" --ignore-above {ignore_above}"
        log(f"dpp toyworld --n {k} --seed {SHOTS_SEED} --out {sk}", t0)
        with step_lock(work, sk.name):
            write_toyworld(sk, k, SHOTS_SEED, quiet=True)
        log(
            f"dpp train-labeler --generator {GENERATOR} --data {sk} --shots {k} --seed 0{flag} --out {folder}",
            t0,
        )
        with step_lock(work, folder.name):
            lab = (
                load_labeler(folder, gen)
                if (folder / "labeler.json").exists()
                else train_labeler(gen, sk, k, folder, ignore_above=ignore_above)
            )
        return sk, folder, lab

    def render(out: Path, scheduler: str, rsteps: int, cfg_scale: float = GenerateConfig.cfg_scale) -> Path:
        """`dpp generate` of the N images (balanced classes, every candidate kept) with the main K's head."""
        _, head_main, lab_main = head(main_k)
        log(
            f"dpp generate --generator {GENERATOR} --labeler {head_main} --n {n} --seed {SYN_SEED} --classes "
            f"balanced --scheduler {scheduler} --steps {rsteps} --class-cfg-scale {cfg_scale:g} "
            f"{UNFILTERED_FLAGS} --out {out}",
            t0,
        )
        with step_lock(work, out.name):
            generate(
                gen, lab_main, n, SYN_SEED, out, steps=rsteps, scheduler=scheduler, rules=UNFILTERED,
                class_plan=classes, quiet=True, cfg_scale=cfg_scale,
            )  # fmt: skip
        return out

    def relabeled(out: Path, lab, folder: Path, rules: FilterRules | None = None, flags: str = "") -> Path:
        """`dpp relabel` of the N images with another head (or keep rules): one UNet pass per image."""
        log(f"dpp relabel {base} --labeler {folder}{flags} --out {out}", t0)
        with step_lock(work, out.name):
            if not (out / "corpus.json").exists():
                relabel(render(base, args.render_scheduler, args.render_steps), gen, lab, out, rules=rules)
        return out

    # the N synthetic images: rendered once, with the main K's head, and relabeled by every other head
    sampler = f"{args.render_scheduler}{args.render_steps}"
    base = work / f"syn-{main_k}-{sampler}"

    def row(k: int, synthetic: bool = True) -> dict:
        """Every result of K's rows; only those that need no synthetic corpus when not `synthetic`."""
        sk, folder, lab = head(k)
        log(f"dpp eval-labeler --labeler {folder} --data {test}", t0)
        head_res = cached(
            work / "results" / f"head-{k}-test{args.n_test}.json",
            lambda lab=lab: eval_labeler(gen, lab, test),
        )
        log(f"  head mIoU {head_res['miou']:.3f}", t0)
        r = {
            "head": head_res,
            "real_only": seg(f"shots-{k}", [sk]),
            "self_train_tags": seg(f"shots-{k}+self-{n}-p{PSEUDO_THRESHOLD}-tags", [sk], real, tags=True),
        }
        if k == main_k or args.all_rows:
            r["self_train"] = seg(f"shots-{k}+self-{n}-p{PSEUDO_THRESHOLD}", [sk], real)
        for kind, rsteps in args.other_samplers if k == main_k else ():
            other = render(work / f"syn-{k}-{kind}{rsteps}", kind, rsteps)
            r.setdefault("other_samplers", {})[f"{kind} {rsteps}"] = seg(other.name, [other])
        for scale in args.other_guidance if k == main_k else ():
            other = render(
                work / f"syn-{k}-{sampler}-cfg{scale}", args.render_scheduler, args.render_steps, scale
            )
            r.setdefault("other_guidance", {})[str(scale)] = seg(other.name, [other])
        if not synthetic:
            return r
        syn = render(base, args.render_scheduler, args.render_steps)
        if k != main_k:
            syn = relabeled(work / f"syn-{k}-{sampler}", lab, folder)
        r["synthetic_only"] = seg(syn.name, [syn])
        if k == main_k or args.all_rows:
            r["real_plus_synthetic"] = seg(f"shots-{k}+{syn.name}", [sk, syn])
        if k == main_k:
            kept = relabeled(
                work / f"syn-{k}-{sampler}-keep-rules", lab, folder, KEEP_RULES,
                " --drop-fraction 0.1 --min-target-pixels 16",
            )  # fmt: skip
            r["keep_rules"] = {**seg(kept.name, [kept]), "counts": load_corpus(kept)["counts"]}
            for t in args.ignore_above:
                _, folder_t, lab_t = head(k, t)
                ign = relabeled(work / f"syn-{k}-{sampler}-ignore{t}", lab_t, folder_t)
                r.setdefault("ignore", {})[t] = {**seg(ign.name, [ign]), "ignored": _ignored_share(ign)}
        return r

    ks = [main_k, *(k for k in shots if k != main_k)]  # the main table first
    if helper:
        # the second process of --jobs 2: the steps that need no synthetic corpus first, from the other end
        # (while the first renders it), then the rest in reverse; whatever the first finished is read back
        for k in reversed(ks):
            row(k, synthetic=False)
        for k in reversed(ks):
            row(k)
        seg(f"real-{n}", [real])
        return {}
    rows: dict = {"upper": seg(f"real-{n}", [real]), "shots": {}}
    rows["render"] = {"scheduler": args.render_scheduler, "steps": args.render_steps}
    for k in ks:
        rows["shots"][k] = row(k)
    rows["seconds"] = round(time.monotonic() - t0)
    return rows


def _ignored_share(corpus: Path) -> float:
    """The share of mask pixels written as ignore (255) over a corpus."""
    ignored = total = 0
    for s in iter_samples(corpus):
        ignored += int((s.mask == 255).sum())
        total += s.mask.size
    return ignored / total


def _sampler(scheduler: str, steps: int) -> str:
    return f"{'DPM-Solver++ (2M)' if scheduler == 'dpm' else scheduler.upper()} {steps} steps"


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def render_markdown(args: argparse.Namespace, rows: dict, command: str, revision: str, where: str) -> str:
    up = rows["upper"]
    classes = list(up["iou"])
    main = rows["shots"][args.main_shots]
    k, n = args.main_shots, args.n
    lines = [
        BEGIN,
        "## Label efficiency on the flat toy world (class-conditional generator, few-shot head)",
        "",
        f"Written by `{command}` at revision {revision} on {where}; this run took "
        f"{rows['seconds'] / 60:.0f} min of wall time"
        + (" (two processes, one torch thread each)" if args.jobs == 2 else "")
        + " to compute what was not found under --work (finished steps are reused: "
        "delete the work folder for a cold run). "
        f"Test set: {up['test_images']} real flat toy-world images (`dpp toyworld --n {up['test_images']} "
        f"--seed {TEST_SEED}`), never used for training. Every segmenter row is `dpp eval-seg` with the "
        f"same fixed network and {args.steps} optimizer steps (batch {SEG_CONFIG.batch_size}, seed 0); "
        "mIoU as pinned in pipeline/evaluation/metrics.py (background included). Synthetic images: "
        f"`dpp generate --classes balanced`, {_sampler(**rows['render'])}, guidance "
        f"{GenerateConfig.cfg_scale:g} (`--class-cfg-scale`: classifier-free guidance towards each sample's class).",
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
    if "self_train" in main:
        lines.append(line(f"K real + self-training on {n} unlabeled real", main["self_train"]))
    lines.append(
        line(f"K real + self-training on {n} unlabeled real with class tags", main["self_train_tags"])
    )
    lines.append(line(f"N = {n} synthetic, labeled by the head on those K", main["synthetic_only"]))
    if "real_plus_synthetic" in main:
        lines.append(line("K real + N synthetic", main["real_plus_synthetic"]))
    for sampler, r in (main.get("other_samplers") or {}).items():
        kind, st = sampler.split()
        lines.append(
            line(f"N = {n} synthetic rendered with {_sampler(kind, int(st))}, labeled by the head", r)
        )
    for scale, r in (main.get("other_guidance") or {}).items():
        what = "without guidance (class-conditional only)" if float(scale) == 1 else f"with guidance {scale}"
        lines.append(line(f"N = {n} synthetic rendered {what}, labeled by the head", r))
    if "keep_rules" in main:
        c = main["keep_rules"]["counts"]
        lines.append(
            line(
                f"N synthetic after the default keep rules (kept {c['synthetic']} of {n})", main["keep_rules"]
            )
        )
    for t, r in (main.get("ignore") or {}).items():
        lines.append(
            line(
                f"N synthetic, pixels where the head's members disagree (JSD > {t}) ignored "
                f"({100 * r['ignored']:.1f}% of pixels)",
                r,
            )
        )
    lines.append(line(f"N = {n} real annotated (upper bound)", up))
    h = main["head"]
    lines += [
        "| the head itself on the test images (no segmenter, no class condition) | – | "
        + " | ".join(_f(h["iou"][c]) for c in classes)
        + f" | **{h['miou']:.3f}** | {100 * h['miou'] / up['miou']:.0f}% |",
        "",
        f"Targets at K = {k}: synthetic-only ≥ 85% of the upper bound (measured "
        f"{100 * main['synthetic_only']['miou'] / up['miou']:.0f}%), ≥ 15 mIoU points above K-real-only "
        f"(measured {100 * (main['synthetic_only']['miou'] - main['real_only']['miou']):+.1f} points), and "
        f"above the self-training baseline (measured "
        f"{100 * (main['synthetic_only']['miou'] - main['self_train_tags']['miou']):+.1f} points against it "
        "with tags).",
        "",
    ]
    if len(rows["shots"]) > 1:
        lines += [
            "### Curve over K (same test set; the same N synthetic images relabeled by each head)",
            "",
            "| K | head mIoU | K real only | K real + self-training (tags) | N synthetic only "
            "| synthetic − real-only (points) | synthetic % of upper bound |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kk, r in sorted(rows["shots"].items(), key=lambda kv: int(kv[0])):
            s, ro = r["synthetic_only"]["miou"], r["real_only"]["miou"]
            lines.append(
                f"| {kk} | {r['head']['miou']:.3f} | {ro:.3f} | {r['self_train_tags']['miou']:.3f} | {s:.3f} | "
                f"{100 * (s - ro):+.1f} | {100 * s / up['miou']:.0f}% |"
            )
        lines.append("")
    rs = f"--scheduler {rows['render']['scheduler']} --steps {rows['render']['steps']}"
    lines += [
        "The commands behind each step (what the script calls, in this order):",
        "",
        "```",
        f"dpp toyworld --n {up['test_images']} --seed {TEST_SEED} --out test",
        f"dpp toyworld --n {n} --seed {REAL_SEED} --out real-{n}",
        f"dpp eval-seg --train real-{n} --test test --steps {args.steps}",
        f"dpp toyworld --n {k} --seed {SHOTS_SEED} --out shots-{k}",
        f"dpp train-labeler --generator {GENERATOR} --data shots-{k} --shots {k} --seed 0 --out head-{k}",
        f"dpp generate --generator {GENERATOR} --labeler head-{k} --n {n} --seed {SYN_SEED} --classes balanced "
        f"{rs} {UNFILTERED_FLAGS} --out syn-{k}",
        f"# for each K in {', '.join(map(str, sorted(rows['shots'], key=int)))}:",
        f"dpp toyworld --n K --seed {SHOTS_SEED} --out shots-K",
        f"dpp train-labeler --generator {GENERATOR} --data shots-K --shots K --seed 0 --out head-K",
        "dpp eval-labeler --labeler head-K --data test",
        f"dpp relabel syn-{k} --labeler head-K --out syn-K   # K ≠ {k}",
        f"dpp eval-seg --train shots-K --test test --steps {args.steps}",
        f"dpp eval-seg --train shots-K --self-train real-{n} --tags --test test --steps {args.steps}",
        f"dpp eval-seg --train syn-K --test test --steps {args.steps}",
        f"# K = {k} only:",
        f"dpp eval-seg --train shots-{k} --self-train real-{n} --test test --steps {args.steps}",
        f"dpp eval-seg --train shots-{k} syn-{k} --test test --steps {args.steps}",
        f"dpp relabel syn-{k} --labeler head-{k} --drop-fraction 0.1 --min-target-pixels 16 --out syn-{k}-keep",
        f"dpp eval-seg --train syn-{k}-keep --test test --steps {args.steps}",
        *[
            f"dpp train-labeler --generator {GENERATOR} --data shots-{k} --shots {k} --seed 0 --ignore-above {t} "
            f"--out head-{k}-ignore{t}\n"
            f"dpp relabel syn-{k} --labeler head-{k}-ignore{t} --out syn-{k}-ignore{t}\n"
            f"dpp eval-seg --train syn-{k}-ignore{t} --test test --steps {args.steps}"
            for t in (main.get("ignore") or {})
        ],
        *[
            f"dpp generate --generator {GENERATOR} --labeler head-{k} --n {n} --seed {SYN_SEED} --classes balanced "
            f"--scheduler {s.split()[0]} --steps {s.split()[1]} {UNFILTERED_FLAGS} --out syn-{k}-{s.replace(' ', '')}\n"
            f"dpp eval-seg --train syn-{k}-{s.replace(' ', '')} --test test --steps {args.steps}"
            for s in (main.get("other_samplers") or {})
        ],
        *[
            f"dpp generate --generator {GENERATOR} --labeler head-{k} --n {n} --seed {SYN_SEED} --classes balanced "
            f"{rs} --class-cfg-scale {g} {UNFILTERED_FLAGS} --out syn-{k}-cfg{g}\n"
            f"dpp eval-seg --train syn-{k}-cfg{g} --test test --steps {args.steps}"
            for g in (main.get("other_guidance") or {})
        ],
        "```",
        END,
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--work", default=str(ROOT / "runs/label-efficiency-flat"), help="folder for corpora and results"
    )
    p.add_argument(
        "--out", default=str(ROOT / "docs/results.md"), help="markdown file to write the table into"
    )
    p.add_argument("--n", type=int, default=2000, help="synthetic images, and real ones for the upper bound")
    p.add_argument("--n-test", type=int, default=500, help="held-out real test images")
    p.add_argument("--shots", default="1,4,8,16,32", help="K values of the curve")
    p.add_argument("--main-shots", type=int, default=8, help="K of the main table")
    p.add_argument("--steps", type=int, default=SEG_CONFIG.steps, help="eval-seg optimizer steps per row")
    p.add_argument(
        "--render-scheduler", default="dpm", choices=("ddim", "ddpm", "dpm"), help="sampler of the N images"
    )
    p.add_argument("--render-steps", type=int, default=20, help="sampler steps per synthetic image")
    p.add_argument(
        "--other-samplers",
        default="",
        help="main K only: more synthetic-only rows rendered with these samplers, e.g. dpm:20",
    )
    p.add_argument(
        "--other-guidance",
        default="",
        help="main K only: more synthetic-only rows rendered with these class-CFG scales, e.g. 1 (no guidance)",
    )
    p.add_argument(
        "--ignore-above",
        default="",
        help="main K only: more rows labeled by the head with `--ignore-above JSD`, e.g. 0.1,0.2",
    )
    p.add_argument("--all-rows", action="store_true", help="every row for every K, not only the main K")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        choices=(1, 2),
        help="2: a second process (one torch thread too) computes steps in another order beside this one, "
        "sharing --work under per-step locks; the same digits in about half the wall time on 2 cores",
    )
    p.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)  # that second process
    args = p.parse_args(argv)
    args.shots = [int(s) for s in args.shots.split(",")]
    args.other_samplers = [
        (s.split(":")[0], int(s.split(":")[1])) for s in args.other_samplers.split(",") if s
    ]
    args.ignore_above = [float(t) for t in args.ignore_above.split(",") if t]
    args.other_guidance = [float(g) for g in args.other_guidance.split(",") if g]
    if args.main_shots not in args.shots:
        p.error(f"--main-shots {args.main_shots} must be one of --shots {args.shots}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    where = one_thread(args.device)
    if args.helper:
        run(args, helper=True)
        return 0
    second = None
    if args.jobs == 2:
        helper_argv = [a for a in argv if a != "--jobs=2"]
        if "--jobs" in helper_argv:
            i = helper_argv.index("--jobs")
            del helper_argv[i : i + 2]
        second = subprocess.Popen([sys.executable, __file__, *helper_argv, "--helper"])
    try:
        rows = run(args)
    except BaseException:
        if second is not None:
            second.terminate()
        raise
    if second is not None and second.wait() != 0:
        print(f"the second process (--jobs 2) failed with exit code {second.returncode}", file=sys.stderr)
        return 1
    command = " ".join(["python benchmarks/label_efficiency.py", *argv])
    write_section(Path(args.out), render_markdown(args, rows, command, revision(ROOT), where), BEGIN, END)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
