"""`dpp` commands on models: train-generator, sample, eval-generator, train-labeler, eval-labeler,
train-classifier, eval-seg."""

from __future__ import annotations

import json
from pathlib import Path

from flows.cli.args import (
    NONNEG,
    POS,
    POSITIVE,
    _check_writable,
    _class_args,
    _common,
    _device_arg,
    _float_type,
    _int_type,
    _pickle_arg,
    _render_args,
    _say,
    _step_bar,
    _threads_arg,
    _timesteps,
    _training_bar,
)
from manifests.errors import UsageError


def cmd_train_generator(args) -> int:
    import torch

    from manifests.format.record import load_corpus
    from pipeline.diffusion.common import resolve_device
    from pipeline.diffusion.train import CHECKPOINT_DIR, train, training_provenance

    _check_model_folder(args.out, args.resume)
    records = [load_corpus(p) for p in args.data]
    device = resolve_device(args.device)
    cfg, classes = _train_config(args, records)
    images, labels = _training_images(args, classes)
    provenance = training_provenance(args.data, records, labels, classes)
    if labels is not None:
        counts = provenance["class_labels"]["images_per_label"]
        _say(
            args,
            "class-conditional: images per class "
            + ", ".join(f"{c} {n}" for c, n in zip([*classes[1:], "(none)"], counts, strict=True)),
        )
    bar, progress = _training_bar(args, cfg.steps)
    torch.manual_seed(args.seed)
    limit = args.time_limit * 60 if args.time_limit else None
    step = train(
        images,
        args.out,
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
    _say(
        args, f"{state}: step {step}/{cfg.steps}; EMA weights in {args.out}, checkpoint in {CHECKPOINT_DIR}/"
    )
    return 0


def _check_model_folder(out: Path, resume: bool) -> None:
    """--out must be a new or empty folder, or (with --resume) one holding a checkpoint."""
    from pipeline.diffusion.train import CHECKPOINT_DIR

    has_ckpt = (out / CHECKPOINT_DIR / "state.json").is_file()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the model")
    _check_writable("--out", out)
    if out.exists() and any(out.iterdir()) and not (has_ckpt and resume):
        hint = "pass --resume to continue it" if has_ckpt else "choose a new or empty folder"
        raise UsageError(f"--out {out} is not empty; {hint}")
    if resume and not has_ckpt:
        raise UsageError(f"--resume: {out} holds no checkpoint ({CHECKPOINT_DIR}/state.json) to resume from")


def _train_config(args, records: list[dict]):
    """The TrainConfig of the flags and the class list of the --data corpora; with --resume, checked
    against the checkpoint's."""
    from pipeline.diffusion.train import CHECKPOINT_DIR, TrainConfig, check_resume

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
        decay_from=args.decay_from,
    )
    if args.decay_from >= args.steps:
        raise UsageError(
            f"--decay-from {args.decay_from}: must be below --steps {args.steps} (0 = no cool-down)"
        )
    if args.resume:
        try:
            check_resume(args.out / CHECKPOINT_DIR, cfg)
        except ValueError as e:
            raise UsageError(f"--resume: {e}; resume with the flags that started it") from None
    return cfg, classes


def _training_images(args, classes: list[str]):
    """The --data images (N, H, W, 3) and, with --class-conditional, each image's class label."""
    from manifests.storage.reader import load_images, single_class_labels

    _say(args, f"loading images from {len(args.data)} corpus(es)")
    images = load_images(args.data)
    labels = single_class_labels(args.data, classes) if args.class_conditional else None
    if len(images) == 0:
        raise UsageError("--data corpora hold no samples to train on")
    if images.shape[1:3] != (args.size, args.size):
        raise UsageError(
            f"--size {args.size} does not match the corpus images ({images.shape[2]}x{images.shape[1]})"
        )
    return images, labels


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
    from pipeline.diffusion.load import load_generator
    from pipeline.evaluation.generator_quality import evaluate_generator, format_quality

    gen = load_generator(args.generator, args.device, args.dtype, args.allow_pickle)
    q = evaluate_generator(
        gen,
        args.real,
        n=args.n,
        seed=args.seed,
        scheduler=args.scheduler,
        steps=args.steps,
        batch_size=args.batch_size,
        classes=args.classes,
        cfg_scale=args.class_cfg_scale,
        k=args.k,
        quiet=args.quiet,
    )
    if args.json:
        print(json.dumps({"generator": gen.id, **q.as_json()}, indent=2, sort_keys=True))
        return 0
    print(format_quality(q, gen.id, args.real))
    return 0


