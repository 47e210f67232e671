"""`dpp` commands on corpora: toyworld, ingest, mix, export, verify, vacuum, repair, audit, refilter and
preview."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.cli.args import (
    NONNEG,
    POS,
    _check_writable,
    _common,
    _device_arg,
    _filter_args,
    _float_type,
    _int_type,
    _pickle_arg,
    _report_written,
    _say,
)
from manifests.errors import DppError, UsageError


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


def cmd_mix(args) -> int:
    from manifests.mix import mix

    policy = args.policy or ("mix" if args.synthetic_fraction is not None else None)
    if args.real_fraction is not None and policy != "fresh":
        raise UsageError(
            f"--real-fraction is for --policy fresh, not {policy}"
            if policy
            else "--real-fraction needs --policy fresh"
        )
    if policy is None:
        raise UsageError(
            "give --synthetic-fraction F --n N (an exact mix) or --policy accumulate|replace|fresh"
        )
    res = mix(
        args.sources, args.out, args.seed, args.n, args.synthetic_fraction, policy, args.balance_classes,
        args.shard_size, args.overwrite, real_fraction=args.real_fraction,
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

    if args.overwrite and args.plot is None:
        raise UsageError("--overwrite applies to --plot (the file it would replace); no --plot was given")
    if args.no_diversity and args.min_diversity is not None:
        raise UsageError("--min-diversity needs the diversity figure; it cannot go with --no-diversity")
    if args.plot is not None:  # said before any work
        if args.plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {args.plot} is not allowed; give a .png file")
        if args.plot.exists() and not args.overwrite:
            raise UsageError(f"--plot {args.plot} already exists; pass --overwrite to replace it")
    diversity = None
    if not args.no_diversity:
        from pipeline.evaluation.diversity import corpus_diversity as diversity
    result = audit(
        args.corpus,
        Thresholds(
            max_synthetic_fraction=None if args.max_synthetic_fraction < 0 else args.max_synthetic_fraction,
            max_generation=None if args.max_generation < 0 else args.max_generation,
            min_real=args.min_real,
            min_diversity=args.min_diversity,
        ),
        diversity=diversity,
    )
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


def cmd_refilter(args) -> int:
    from manifests.format.record import load_corpus
    from pipeline.filtering.refilter import refilter

    record = load_corpus(args.corpus)
    base = (record.get("config") or {}).get("rules")
    if record.get("config", {}).get("kind") not in ("generate", "relabel") or base is None:
        raise UsageError(
            f"{args.corpus} was not written by dpp generate or dpp relabel; refilter needs stored "
            "filter scores"
        )
    rules = _filter_rules(args, base)
    res = refilter(args.corpus, args.out, rules, args.overwrite, args.quiet)
    _report_written(args, res.result)
    _say(args, res.summary)
    return 0


def cmd_relabel(args) -> int:
    from manifests.format.record import load_corpus
    from pipeline.diffusion.load import load_generator
    from pipeline.generate.relabel import check_source, relabel
    from pipeline.labeling.fewshot import load_labeler

    _check_writable("--out", args.out)
    record = load_corpus(args.corpus)
    src = check_source(record, args.corpus)
    spec = args.generator or (record.get("generator") or {}).get("source")
    if spec is None:
        raise UsageError(
            f"{args.corpus} does not record where generator {src['generator']} came from; pass --generator"
        )
    gen = load_generator(str(spec), args.device, allow_pickle=args.allow_pickle)
    if gen.id != src["generator"]:
        raise UsageError(f"--generator {spec} holds {gen.id}; {args.corpus} was drawn by {src['generator']}")
    labeler = load_labeler(args.labeler, gen)
    rules = _filter_rules(args, src["rules"])
    n = src["n"]
    bar = None if args.quiet else _bar(n, f"relabeling {args.out.name}")
    try:
        res = relabel(args.corpus, gen, labeler, args.out, rules, args.overwrite, bar and bar.update)
    finally:
        if bar is not None:
            bar.close()
    _report_written(args, res.result)
    _say(args, res.summary)
    return 0


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", leave=False)


# --- parsers ---


def _add_toyworld(sub) -> None:
    p = sub.add_parser("toyworld", help="write a real corpus of procedural toy-world scenes")
    p.add_argument("--n", type=POS, required=True, help="number of samples")
    p.add_argument(
        "--seed", type=NONNEG, required=True, help="job seed; the same seed gives identical shards"
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


def _add_ingest(sub) -> None:
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


def _open_unit(text: str) -> float:
    """A float in the open interval (0, 1); the error names the value and the range."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be in (0.0, 1.0)")
    return value


