"""The `dpp` command line: argument parsing, one-line errors and exit codes; the work lives elsewhere.

Exit codes: 0 success, 1 runtime failure, 2 usage error. Errors print one line naming the bad
value (plus one line per bad file where there are several); `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from manifests.errors import DppError, UsageError

PROG = "dpp"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _int_type(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be in [{minimum}, {maximum}]")
        if value < minimum:
            what = "positive" if minimum == 1 else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be {what}")
        return value

    return parse


def _float_type(lo: float, hi: float | None = None, lo_open: bool = False):
    """A float in [lo, hi] (or (lo, hi] with lo_open); the error names the value and the range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        bad = value != value or (value <= lo if lo_open else value < lo) or (hi is not None and value > hi)
        if bad:
            left = "(" if lo_open else "["
            right = f"{hi}]" if hi is not None else "inf)"
            raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be in {left}{lo}, {right}")
        return value

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


@contextmanager
def _step_bar(args, desc: str, show_loss: bool = False):
    """A progress(step, loss) callback for args.steps steps. Its bar opens at the first step, so a refused
    input prints its one line and nothing else; it is closed on the way out."""
    from tqdm import tqdm

    bars = []

    def progress(step: int, loss: float) -> None:
        if not bars:
            bars.append(tqdm(total=args.steps, desc=desc, unit="step", disable=args.quiet, leave=False))
        bars[0].update(1)
        if show_loss:
            bars[0].set_postfix(loss=f"{loss:.4f}", refresh=False)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _say(args, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


def _check_writable(flag: str, path: Path) -> None:
    """Refuse an output whose nearest existing folder we may not write in, before any work is done
    (a permission error at the end of a long run wastes it). Root passes: it ignores folder modes."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return  # a file at the place of a folder: each command says so in its own words
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DppError(f"{flag} {path}: permission denied; {folder} is not writable")


# --- commands ---------------------------------------------------------------------------------


def cmd_toyworld(args) -> int:
    from pipeline.realdata.ingest import write_toyworld

    res = write_toyworld(
        args.out, args.n, args.seed, args.size, args.shard_size, args.overwrite, args.quiet, style=args.style
    )
    _report_written(args, res)
    return 0


def cmd_ingest(args) -> int:
    from pipeline.realdata.ingest import ingest

    res = ingest(args.images, args.masks, args.classes, args.out, args.shard_size, args.overwrite, args.quiet)
    _report_written(args, res)
    return 0


def _report_written(args, res) -> None:
    rec = res.record
    if res.already_done:
        _say(args, f"{res.out} already holds this corpus ({rec['corpus_id']}); nothing to do")
        return
    n = rec["counts"]["real"] + rec["counts"]["synthetic"]
    _say(
        args,
        f"wrote {res.out}: corpus {rec['corpus_id']}, {n} samples in {len(rec['shards'])} shard(s), "
        f"classes {', '.join(rec['classes'])}",
    )


def cmd_mix(args) -> int:
    from manifests.mix import mix

    policy = args.policy or ("mix" if args.synthetic_fraction is not None else None)
    if policy is None:
        raise UsageError("give --synthetic-fraction F --n N (an exact mix) or --policy accumulate|replace")
    res = mix(
        args.sources, args.out, args.seed, args.n, args.synthetic_fraction, policy, args.balance_classes,
        args.shard_size, args.overwrite,
    )  # fmt: skip
    _report_written(args, res)
    if not res.already_done:
        p = res.record["policy"]
        taken = ", ".join(f"{s['taken']} from {s['corpus_id']}" for s in p["sources"])
        _say(args, f"policy {p['name']}: {p['synthetic']} synthetic + {p['real']} real ({taken})")
    return 0


def cmd_export(args) -> int:
    from manifests.croissant import export_croissant

    if args.out is not None and args.out.exists() and not args.overwrite:
        raise UsageError(f"--out {args.out} already exists; pass --overwrite to replace it")
    path = export_croissant(args.corpus, args.out)
    _say(args, f"wrote {path}: Croissant 1.1 description of {args.corpus}")
    return 0


def cmd_study(args) -> int:
    from pipeline.diffusion.load import load_generator
    from pipeline.studies.collapse import StudyConfig, format_table, run_study

    cfg = StudyConfig(
        generations=args.generations,
        policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
        n_real=args.n_real,
        n_synthetic=args.n_synthetic,
        n_eval=args.n_eval,
        finetune_steps=args.finetune_steps,
        denoise_steps=args.steps,
        shots=args.shots,
        seed=args.seed,
    )
    _check_writable("--out", args.out)
    load_generator(args.generator, args.device, allow_pickle=args.allow_pickle)  # refused before any write
    result = run_study(
        cfg, args.out, args.generator, args.device, lambda t: _say(args, t), allow_pickle=args.allow_pickle
    )
    print(format_table(result))
    _say(args, f"wrote {args.out / 'collapse.md'} and {args.out / 'collapse.json'}; corpora under {args.out}")
    return 0


def cmd_verify(args) -> int:
    from tqdm import tqdm

    from manifests.format.layout import CORPUS_FILE
    from manifests.format.record import load_corpus
    from manifests.verify import verify_corpus

    for path in args.corpus:  # a path that is no corpus at all is a usage error, said before any work
        if not (path / CORPUS_FILE).is_file():
            what = "does not exist" if not path.exists() else f"is not a corpus (no {CORPUS_FILE})"
            raise UsageError(f"{path} {what}")
        try:
            load_corpus(path)
        except UsageError:  # from a newer schema, say: this dataplusplus cannot judge it
            raise
        except DppError:  # a broken corpus.json: verify_corpus reports it below
            pass
    bad = 0
    for path in args.corpus:
        try:
            total = sum(s.get("samples", 0) for s in load_corpus(path)["shards"])
        except DppError:  # a broken corpus.json: verify_corpus reports it below
            total = 0
        with tqdm(
            total=total, desc=f"verifying {path.name}", unit="sample", disable=args.quiet, leave=False
        ) as bar:
            rep = verify_corpus(path, progress=bar.update)
        for note in rep.notes:
            _say(args, f"note: {path}: {note}")
        if rep.ok:
            print(f"OK   {path}: {rep.shards} shard(s), {rep.samples} samples verified")
        else:
            bad += 1
            print(f"BAD  {path}: {len(rep.problems)} problem(s)")
            for p in rep.problems:
                print(f"     {p}")
    return 1 if bad else 0


def cmd_vacuum(args) -> int:
    from manifests.upkeep import vacuum

    found = vacuum(args.corpus, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for rel in found:
        _say(args, f"{verb} {args.corpus / rel}")
    print(f"{args.corpus}: {verb} {len(found)} file(s)" if found else f"{args.corpus}: nothing to remove")
    return 0


def cmd_repair(args) -> int:
    from manifests.upkeep import repair

    res = repair(args.corpus, dry_run=args.dry_run)
    if not res.damaged:
        print(f"{args.corpus}: every listed shard is whole; nothing to repair")
        return 0
    for problems in res.damaged.values():
        for p in problems:
            print(f"damaged  {p}")
    if args.dry_run:
        print(
            f"{args.corpus}: {len(res.damaged)} damaged shard(s), {res.samples_lost} samples; "
            "dry run, nothing changed"
        )
        return 1
    for rel in res.moved:
        _say(args, f"moved    {rel} -> {res.quarantine}/{rel}")
    print(
        f"{args.corpus}: version {res.version} lists {len(res.damaged)} shard(s) fewer "
        f"({res.samples_lost} samples); the damaged files are in {args.corpus / res.quarantine}. "
        "`dpp generate --append` adds new samples."
    )
    return 0


def cmd_audit(args) -> int:
    from manifests.audit import Thresholds, audit, format_audit

    result = audit(
        args.corpus,
        Thresholds(
            max_synthetic_fraction=None if args.max_synthetic_fraction < 0 else args.max_synthetic_fraction,
            max_generation=None if args.max_generation < 0 else args.max_generation,
            min_real=args.min_real,
        ),
    )
    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {args.plot} is not allowed; give a .png file")
        if args.plot.exists() and not args.overwrite:
            raise UsageError(f"--plot {args.plot} already exists; pass --overwrite to replace it")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_audit(result))
    if args.plot is not None:
        from manifests.audit_plot import plot_audit

        _say(args, f"wrote {plot_audit(result, args.plot)}")
    return 0


def cmd_preview(args) -> int:
    from manifests.preview import write_preview

    shown = write_preview(args.corpus, args.out, args.n, args.overwrite)
    _say(args, f"wrote {args.out}: {shown} samples with their masks")
    return 0


def cmd_demo(args) -> int:
    """The main job on the embedded default: real toy-world data, a few-shot labeler on the shipped
    generator, the shipped noise-aware classifier, then the generate flow (guidance + filters),
    verify, audit, Croissant descriptions and pictures. Reruns reuse what is done."""
    import shutil

    from flows.generate import run_flow
    from manifests.audit import audit, format_audit
    from manifests.croissant import export_croissant
    from manifests.preview import write_preview
    from manifests.verify import verify_corpus
    from pipeline.diffusion.load import load_generator
    from pipeline.generate.settings import resolve, to_toml
    from pipeline.guidance.classifier import SHIPPED as SHIPPED_CLASSIFIERS
    from pipeline.guidance.classifier import load_classifier
    from pipeline.labeling.fewshot import load_labeler, train_labeler
    from pipeline.realdata.ingest import write_toyworld

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the demo needs a folder")
    out.mkdir(parents=True, exist_ok=True)
    real, lab_dir, syn = out / "real", out / "labeler", out / "synthetic"

    _say(
        args,
        f"[1/8] toy world: rendering {args.n} labeled {args.style} scenes (seed {args.seed}) into {real}",
    )
    _report_written(
        args, write_toyworld(real, args.n, args.seed, 32, args.shard_size, True, args.quiet, style=args.style)
    )

    gen = load_generator("toyworld", args.device)
    _say(
        args,
        f"[2/8] labeler: {args.shots} annotated real images -> pixel heads on {gen.id}, {gen.device}",
    )
    lab = None
    if (lab_dir / "labeler.json").is_file():
        try:
            lab = load_labeler(lab_dir, gen)
        except UsageError:  # trained for an earlier generator: the demo's own folder, rebuilt
            shutil.rmtree(lab_dir)
        if lab is not None and len(lab.info["support_keys"]) != args.shots:
            lab = None
            shutil.rmtree(lab_dir)
    lab = lab or train_labeler(gen, real, args.shots, lab_dir, args.seed)
    _say(args, f"      labeler {lab.id}, support set {', '.join(lab.info['support_keys'])}")

    clf = load_classifier("toyworld", gen)
    acc = {r["t"]: r["mean"] for r in clf.info["heldout_accuracy"]}
    _say(
        args,
        f"[3/8] classifier: the shipped noise-aware classifier {clf.id} "
        f"(pipeline/models/{SHIPPED_CLASSIFIERS['toyworld'].name}); "
        f"held-out accuracy {acc[0]:.3f} clean, {acc[600]:.3f} at t=600",
    )

    settings = resolve(
        {},
        {
            "job.out": str(syn),
            "job.n": args.samples,
            "job.seed": args.seed,
            "job.shard_size": 64,
            "model.generator": "toyworld",
            "model.labeler": str(lab_dir),
            "model.steps": args.steps,
            "model.device": args.device,
            "guidance.classifier": "toyworld",
            "guidance.scale": args.guidance_scale,
            "guidance.classes": "balanced",
            "guidance.cfg_scale": args.class_cfg_scale,
            "filter.real": str(real),
        },
        {},
    )
    (out / "job.toml").write_text(to_toml(settings))
    _say(
        args,
        f"[4/8] generate (Prefect flow): {args.samples} kept samples, balanced classes, guidance scale "
        f"{args.guidance_scale}, {args.steps} DDIM steps, filters on; job file {out / 'job.toml'}",
    )
    from tqdm import tqdm

    with tqdm(total=args.samples, desc="generating", unit="sample", disable=args.quiet, leave=False) as bar:
        res = run_flow(settings, overwrite=True, progress=bar.update)
    rec = res["record"]
    if res["already_done"]:
        _say(args, f"      {syn} already holds this corpus ({rec['corpus_id']}); nothing to do")
    else:
        _say(args, f"      wrote {syn}: corpus {rec['corpus_id']}, {len(rec['shards'])} shard(s)")
    _report_filter(args, syn, rec)

    _say(args, "[5/8] verify: re-hashing shards and decoding every sample")
    for corpus in (real, syn):
        rep = verify_corpus(corpus)
        if not rep.ok:
            raise DppError(f"verify found {len(rep.problems)} problem(s) in {corpus}: {rep.problems[0]}")
        _say(args, f"      OK {corpus}: {rep.shards} shard(s), {rep.samples} samples")

    _say(args, "[6/8] audit: real vs synthetic accounting of both corpora")
    result = audit([real, syn])
    (out / "audit.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    _say(args, format_audit(result))

    _say(args, "[7/8] croissant: a Croissant 1.1 description of each corpus (checksums, RAI, PROV)")
    for corpus in (real, syn):
        _say(args, f"      wrote {export_croissant(corpus)}")

    _say(args, "[8/8] preview: contact sheets of images beside their masks")
    for corpus, name in ((real, "preview-real.png"), (syn, "preview-synthetic.png")):
        shown = write_preview(corpus, out / name, 64, overwrite=True)
        _say(args, f"      wrote {out / name} ({shown} samples)")
    _say(args, f"done: see {out}/ (job.toml, audit.json, preview-real.png, preview-synthetic.png)")
    _say(args, f"      rerun the generation alone: dpp generate --config {out / 'job.toml'}")
    return 0


def cmd_train_generator(args) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from manifests.format.record import load_corpus
    from manifests.storage.reader import load_images, single_class_labels
    from pipeline.diffusion.common import resolve_device
    from pipeline.diffusion.train import CHECKPOINT_DIR, TrainConfig, check_resume, train

    out = args.out
    has_ckpt = (out / CHECKPOINT_DIR / "state.json").is_file()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the model")
    _check_writable("--out", out)
    if out.exists() and any(out.iterdir()) and not (has_ckpt and args.resume):
        hint = "pass --resume to continue it" if has_ckpt else "choose a new or empty folder"
        raise UsageError(f"--out {out} is not empty; {hint}")
    if args.resume and not has_ckpt:
        raise UsageError(f"--resume: {out} holds no checkpoint ({CHECKPOINT_DIR}/state.json) to resume from")
    records = [load_corpus(p) for p in args.data]
    device = resolve_device(args.device)
    classes = records[0]["classes"]
    if args.class_conditional and any(r["classes"] != classes for r in records):
        raise UsageError("--class-conditional: the --data corpora have different class lists")
    cfg = TrainConfig(
        size=args.size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        num_classes=len(classes) - 1 if args.class_conditional else 0,
        snr_gamma=args.snr_gamma,
    )
    if args.resume:
        try:
            check_resume(out / CHECKPOINT_DIR, cfg)
        except ValueError as e:
            raise UsageError(f"--resume: {e}; resume with the flags that started it") from None
    _say(args, f"loading images from {len(args.data)} corpus(es)")
    images = load_images(args.data)
    labels = single_class_labels(args.data, classes) if args.class_conditional else None
    if len(images) == 0:
        raise UsageError("--data corpora hold no samples to train on")
    if images.shape[1:3] != (args.size, args.size):
        raise UsageError(
            f"--size {args.size} does not match the corpus images ({images.shape[2]}x{images.shape[1]})"
        )
    generations = [int(g) for r in records for g, n in r["per_generation"].items() if n > 0]
    provenance = {
        "training_data": [
            {
                "corpus_id": r["corpus_id"],
                "version": int(r.get("version", 1)),
                "path": str(p),
                "samples": r["counts"]["real"] + r["counts"]["synthetic"],
                "per_generation": r["per_generation"],
                "config_hash": r["config_hash"],
            }
            for p, r in zip(args.data, records, strict=True)
        ],
        "sample_generation": 1 + max(generations, default=0),
    }
    if labels is not None:
        counts = np.bincount(labels, minlength=cfg.num_classes + 1)
        provenance["class_labels"] = {"classes": classes[1:], "images_per_label": counts.tolist()}
        _say(
            args,
            "class-conditional: images per class "
            + ", ".join(f"{c} {n}" for c, n in zip([*classes[1:], "(none)"], counts.tolist(), strict=True)),
        )
    bar = tqdm(total=cfg.steps, desc="training", unit="step", disable=args.quiet)

    def progress(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    torch.manual_seed(args.seed)
    limit = args.time_limit * 60 if args.time_limit else None
    step = train(
        images,
        out,
        cfg,
        resume=args.resume,
        device=str(device),
        progress=progress,
        time_limit_s=limit,
        provenance=provenance,
        labels=labels,
    )
    bar.close()
    state = "finished" if step >= cfg.steps else "stopped at the time limit (resume with --resume)"
    _say(args, f"{state}: step {step}/{cfg.steps}; EMA weights in {out}, checkpoint in {CHECKPOINT_DIR}/")
    return 0


def cmd_sample(args) -> int:
    from pipeline.diffusion.load import load_generator
    from pipeline.diffusion.sampling import SampleRequest, run, write

    _check_writable("--out", args.out)
    gen = load_generator(args.generator, args.device, args.dtype, args.allow_pickle)
    req = SampleRequest(
        n=args.n,
        seed=args.seed,
        op=args.op,
        steps=args.steps,
        scheduler=args.scheduler,
        batch_size=args.batch_size,
        truncation=args.truncation,
        real=args.real,
        index=args.index,
        radius=args.radius,
        classes=args.classes,
        cfg_scale=args.class_cfg_scale,
    )
    result = run(gen, req)
    wrote = write(result, args.out, args.op, args.overwrite)
    _say(args, f"wrote {wrote} from {gen.id} on {gen.device}")
    if result.reconstruction_error is not None:
        _say(args, f"inversion round trip: RMSE {result.reconstruction_error:.2f} (0-255 scale)")
    return 0


def cmd_eval_generator(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from manifests.storage.reader import iter_samples
    from pipeline.diffusion.load import load_generator
    from pipeline.diffusion.pixel import sample
    from pipeline.diffusion.sampling import DEFAULT_CFG_SCALE, SampleRequest, sample_classes
    from pipeline.evaluation.evalnet import load_evalnet
    from pipeline.evaluation.generator_quality import evaluate
    from pipeline.seeds import sample_seed

    gen = load_generator(args.generator, args.device, args.dtype, args.allow_pickle)
    net, cfg = load_evalnet()
    real = np.stack([s.image for s in iter_samples(args.real, limit=args.n)])
    if real.shape[1:] != (*gen.image_shape[1:], 3):
        raise UsageError(
            f"--real images are {real.shape[2]}x{real.shape[1]}, the generator makes "
            f"{gen.image_shape[2]}x{gen.image_shape[1]}"
        )
    seeds = [sample_seed(args.seed, 0, i) for i in range(args.n)]
    req = SampleRequest(n=args.n, seed=args.seed, classes=args.classes, cfg_scale=args.class_cfg_scale)
    asked = sample_classes(gen, req)
    bar = tqdm(total=args.n, desc="sampling", unit="sample", disable=args.quiet)
    fake = sample(
        gen,
        seeds,
        args.scheduler,
        args.steps,
        args.batch_size,
        progress=bar.update,
        classes=asked,
        cfg_scale=DEFAULT_CFG_SCALE if args.class_cfg_scale is None else args.class_cfg_scale,
    )
    bar.close()
    q = evaluate(net, cfg, real, fake, k=args.k, asked=asked)
    if args.json:
        print(json.dumps({"generator": gen.id, **q.as_json()}, indent=2, sort_keys=True))
        return 0
    print(f"generator {gen.id}: {q.n_generated} samples vs {q.n_real} real ({args.real})")
    print(f"precision (k={q.k})   {q.precision:.3f}")
    print(f"recall    (k={q.k})   {q.recall:.3f}")
    print(f"Frechet distance    {q.frechet_distance:.3f}")
    print(
        f"shape purity        {q.shape_purity_generated:.3f} ({q.objects_generated} objects; real images "
        f"{q.shape_purity_real:.3f}, {q.objects_real} objects)"
    )
    if q.drawn_as_asked is not None:
        print(f"drawn as asked      {q.drawn_as_asked:.3f} (samples mostly of the class they were drawn as)")
    print(f"{'class':<12} {'shows class':>12} {'real':>8} {'objects':>9} {'real':>8}")
    for c in q.class_share_generated:
        print(
            f"{c:<12} {q.class_share_generated[c]:>12.3f} {q.class_share_real[c]:>8.3f} "
            f"{q.object_share_generated[c]:>9.3f} {q.object_share_real[c]:>8.3f}"
        )
    return 0


def _timesteps(text: str, gen) -> tuple[int, ...]:
    """`--timesteps 50,200`: diffusion timesteps of `gen`'s training schedule, 0 .. T-1."""
    horizon = gen.scheduler_config.get("num_train_timesteps", 1000)
    out = []
    for t in text.split(","):
        try:
            out.append(int(t))
        except ValueError:
            raise UsageError(f"--timesteps {t.strip()!r} is not an integer; give e.g. 50 or 50,200") from None
        if not 0 <= out[-1] < horizon:
            raise UsageError(f"--timesteps {out[-1]} is not allowed; it must be in [0, {horizon - 1}]")
    return tuple(out)


def cmd_train_labeler(args) -> int:
    from pipeline.diffusion.features import FeatureSpec
    from pipeline.diffusion.load import load_generator
    from pipeline.labeling.fewshot import train_labeler

    _check_writable("--out", args.out)
    gen = load_generator(args.generator, args.device, allow_pickle=args.allow_pickle)
    spec = FeatureSpec(tuple(args.blocks.split(",")), _timesteps(args.timesteps, gen), 32)
    lab = train_labeler(gen, args.data, args.shots, args.out, args.seed, spec, args.members)
    _say(
        args,
        f"wrote {args.out}: labeler {lab.id} for {gen.id}, {args.shots} support images "
        f"({', '.join(lab.info['support_keys'][:4])}{', ...' if args.shots > 4 else ''})",
    )
    return 0


def cmd_eval_labeler(args) -> int:
    from pipeline.diffusion.load import load_generator
    from pipeline.labeling.fewshot import eval_labeler, load_labeler

    gen = load_generator(args.generator, args.device, allow_pickle=args.allow_pickle)
    lab = load_labeler(args.labeler, gen)
    res = eval_labeler(gen, lab, args.data)
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return 0
    print(f"labeler {res['labeler']} on {res['images']} images of {args.data} (support images excluded)")
    for c, v in res["iou"].items():
        print(f"{c:<16} IoU {'-' if v is None else f'{v:.3f}'}")
    print(f"{'mean':<16} mIoU {res['miou']:.3f}")
    return 0


def cmd_train_classifier(args) -> int:
    from pipeline.diffusion.load import load_generator
    from pipeline.guidance.classifier import train_classifier

    _check_writable("--out", args.out)
    gen = load_generator(args.generator, args.device, allow_pickle=args.allow_pickle)
    with _step_bar(args, "training classifier", show_loss=True) as progress:
        res = train_classifier(
            gen, args.data, args.out, args.steps, args.seed, progress=progress, dense_weight=args.dense_loss
        )
    _say(
        args,
        f"wrote {args.out}: classifier {res['classifier']} for {gen.id} ({', '.join(res['classes'])}), "
        f"{res['train_images']} training / {res['heldout_images']} held-out images",
    )
    reports = res["heldout_accuracy"]
    _say(args, f"{'held-out accuracy':<20}" + "".join(f"{'t=' + str(r['t']):<7}" for r in reports).rstrip())
    for c in res["classes"]:
        _say(args, f"{c:<20}" + "".join(f"{r['per_class'][c]:<7.3f}" for r in reports).rstrip())
    _say(args, f"{'mean':<20}" + "".join(f"{r['mean']:<7.3f}" for r in reports).rstrip())
    return 0


def _filter_rules(args, base: dict | None = None):
    """FilterRules from the command line, starting from `base` (refilter: the corpus's own rules)."""
    from pipeline.filtering.rules import FilterRules

    values = dict(base or {})
    for name in (
        "min_target_pixels",
        "min_fragment_pixels",
        "min_confidence",
        "max_uncertainty",
        "max_realism_distance",
        "drop_fraction",
        "filter_block",
    ):
        v = getattr(args, name, None)
        if v is not None:
            values["block" if name == "filter_block" else name] = v
    for name in ("min_confidence", "max_uncertainty", "max_realism_distance"):
        if getattr(args, f"no_{name}", False):
            values[name] = None
    return FilterRules(**values)


FLAG_NAMES = {
    "filter.block": "filter-block",
    "guidance.scale": "guidance-scale",
    "guidance.classes": "classes",
    "guidance.cfg_scale": "class-cfg-scale",
    "prompt.template": "prompt-template",
    "prompt.negative": "negative-prompt",
    "attention.low": "attention-low",
    "attention.high": "attention-high",
    "attention.refine": "attention-refine",
    "attention.agreement": "attention-agreement",
}


def _class_args(p: argparse.ArgumentParser) -> None:
    """What a class-conditional generator draws (ignored by unconditional ones)."""
    p.add_argument(
        "--classes",
        default=None,
        help="class-conditional generators: class plan, taken in turn (disk,square | disk=2,square=1 | "
        "balanced; default balanced)",
    )
    p.add_argument(
        "--class-cfg-scale",
        type=_float_type(0.0, 100.0),
        default=None,
        help="class-conditional generators: classifier-free guidance scale (default 3.0; 1 = conditional)",
    )


def _flag(f) -> str:
    return "--" + FLAG_NAMES.get(f.key, f.name.replace("_", "-"))


def _job_args(p: argparse.ArgumentParser) -> None:
    """One flag per job-file field (FIELDS, pipeline/generate/settings.py); unset flags keep the file's."""
    from pipeline.generate.settings import FIELDS, REQUIRED

    for f in FIELDS:
        default = "required" if f.default is REQUIRED else ("off" if f.default is None else f.default)
        text = f"{f.doc} [{f.key}; default {default}]"
        if f.kind is bool:
            p.add_argument(_flag(f), dest=f.key, action="store_const", const=True, default=None, help=text)
        else:
            kind = {int: _int_type(int(f.lo) if f.lo is not None else -(2**62)), float: float, str: str}[
                f.kind
            ]
            p.add_argument(
                _flag(f), dest=f.key, type=kind, default=None, choices=f.choices or None, help=text
            )


def job_settings(args) -> dict:
    """The resolved job settings: defaults < --config file < flags < --set."""
    from pipeline.generate.settings import FIELDS, parse_set, read_job_file, resolve

    file_values = read_job_file(args.config) if args.config else {}
    flags = {f.key: getattr(args, f.key) for f in FIELDS}
    return resolve(file_values, flags, parse_set(args.set or []))


def cmd_generate(args) -> int:
    from pipeline.generate.run import job_from_settings

    settings = job_settings(args)
    if args.dry_run:
        return _dry_run(settings)
    from tqdm import tqdm

    from flows.generate import run_flow

    job_from_settings(settings)  # bad models, classes or rules are refused before Prefect starts
    _check_writable("--out", Path(settings["job.out"]))
    with tqdm(
        total=settings["job.n"], desc=f"generating {Path(settings['job.out']).name}", unit="sample",
        disable=args.quiet, leave=False,
    ) as bar:  # fmt: skip
        res = run_flow(settings, args.overwrite, bar.update, verbose=args.verbose)
    out, rec = Path(settings["job.out"]), res["record"]
    if res["removed"]:
        _say(
            args,
            f"removed {len(res['removed'])} orphan or temporary file(s): {', '.join(res['removed'][:5])}",
        )
    if res["resumed"]:
        _say(args, "resumed: shards committed by the interrupted run were kept")
    if res["already_done"]:
        _say(args, f"{out} already holds this corpus ({rec['corpus_id']}); nothing to do")
        return 0
    n = rec["counts"]["real"] + rec["counts"]["synthetic"]
    version = rec.get("version", 1)
    what = f"version {version}, " if version > 1 else ""
    _say(
        args,
        f"wrote {out}: corpus {rec['corpus_id']} ({what}{n} samples in {len(rec['shards'])} shard(s), "
        f"synthetic fraction {rec['synthetic_fraction']:.3f}), classes {', '.join(rec['classes'])}",
    )
    _report_filter(args, out, rec, (rec.get("history") or [{}])[-1].get("shards"))
    return 0


def cmd_serve(args) -> int:
    from flows.generate import check_cron, serve

    check_cron(args.cron)
    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError(
            "dpp serve needs a Prefect server: start one with `dpp server` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (schedules do not run on a temporary server)"
        )
    settings = job_settings(args)
    from pipeline.generate.run import job_from_settings

    job_from_settings(settings)  # bad models, classes or rules are refused before anything is registered
    print(
        f"serving deployment dpp-generate-scheduled/{args.name} (cron {args.cron!r}, "
        f"{'appending to' if settings['job.append'] else 'writing'} {settings['job.out']}) on "
        f"{os.environ.get('PREFECT_API_URL', '(no server)')}; Ctrl-C stops",
        flush=True,
    )
    serve(settings, args.cron, args.name)
    return 0


def cmd_server(args) -> int:
    """`prefect server start` on loopback, with our quiet environment; runs until interrupted."""
    import subprocess

    from flows.prefect_env import default_prefect_home, quiet_prefect_env

    quiet_prefect_env(default_prefect_home())
    url = f"http://127.0.0.1:{args.port}/api"
    print(
        f"Prefect server on {url} (PREFECT_HOME {os.environ['PREFECT_HOME']}); in another shell:", flush=True
    )
    print(f"  export PREFECT_API_URL={url}", flush=True)
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    return subprocess.call(cmd)


def _dry_run(settings: dict) -> int:
    from manifests.format.layout import CORPUS_FILE
    from manifests.format.record import load_corpus
    from manifests.storage.commit import next_shard_index
    from pipeline.generate.run import job_from_settings
    from pipeline.generate.settings import format_plan, plan_shards, to_toml

    job = job_from_settings(settings)
    out = job.out
    first, version = 0, None
    if job.append:
        if not (out / CORPUS_FILE).is_file():
            raise UsageError(f"--append: {out} holds no corpus to append to; run without --append first")
        rec = load_corpus(out)
        version = rec.get("version", 1)
        first = next_shard_index(rec)
    plans = plan_shards(job.n, job.shard_size, job.seed, job.max_attempts, first)
    print("job settings:")
    print("\n".join(f"  {line}".rstrip() for line in to_toml(settings).strip().splitlines()))
    print(format_plan(plans, out, job.chash, job.config, version))
    return 0


def _report_filter(args, out: Path, rec: dict, only: list[int] | None = None) -> None:
    """`filter: kept X of Y candidates; rejected ...` over the corpus's shards (or shards `only`)."""
    from manifests.format.layout import MANIFEST_DIR
    from manifests.format.record import read_manifest
    from pipeline.filtering.rules import describe_reasons

    reasons: Counter = Counter()
    kept = total = 0
    for s in rec["shards"]:
        stem = Path(s["name"]).stem
        if only is not None and int(stem.split("-")[-1]) not in only:
            continue
        for r in read_manifest(Path(out) / MANIFEST_DIR / f"{stem}.parquet").to_pylist():
            total += 1
            kept += r["kept"]
            if not r["kept"]:
                reasons[r["reject_reason"]] += 1
    if total:
        why = f"; rejected {describe_reasons(reasons)}" if reasons else ""
        _say(args, f"filter: kept {kept} of {total} candidates{why}")


def cmd_refilter(args) -> int:
    from manifests.format.record import load_corpus
    from pipeline.filtering.refilter import refilter

    record = load_corpus(args.corpus)
    base = (record.get("config") or {}).get("rules")
    if record.get("config", {}).get("kind") != "generate" or base is None:
        raise UsageError(
            f"{args.corpus} was not written by dpp generate; refilter needs stored filter scores"
        )
    rules = _filter_rules(args, base)
    res = refilter(args.corpus, args.out, rules, args.overwrite, args.quiet)
    _report_written(args, res.result)
    _say(args, res.summary)
    return 0


def cmd_eval_seg(args) -> int:
    from pipeline.evaluation.segmentation import eval_seg

    with _step_bar(args, "training segmenter") as progress:
        res = eval_seg(args.train, args.test, args.steps, args.seed, progress=progress)
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return 0
    print(
        f"trained on {res['train_images']} images ({', '.join(res['train'])}), {res['steps']} steps; "
        f"tested on {res['test_images']} images of {res['test']}"
    )
    for c, v in res["iou"].items():
        print(f"{c:<16} IoU {v:.3f}")
    print(f"{'mean':<16} mIoU {res['miou']:.3f}")
    return 0


def _filter_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    """The keep rules (pipeline/filtering/rules.py); refilter starts from the corpus's own rules."""
    from pipeline.filtering.rules import FilterRules

    d = FilterRules()

    def dflt(v, text):
        return f"{text} (default {v})" if defaults else text

    p.add_argument(
        "--min-target-pixels",
        type=_int_type(0),
        help=dflt(d.min_target_pixels, "pixels of the target class (or of any object) a mask needs; 0 = off"),
    )
    p.add_argument(
        "--min-fragment-pixels",
        type=_int_type(0),
        help=dflt(d.min_fragment_pixels, "smallest object region allowed in a mask; 0 = off"),
    )
    p.add_argument("--min-confidence", type=_float_type(0.0, 1.0), help="classifier confidence in the target")
    p.add_argument("--max-uncertainty", type=_float_type(0.0), help="label-head image uncertainty")
    p.add_argument("--max-realism-distance", type=_float_type(0.0), help="k-NN distance to --real images")
    p.add_argument(
        "--drop-fraction",
        type=_float_type(0.0, 0.99),
        help=dflt(d.drop_fraction, "share of the most uncertain candidates of each block dropped"),
    )
    p.add_argument(
        "--filter-block", type=_int_type(1), help=dflt(d.block, "candidates per block of the drop rule")
    )


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when present"
    )