def cmd_train_labeler(args) -> int:
    from pipeline.diffusion.features import FeatureSpec
    from pipeline.diffusion.load import load_generator
    from pipeline.labeling.fewshot import train_labeler

    _check_writable("--out", args.out)
    gen = load_generator(args.generator, args.device, allow_pickle=args.allow_pickle)
    spec = FeatureSpec(tuple(args.blocks.split(",")), _timesteps(args.timesteps, gen), 32)
    lab = train_labeler(
        gen, args.data, args.shots, args.out, args.seed, spec, args.members, args.views, args.ignore_above
    )
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
    res = eval_labeler(gen, lab, args.data, class_given=args.class_given)
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return 0
    given = ", each image's class given" if args.class_given else ""
    print(
        f"labeler {res['labeler']} on {res['images']} images of {args.data} (support images excluded{given})"
    )
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


def cmd_eval_seg(args) -> int:
    from pipeline.evaluation.segmentation import eval_seg

    if args.self_train is None and (args.tags or args.pseudo_threshold is not None):
        flag = "--tags" if args.tags else "--pseudo-threshold"
        raise UsageError(
            f"{flag} is a setting of the self-training baseline; pass --self-train UNLABELED too"
        )

    with _step_bar(args, "training segmenter") as progress:
        res = eval_seg(
            args.train, args.test, args.steps, args.seed, progress=progress,
            self_train=args.self_train, threshold=args.pseudo_threshold or 0.9, tags=args.tags,
        )  # fmt: skip
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return 0
    print(
        f"trained on {res['train_images']} images ({', '.join(res['train'])}), {res['steps']} steps, "
        f"{res['torch_threads']} torch thread{'s' if res['torch_threads'] > 1 else ''}; "
        f"tested on {res['test_images']} images of {res['test']}"
    )
    if "self_train" in res:
        print(
            f"self-training: teacher mIoU {res['teacher_miou']:.3f}; {res['unlabeled_images']} "
            f"unlabeled images of {res['self_train']} pseudo-labeled at p >= {res['pseudo_threshold']}"
            f"{' within their tags' if res['tags'] else ''} "
            f"({res['pseudo_labeled_share']:.0%} of pixels kept)"
        )
    for c, v in res["iou"].items():
        print(f"{c:<16} IoU {'-' if v is None else f'{v:.3f}'}")
    print(f"{'mean':<16} mIoU {res['miou']:.3f}")
    return 0


# --- parsers ---


def _add_train_generator(sub) -> None:
    p = sub.add_parser(
        "train-generator", help="train a diffusers DDPM on corpus images (checkpoints, resumable)"
    )
    p.add_argument("--data", type=Path, nargs="+", required=True, help="corpus folder(s) to train on")
    p.add_argument("--out", type=Path, required=True, help="model folder (diffusers layout + checkpoint/)")
    p.add_argument("--steps", type=POS, default=20000, help="total optimizer steps (default 20000)")
    p.add_argument("--size", type=int, choices=(32, 64), default=32, help="image side (default 32)")
    p.add_argument("--batch-size", type=_int_type(1), default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=POSITIVE, default=6e-4, help="peak learning rate (default 6e-4)")
    p.add_argument("--seed", type=NONNEG, default=0, help="seed of init and of every step's draws")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    p.add_argument(
        "--time-limit", type=POSITIVE, default=None, help="stop after this many minutes (resumable)"
    )
    p.add_argument(
        "--class-conditional",
        action="store_true",
        help="condition on each image's one class (from its mask), for classifier-free guidance",
    )
    p.add_argument(
        "--snr-gamma", type=_float_type(0.0), default=0.0, help="min-SNR loss weighting gamma (0 = off)"
    )
    p.add_argument(
        "--decay-from",
        type=NONNEG,
        default=0,
        help="step where the learning rate starts falling linearly to 0 at --steps (default 0: constant)",
    )
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_train_generator)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="render samples, an interpolation, or latent views of a real image")
    _render_args(p)
    p.add_argument("--n", type=POS, required=True, help="number of samples")
    p.add_argument("--seed", type=NONNEG, required=True, help="job seed")
    p.add_argument("--out", type=Path, required=True, help="FILE.png for a contact sheet, or a folder")
    p.add_argument(
        "--op", choices=("gaussian", "interp", "views"), default="gaussian", help="default gaussian"
    )
    p.add_argument("--truncation", type=float, default=None, help="redraw latent values beyond +-this")
    p.add_argument("--real", type=Path, default=None, help="views: corpus with the image to invert")
    p.add_argument("--index", type=NONNEG, default=None, help="views: which sample of --real (default 0)")
    p.add_argument("--radius", type=float, default=None, help="views: angular radius, radians (default 0.15)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _class_args(p)
    _common(p)
    p.set_defaults(func=cmd_sample)


def _add_eval_generator(sub) -> None:
    p = sub.add_parser(
        "eval-generator", help="precision, recall, Frechet distance and class shares vs real data"
    )
    _render_args(p, batch_default=64)
    p.add_argument("--real", type=Path, required=True, help="real corpus to compare with")
    p.add_argument("--n", type=POS, default=1000, help="generated samples, and real ones used (default 1000)")
    p.add_argument("--seed", type=NONNEG, default=0, help="job seed of the generated samples")
    p.add_argument("--k", type=_int_type(1), default=3, help="neighbours for precision/recall (default 3)")
    _class_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _common(p)
    p.set_defaults(func=cmd_eval_generator)


def _add_train_labeler(sub) -> None:
    p = sub.add_parser("train-labeler", help="fit a few-shot pixel-head ensemble on generator features")
    p.add_argument("--generator", default="toyworld", help="toyworld, a diffusers folder, or a hub id")
    _pickle_arg(p)
    p.add_argument("--data", type=Path, required=True, help="annotated real corpus to pick the shots from")
    p.add_argument("--shots", type=POS, default=8, help="annotated images K, 1-100 (default 8)")
    p.add_argument("--seed", type=NONNEG, default=0, help="picks the shots and seeds the fit")
    p.add_argument("--out", type=Path, required=True, help="labeler folder to write")
    p.add_argument("--members", type=POS, default=10, help="ensemble size (default 10)")
    p.add_argument("--blocks", default="mid,up0,up1", help="UNet blocks to read (default mid,up0,up1)")
    p.add_argument("--timesteps", default="50", help="timesteps to read at, comma-separated (default 50)")
    p.add_argument(
        "--views",
        type=POS,
        default=1,
        help="label each image from this many re-noisings and average the head over them (default 1)",
    )
    p.add_argument(
        "--ignore-above",
        type=_float_type(0.0),
        metavar="JSD",
        help="write ignore (255) where the ensemble's disagreement (Jensen-Shannon, nats) is above this",
    )
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_train_labeler)