def _add_mix(sub) -> None:
    p = sub.add_parser("mix", help="a new corpus from existing ones: exact real/synthetic split or a policy")
    p.add_argument("sources", type=Path, nargs="+", help="source corpus folders")
    p.add_argument("--out", type=Path, required=True, help="output corpus folder")
    p.add_argument("--seed", type=NONNEG, required=True, help="seed of the draw")
    p.add_argument("--n", type=POS, default=None, help="samples in the mix (mix: required)")
    p.add_argument(
        "--synthetic-fraction",
        type=_float_type(0.0, 1.0),
        default=None,
        help="share of synthetic samples, in [0, 1]",
    )
    p.add_argument(
        "--policy", choices=("mix", "accumulate", "replace", "fresh"), default=None,
        help="mix (exact split; the default with --synthetic-fraction), accumulate (everything), "
        "replace (only the deepest synthetic generation), fresh (a fixed real share --real-fraction of --n; "
        "the rest from the deepest synthetic generation)",
    )  # fmt: skip
    p.add_argument(
        "--real-fraction", type=_open_unit, default=None,
        help="fresh: share of real samples, in (0, 1); real = round(F * N) to the nearest integer, ties to "
        "even (F = 0.25, N = 10: 2 real, 8 synthetic)",
    )  # fmt: skip
    p.add_argument(
        "--balance-classes", action="store_true", help="draw so that classes are as even as possible"
    )
    p.add_argument("--shard-size", type=_int_type(1), default=1000, help="samples per shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace a different corpus already at --out")
    _common(p)
    p.set_defaults(func=cmd_mix)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="describe a corpus in another format (croissant)")
    p.add_argument(
        "format", choices=("croissant",), help="croissant: Croissant 1.1 JSON-LD with RAI and PROV fields"
    )
    p.add_argument("corpus", type=Path, help="corpus folder")
    p.add_argument("--out", type=Path, default=None, help="file to write (default CORPUS/croissant.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _common(p)
    p.set_defaults(func=cmd_export)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check shards, samples and manifests against corpus.json")
    p.add_argument("corpus", type=Path, nargs="+", help="corpus folder(s)")
    _common(p)
    p.set_defaults(func=cmd_verify)


def _add_vacuum(sub) -> None:
    p = sub.add_parser("vacuum", help="remove temporary files and files no corpus or job owns")
    p.add_argument("corpus", type=Path, help="corpus folder (or the output of an unfinished job)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    _common(p)
    p.set_defaults(func=cmd_vacuum)


def _add_repair(sub) -> None:
    p = sub.add_parser("repair", help="set damaged shards aside (quarantine/) and list only whole ones")
    p.add_argument("corpus", type=Path, help="corpus folder")
    p.add_argument("--dry-run", action="store_true", help="name the damaged shards; change nothing")
    _common(p)
    p.set_defaults(func=cmd_repair)


def _add_audit(sub) -> None:
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
        "--min-diversity", type=_float_type(1.0), default=None,
        help="warn for each generation whose diversity is below this (Vendi score: 1 = all images alike, "
        "up to the number of images; off by default)",
    )  # fmt: skip
    p.add_argument(
        "--no-diversity", action="store_true",
        help="skip the diversity figure (each generation's first 1000 images by key, embedded by the "
        "evaluation network): no torch, faster",
    )  # fmt: skip
    p.add_argument(
        "--plot", type=Path, default=None, help="also draw the audit: PNG, per generation and class"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    _common(p)
    p.set_defaults(func=cmd_audit)


def _add_refilter(sub) -> None:
    p = sub.add_parser("refilter", help="re-apply fidelity rules to a generated corpus's stored scores")
    p.add_argument("corpus", type=Path, help="a corpus written by dpp generate")
    p.add_argument("--out", type=Path, required=True, help="output corpus folder")
    p.add_argument("--overwrite", action="store_true", help="replace a different corpus already at --out")
    _filter_args(p, defaults=False)
    for name in ("min-confidence", "max-uncertainty", "max-realism-distance"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"turn the {name} rule off")
    _common(p)
    p.set_defaults(func=cmd_refilter)


def _add_relabel(sub) -> None:
    p = sub.add_parser(
        "relabel", help="new masks for a generated corpus from another labeler, from its stored images"
    )
    p.add_argument("corpus", type=Path, help="a corpus written by dpp generate (or dpp relabel)")
    p.add_argument("--labeler", type=Path, required=True, help="the new labeler's folder (same generator)")
    p.add_argument("--out", type=Path, required=True, help="output corpus folder")
    p.add_argument(
        "--generator",
        help="where the corpus's generator is now (default: where corpus.json says it came from)",
    )
    _pickle_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace a different corpus already at --out")
    _filter_args(p, defaults=False)
    for name in ("min-confidence", "max-uncertainty", "max-realism-distance"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"turn the {name} rule off")
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_relabel)


def _add_preview(sub) -> None:
    p = sub.add_parser("preview", help="contact sheet of images beside their masks")
    p.add_argument("corpus", type=Path, help="corpus folder")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--n", type=POS, default=64, help="samples to show (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _common(p)
    p.set_defaults(func=cmd_preview)


# The sub-parsers this module owns, by command name; build_parser adds them in its COMMANDS order.
PARSERS = {
    "toyworld": _add_toyworld,
    "ingest": _add_ingest,
    "mix": _add_mix,
    "export": _add_export,
    "verify": _add_verify,
    "vacuum": _add_vacuum,
    "repair": _add_repair,
    "audit": _add_audit,
    "refilter": _add_refilter,
    "relabel": _add_relabel,
    "preview": _add_preview,
}