def _pickle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a --generator folder that has only a pickle checkpoint (.bin); unpickling can run "
        "code, so only for a file you trust",
    )


def _render_args(p: argparse.ArgumentParser, batch_default: int = 16) -> None:
    p.add_argument("--generator", default="toyworld", help="toyworld, a diffusers folder, or a hub id")
    _pickle_arg(p)
    p.add_argument("--steps", type=_int_type(1), default=50, help="denoising steps (default 50)")
    p.add_argument("--scheduler", choices=("ddim", "ddpm"), default="ddim", help="default ddim")
    p.add_argument("--batch-size", type=_int_type(1), default=batch_default, help="samples per UNet batch")
    _device_arg(p)
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="float32 on the CPU; half precision on a GPU",
    )


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="dataplusplus: labeled dataset synthesis with provenance")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    pos = _int_type(1)
    nonneg = _int_type(0)
    positive = _float_type(0.0, lo_open=True)

    p = sub.add_parser("demo", help="the whole job on the embedded default, offline, on the CPU")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the demo's outputs")
    p.add_argument("--n", type=pos, default=500, help="toy-world samples (default 500)")
    p.add_argument("--seed", type=nonneg, default=0, help="job seed (default 0)")
    p.add_argument("--shard-size", type=_int_type(1), default=250)
    p.add_argument("--samples", type=pos, default=256, help="synthetic samples to keep (default 256)")
    p.add_argument("--shots", type=pos, default=8, help="annotated real images for the labeler (default 8)")
    p.add_argument(
        "--guidance-scale", type=_float_type(0.0), default=10.0, help="classifier guidance scale (default 10)"
    )
    p.add_argument("--steps", type=pos, default=25, help="DDIM steps per sample (default 25)")
    p.add_argument(
        "--style", choices=("flat", "textured"), default="flat", help="toy-world style (default flat)"
    )
    p.add_argument(
        "--class-cfg-scale",
        type=_float_type(0.0, 100.0),
        default=3.0,
        help="classifier-free guidance of the class-conditional generator (default 3.0)",
    )
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("toyworld", help="write a real corpus of procedural toy-world scenes")
    p.add_argument("--n", type=pos, required=True, help="number of samples")
    p.add_argument(
        "--seed", type=nonneg, required=True, help="job seed; the same seed gives identical shards"
    )
    p.add_argument("--out", type=Path, required=True, help="output corpus folder")
    p.add_argument("--size", type=int, choices=(32, 64), default=32, help="image side in pixels")
    p.add_argument(
        "--style",
        choices=("flat", "textured"),
        default="flat",
        help="flat: one class per scene, flat colours (default); textured: the first world, byte for byte",
    )
    p.add_argument("--shard-size", type=_int_type(1), default=1000, help="samples per shard")
    p.add_argument("--overwrite", action="store_true", help="replace a different corpus already at --out")
    _common(p)
    p.set_defaults(func=cmd_toyworld)

    p = sub.add_parser("ingest", help="turn your images and index masks into a real corpus")
    p.add_argument("--images", type=Path, required=True, help="folder of PNG/JPEG images")
    p.add_argument(
        "--masks", type=Path, required=True, help="folder of single-channel index PNGs, same stems"
    )
    p.add_argument(
        "--classes", type=Path, required=True, help="text file, one class name a line (line = value)"
    )
    p.add_argument("--out", type=Path, required=True, help="output corpus folder")
    p.add_argument("--shard-size", type=_int_type(1), default=1000, help="samples per shard")
    p.add_argument("--overwrite", action="store_true", help="replace a different corpus already at --out")
    _common(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("mix", help="a new corpus from existing ones: exact real/synthetic split or a policy")
    p.add_argument("sources", type=Path, nargs="+", help="source corpus folders")
    p.add_argument("--out", type=Path, required=True, help="output corpus folder")
    p.add_argument("--seed", type=nonneg, required=True, help="seed of the draw")
    p.add_argument("--n", type=pos, default=None, help="samples in the mix (mix: required)")
    p.add_argument(
        "--synthetic-fraction",
        type=_float_type(0.0, 1.0),
        default=None,
        help="share of synthetic samples, in [0, 1]",
    )
    p.add_argument(
        "--policy", choices=("mix", "accumulate", "replace"), default=None,
        help="mix (exact split; the default with --synthetic-fraction), accumulate (everything), "
        "replace (only the deepest synthetic generation)",
    )  # fmt: skip
    p.add_argument(
        "--balance-classes", action="store_true", help="draw so that classes are as even as possible"
    )
    p.add_argument("--shard-size", type=_int_type(1), default=1000, help="samples per shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace a different corpus already at --out")
    _common(p)
    p.set_defaults(func=cmd_mix)

    p = sub.add_parser("export", help="describe a corpus in another format (croissant)")
    p.add_argument(
        "format", choices=("croissant",), help="croissant: Croissant 1.1 JSON-LD with RAI and PROV fields"
    )
    p.add_argument("corpus", type=Path, help="corpus folder")
    p.add_argument("--out", type=Path, default=None, help="file to write (default CORPUS/croissant.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("study", help="experiments: collapse (the self-consuming loop at toy scale)")
    p.add_argument("study", choices=("collapse",), help="collapse: generations trained on their own output")
    p.add_argument("--out", type=Path, required=True, help="folder for every corpus, model and the table")
    p.add_argument("--generator", default="toyworld", help="generation 1 (default: the shipped toyworld)")
    _pickle_arg(p)
    p.add_argument("--generations", type=pos, default=3, help="model generations per policy (default 3)")
    p.add_argument("--policies", default="replace,accumulate", help="replace, accumulate, fresh (comma list)")
    p.add_argument("--n-real", type=pos, default=1000, help="real training images R (default 1000)")
    p.add_argument("--n-synthetic", type=pos, default=1000, help="samples per generation N (default 1000)")
    p.add_argument("--n-eval", type=pos, default=500, help="held-out real images (default 500)")
    p.add_argument("--finetune-steps", type=pos, default=300, help="steps between generations (default 300)")
    p.add_argument("--steps", type=pos, default=25, help="DDIM steps per sample (default 25)")
    p.add_argument("--shots", type=pos, default=8, help="labeler support images (default 8)")
    p.add_argument("--seed", type=nonneg, default=0, help="seed (default 0)")
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("verify", help="check shards, samples and manifests against corpus.json")
    p.add_argument("corpus", type=Path, nargs="+", help="corpus folder(s)")
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("vacuum", help="remove temporary files and files no corpus or job owns")
    p.add_argument("corpus", type=Path, help="corpus folder (or the output of an unfinished job)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    _common(p)
    p.set_defaults(func=cmd_vacuum)

    p = sub.add_parser("repair", help="set damaged shards aside (quarantine/) and list only whole ones")
    p.add_argument("corpus", type=Path, help="corpus folder")
    p.add_argument("--dry-run", action="store_true", help="name the damaged shards; change nothing")
    _common(p)
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("audit", help="real vs synthetic accounting of one or more corpora")
    p.add_argument("corpus", type=Path, nargs="+", help="corpus folder(s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument(
        "--max-synthetic-fraction", type=_float_type(-1.0, 1.0), default=0.5,
        help="warn above this synthetic share of a corpus (default 0.5; -1 = never)",
    )  # fmt: skip
    p.add_argument(
        "--max-generation", type=_int_type(-1), default=1,
        help="warn about samples deeper than this many model generations (default 1; -1 = never)",
    )  # fmt: skip
    p.add_argument("--min-real", type=_int_type(0), default=None, help="warn below this many real samples")
    p.add_argument(
        "--plot", type=Path, default=None, help="also draw the audit: PNG, per generation and class"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    _common(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "train-generator", help="train a diffusers DDPM on corpus images (checkpoints, resumable)"
    )
    p.add_argument("--data", type=Path, nargs="+", required=True, help="corpus folder(s) to train on")
    p.add_argument("--out", type=Path, required=True, help="model folder (diffusers layout + checkpoint/)")
    p.add_argument("--steps", type=pos, default=20000, help="total optimizer steps (default 20000)")
    p.add_argument("--size", type=int, choices=(32, 64), default=32, help="image side (default 32)")
    p.add_argument("--batch-size", type=_int_type(1), default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=positive, default=6e-4, help="peak learning rate (default 6e-4)")
    p.add_argument("--seed", type=nonneg, default=0, help="seed of init and of every step's draws")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    p.add_argument(
        "--time-limit", type=positive, default=None, help="stop after this many minutes (resumable)"
    )
    p.add_argument(
        "--class-conditional",
        action="store_true",
        help="condition on each image's one class (from its mask), for classifier-free guidance",
    )
    p.add_argument(
        "--snr-gamma", type=_float_type(0.0), default=0.0, help="min-SNR loss weighting gamma (0 = off)"
    )
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_train_generator)

    p = sub.add_parser("sample", help="render samples, an interpolation, or latent views of a real image")
    _render_args(p)
    p.add_argument("--n", type=pos, required=True, help="number of samples")
    p.add_argument("--seed", type=nonneg, required=True, help="job seed")
    p.add_argument("--out", type=Path, required=True, help="FILE.png for a contact sheet, or a folder")
    p.add_argument(
        "--op", choices=("gaussian", "interp", "views"), default="gaussian", help="default gaussian"
    )
    p.add_argument("--truncation", type=float, default=None, help="redraw latent values beyond +-this")
    p.add_argument("--real", type=Path, default=None, help="views: corpus with the image to invert")
    p.add_argument("--index", type=nonneg, default=0, help="views: which sample of --real (default 0)")
    p.add_argument("--radius", type=float, default=0.15, help="views: angular radius, radians (default 0.15)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _class_args(p)
    _common(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "eval-generator", help="precision, recall, Frechet distance and class shares vs real data"
    )
    _render_args(p, batch_default=64)
    p.add_argument("--real", type=Path, required=True, help="real corpus to compare with")
    p.add_argument("--n", type=pos, default=1000, help="generated samples, and real ones used (default 1000)")
    p.add_argument("--seed", type=nonneg, default=0, help="job seed of the generated samples")
    p.add_argument("--k", type=_int_type(1), default=3, help="neighbours for precision/recall (default 3)")
    _class_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _common(p)
    p.set_defaults(func=cmd_eval_generator)

    p = sub.add_parser("train-labeler", help="fit a few-shot pixel-head ensemble on generator features")
    p.add_argument("--generator", default="toyworld", help="toyworld, a diffusers folder, or a hub id")
    _pickle_arg(p)
    p.add_argument("--data", type=Path, required=True, help="annotated real corpus to pick the shots from")
    p.add_argument("--shots", type=pos, default=8, help="annotated images K, 1-100 (default 8)")
    p.add_argument("--seed", type=nonneg, default=0, help="picks the shots and seeds the fit")
    p.add_argument("--out", type=Path, required=True, help="labeler folder to write")
    p.add_argument("--members", type=pos, default=10, help="ensemble size (default 10)")
    p.add_argument("--blocks", default="mid,up0,up1", help="UNet blocks to read (default mid,up0,up1)")
    p.add_argument("--timesteps", default="50", help="timesteps to read at, comma-separated (default 50)")
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_train_labeler)

    p = sub.add_parser("eval-labeler", help="mIoU of a labeler on annotated real images it did not train on")
    p.add_argument("--generator", default="toyworld", help="the generator the labeler was trained on")
    _pickle_arg(p)
    p.add_argument("--labeler", type=Path, required=True, help="labeler folder")
    p.add_argument("--data", type=Path, required=True, help="annotated real corpus")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_eval_labeler)

    p = sub.add_parser(
        "train-classifier", help="fit a noise-aware multi-label classifier (for guidance) on a real corpus"
    )
    p.add_argument("--generator", default="toyworld", help="generator whose noise schedule it learns")
    _pickle_arg(p)
    p.add_argument("--data", type=Path, required=True, help="annotated real corpus")
    p.add_argument("--out", type=Path, required=True, help="classifier folder to write (new or empty)")
    p.add_argument("--steps", type=pos, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--seed", type=nonneg, default=0, help="picks the held-out images and seeds the fit")
    p.add_argument(
        "--dense-loss",
        type=float,
        default=1.0,
        help="weight of a pixel loss on the corpus's masks beside the image-level labels (default 1; it "
        "raised guided target presence from 0.77 to 0.95, docs/results.md)",
    )
    p.add_argument(
        "--no-dense-loss",
        dest="dense_loss",
        action="store_const",
        const=0.0,
        help="image-level labels only (no pixel loss on the masks)",
    )
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser(
        "generate", help="render, label, filter and shard a synthetic corpus (a resumable Prefect flow)"
    )
    p.add_argument("--config", type=Path, default=None, help="TOML job file (see examples/job.toml)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override one job-file field (repeatable)"
    )
    _job_args(p)
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and the resolved config; write nothing"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a different corpus (or unfinished job) at --out"
    )
    p.add_argument("--verbose", action="store_true", help="Prefect's logs on the terminal, not in OUT/logs/")
    _common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("serve", help="run the generate job on a cron schedule through a Prefect server")
    p.add_argument("--config", type=Path, default=None, help="TOML job file (see examples/job.toml)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override one job-file field (repeatable)"
    )
    p.add_argument("--cron", required=True, help="cron schedule, e.g. '0 3 * * *' (03:00 every day)")
    p.add_argument("--name", default="default", help="deployment name (default 'default')")
    _job_args(p)
    _common(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("server", help="start a local Prefect server (SQLite, loopback) for dpp serve")
    p.add_argument("--port", type=_int_type(1, 65535), default=4200, help="port (default 4200)")
    _common(p)
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("refilter", help="re-apply fidelity rules to a generated corpus's stored scores")
    p.add_argument("corpus", type=Path, help="a corpus written by dpp generate")
    p.add_argument("--out", type=Path, required=True, help="output corpus folder")
    p.add_argument("--overwrite", action="store_true", help="replace a different corpus already at --out")
    _filter_args(p, defaults=False)
    for name in ("min-confidence", "max-uncertainty", "max-realism-distance"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"turn the {name} rule off")
    _common(p)
    p.set_defaults(func=cmd_refilter)

    p = sub.add_parser(
        "eval-seg", help="train the fixed small segmenter on corpora, report IoU on a test corpus"
    )
    p.add_argument("--train", type=Path, nargs="+", required=True, help="training corpus folder(s)")
    p.add_argument("--test", type=Path, required=True, help="annotated test corpus")
    p.add_argument(
        "--steps", type=pos, default=2000, help="optimizer steps, the same for every run (default 2000)"
    )
    p.add_argument("--seed", type=nonneg, default=0, help="seed of init and batches")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _common(p)
    p.set_defaults(func=cmd_eval_seg)

    p = sub.add_parser("preview", help="contact sheet of images beside their masks")
    p.add_argument("corpus", type=Path, help="corpus folder")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--n", type=pos, default=64, help="samples to show (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _common(p)
    p.set_defaults(func=cmd_preview)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dataplusplus")
    except Exception:  # noqa: BLE001 - running from a source tree without an install
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command = next((a for a in argv if not a.startswith("-")), "")
    where = f"{PROG} {command}".strip()
    try:
        args = build_parser().parse_args(argv)
        where = f"{PROG} {args.command}"
        return args.func(args)
    except DppError as e:
        if debug:
            traceback.print_exc()
        print(f"{where}: error: {e}", file=sys.stderr)
        for d in e.details:
            print(f"  {d}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permission denied, ...: a runtime failure, said in one line
        if debug:
            traceback.print_exc()
        name = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{where}: error: {e.strerror or e}{':' + name if name else ''}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - last resort: one line, traceback only with --debug
        if debug:
            traceback.print_exc()
        print(
            f"{where}: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def entry() -> None:
    sys.exit(main())