def _add_eval_labeler(sub) -> None:
    p = sub.add_parser("eval-labeler", help="mIoU of a labeler on annotated real images it did not train on")
    p.add_argument("--generator", default="toyworld", help="the generator the labeler was trained on")
    _pickle_arg(p)
    p.add_argument("--labeler", type=Path, required=True, help="labeler folder")
    p.add_argument("--data", type=Path, required=True, help="annotated real corpus")
    p.add_argument(
        "--class-given",
        action="store_true",
        help="write each image's foreground as its class, as generate does for a class-conditional generator",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _device_arg(p)
    _common(p, quiet=False)
    p.set_defaults(func=cmd_eval_labeler)


def _add_train_classifier(sub) -> None:
    p = sub.add_parser(
        "train-classifier", help="fit a noise-aware multi-label classifier (for guidance) on a real corpus"
    )
    p.add_argument("--generator", default="toyworld", help="generator whose noise schedule it learns")
    _pickle_arg(p)
    p.add_argument("--data", type=Path, required=True, help="annotated real corpus")
    p.add_argument("--out", type=Path, required=True, help="classifier folder to write (new or empty)")
    p.add_argument("--steps", type=POS, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--seed", type=NONNEG, default=0, help="picks the held-out images and seeds the fit")
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


def _add_eval_seg(sub) -> None:
    p = sub.add_parser(
        "eval-seg", help="train the fixed small segmenter on corpora, report IoU on a test corpus"
    )
    p.add_argument("--train", type=Path, nargs="+", required=True, help="training corpus folder(s)")
    p.add_argument("--test", type=Path, required=True, help="annotated test corpus")
    p.add_argument(
        "--steps", type=POS, default=2000, help="optimizer steps, the same for every run (default 2000)"
    )
    p.add_argument("--seed", type=NONNEG, default=0, help="seed of init and batches")
    p.add_argument(
        "--self-train",
        type=Path,
        metavar="UNLABELED",
        help="the self-training baseline: pseudo-label this corpus's images (masks unused) and retrain",
    )
    p.add_argument(
        "--pseudo-threshold",
        type=_float_type(0.0, 1.0, lo_open=True),
        help="--self-train: keep pseudo-labels whose class probability is at least this (default 0.9)",
    )
    p.add_argument(
        "--tags", action="store_true", help="--self-train: limit pseudo-labels to each image's class tags"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _threads_arg(p)
    _common(p)
    p.set_defaults(func=cmd_eval_seg)


# The sub-parsers this module owns, by command name; build_parser adds them in its COMMANDS order.
PARSERS = {
    "train-generator": _add_train_generator,
    "sample": _add_sample,
    "eval-generator": _add_eval_generator,
    "train-labeler": _add_train_labeler,
    "eval-labeler": _add_eval_labeler,
    "train-classifier": _add_train_classifier,
    "eval-seg": _add_eval_seg,
}
