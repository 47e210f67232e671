"""`dpp demo`: the whole job on the embedded default, offline, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from flows.cli.args import (
    NONNEG,
    POS,
    _common,
    _device_arg,
    _float_type,
    _int_type,
    _report_filter,
    _report_written,
    _say,
)
from manifests.errors import DppError, UsageError


def cmd_demo(args) -> int:
    """The main job on the embedded default: real toy-world data, a few-shot labeler on the shipped
    generator, the shipped noise-aware classifier, then the generate flow (guidance + filters),
    verify, audit, Croissant descriptions and pictures. Reruns reuse what is done."""
    from flows.generate import run_flow  # first, before any work: it sets Prefect's quiet environment

    out = _demo_folder(Path(args.out))
    real, lab_dir, syn = out / "real", out / "labeler", out / "synthetic"
    _real_corpus(args, real)
    gen = _labeler(args, real, lab_dir)
    _classifier(args, gen)
    settings = _job(args, out, real, lab_dir, syn)
    _generate(args, run_flow, settings, syn, out / "job.toml")
    _verify(args, real, syn)
    _audit(args, out, real, syn)
    _describe(args, out, real, syn)
    _say(args, f"done: see {out}/ (job.toml, audit.json, preview-real.png, preview-synthetic.png)")
    _say(args, f"      rerun the generation alone: dpp generate --config {out / 'job.toml'}")
    return 0


def _demo_folder(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the demo needs a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _real_corpus(args, real: Path) -> None:
    """[1/8] the real corpus: toy-world scenes (rewritten only when the flags changed)."""
    from pipeline.realdata.ingest import write_toyworld

    _say(
        args,
        f"[1/8] toy world: rendering {args.n} labeled {args.style} scenes (seed {args.seed}) into {real}",
    )
    _report_written(
        args, write_toyworld(real, args.n, args.seed, 32, args.shard_size, True, args.quiet, style=args.style)
    )


def _labeler(args, real: Path, lab_dir: Path):
    """[2/8] a few-shot labeler on the shipped generator: the demo's earlier one when it was trained for
    this generator on --shots images, else trained afresh. Returns the generator."""
    import shutil

    from pipeline.diffusion.load import load_generator
    from pipeline.labeling.fewshot import load_labeler, train_labeler

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
    return gen


def _classifier(args, gen) -> None:
    """[3/8] the shipped noise-aware classifier of the toy world, and its held-out accuracy."""
    from pipeline.guidance.classifier import SHIPPED as SHIPPED_CLASSIFIERS
    from pipeline.guidance.classifier import load_classifier

    clf = load_classifier("toyworld", gen)
    acc = {r["t"]: r["mean"] for r in clf.info["heldout_accuracy"]}
    _say(
        args,
        f"[3/8] classifier: the shipped noise-aware classifier {clf.id} "
        f"(pipeline/models/{SHIPPED_CLASSIFIERS['toyworld'].name}); "
        f"held-out accuracy {acc[0]:.3f} clean, {acc[600]:.3f} at t=600",
    )


def _job(args, out: Path, real: Path, lab_dir: Path, syn: Path) -> dict:
    """The generate job's settings (guided, balanced classes, filters on), also written to out/job.toml."""
    from pipeline.generate.settings import resolve, to_toml

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
    return settings


def _generate(args, run_flow, settings: dict, syn: Path, job_file: Path) -> None:
    """[4/8] the generate flow into `syn`, and what its filters kept."""
    from tqdm import tqdm

    _say(
        args,
        f"[4/8] generate (Prefect flow): {args.samples} kept samples, balanced classes, guidance scale "
        f"{args.guidance_scale}, {args.steps} DPM-Solver++ steps, filters on; job file {job_file}",
    )
    with tqdm(total=args.samples, desc="generating", unit="sample", disable=args.quiet, leave=False) as bar:
        res = run_flow(settings, overwrite=True, progress=bar.update)
    rec = res["record"]
    if res["already_done"]:
        _say(args, f"      {syn} already holds this corpus ({rec['corpus_id']}); nothing to do")
    else:
        _say(args, f"      wrote {syn}: corpus {rec['corpus_id']}, {len(rec['shards'])} shard(s)")
    _report_filter(args, syn, rec)


def _verify(args, real: Path, syn: Path) -> None:
    """[5/8] both corpora verified; a problem stops the demo."""
    from manifests.verify import verify_corpus

    _say(args, "[5/8] verify: re-hashing shards and decoding every sample")
    for corpus in (real, syn):
        rep = verify_corpus(corpus)
        if not rep.ok:
            raise DppError(f"verify found {len(rep.problems)} problem(s) in {corpus}: {rep.problems[0]}")
        _say(args, f"      OK {corpus}: {rep.shards} shard(s), {rep.samples} samples")


def _audit(args, out: Path, real: Path, syn: Path) -> None:
    """[6/8] the audit of both corpora, printed and written to out/audit.json."""
    from manifests.audit import audit, format_audit

    _say(args, "[6/8] audit: real vs synthetic accounting of both corpora")
    result = audit([real, syn])
    (out / "audit.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    _say(args, format_audit(result))


def _describe(args, out: Path, real: Path, syn: Path) -> None:
    """[7/8] a Croissant description of each corpus; [8/8] contact sheets of both."""
    from manifests.croissant import export_croissant
    from manifests.preview import write_preview

    _say(args, "[7/8] croissant: a Croissant 1.1 description of each corpus (checksums, RAI, PROV)")
    for corpus in (real, syn):
        _say(args, f"      wrote {export_croissant(corpus)}")

    _say(args, "[8/8] preview: contact sheets of images beside their masks")
    for corpus, name in ((real, "preview-real.png"), (syn, "preview-synthetic.png")):
        shown = write_preview(corpus, out / name, 64, overwrite=True)
        _say(args, f"      wrote {out / name} ({shown} samples)")


# --- parser ---


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole job on the embedded default, offline, on the CPU")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the demo's outputs")
    p.add_argument("--n", type=POS, default=500, help="toy-world samples (default 500)")
    p.add_argument("--seed", type=NONNEG, default=0, help="job seed (default 0)")
    p.add_argument("--shard-size", type=_int_type(1), default=250)
    p.add_argument("--samples", type=POS, default=256, help="synthetic samples to keep (default 256)")
    p.add_argument("--shots", type=POS, default=8, help="annotated real images for the labeler (default 8)")
    p.add_argument(
        "--guidance-scale", type=_float_type(0.0), default=10.0, help="classifier guidance scale (default 10)"
    )
    p.add_argument("--steps", type=POS, default=20, help="DPM-Solver++ steps per sample (default 20)")
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


# The sub-parsers this module owns, by command name; build_parser adds them in its COMMANDS order.
PARSERS = {
    "demo": _add_demo,
}
