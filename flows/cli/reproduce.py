"""`dpp reproduce`: render one generated sample again and compare it with the stored one."""

from __future__ import annotations

from pathlib import Path

from flows.cli.args import _common, _device_arg, _dtype_arg, _pickle_arg, _say
from manifests.errors import UsageError


def cmd_reproduce(args) -> int:
    from pipeline.generate.reproduce import ReproduceRequest, format_reproduction, reproduce, write_sheet

    if args.out is not None:  # refused before any rendering
        if args.out.suffix.lower() != ".png":
            raise UsageError(f"--out {args.out} must end in .png")
        if not args.out.parent.is_dir():
            raise UsageError(f"--out {args.out}: folder {args.out.parent} does not exist")
        if args.out.exists() and not args.overwrite:
            raise UsageError(f"--out {args.out} already exists; pass --overwrite to replace it")
    rep = reproduce(
        ReproduceRequest(
            corpus=args.corpus,
            key=args.key,
            device=args.device,
            dtype=args.dtype,
            allow_pickle=args.allow_pickle,
            allow_device_change=args.allow_device_change,
            generator=args.generator,
            labeler=args.labeler,
            classifier=args.classifier,
            real=args.real,
        )
    )
    print(format_reproduction(rep))
    if args.out is not None:
        write_sheet(rep, args.out, args.overwrite)
        shown = "stored, then re-rendered" if rep.stored_image is not None else "re-rendered"
        _say(args, f"wrote {args.out}: image and mask ({shown})")
    return 0 if rep.identical else 1


# --- parser ---


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="render one generated sample again from its seed, models and settings; compare the bytes",
        description="Exit 0 when the image, mask, KEY.json and manifest row come out identical, 1 when "
        "bytes differ (each differing part is named), 2 when the sample or a model it needs cannot be "
        "found. The model flags say where a recorded model is now; its id must still match.",
    )
    p.add_argument("corpus", type=Path, help="a corpus written by dpp generate")
    p.add_argument("key", help="the sample's key, kept or rejected (e.g. syn-000000-000003)")
    p.add_argument(
        "--out", type=Path, default=None, help="also write a PNG: stored and re-rendered, with masks"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _device_arg(p)
    _dtype_arg(p, "the dtype the sample was rendered in (default float32)")
    p.add_argument(
        "--allow-device-change",
        action="store_true",
        help="render on another device or dtype than the corpus records, and compare anyway",
    )
    p.add_argument("--generator", default=None, help="where the recorded generator is, if not where recorded")
    _pickle_arg(p)
    p.add_argument("--labeler", type=Path, default=None, help="the recorded labeler's folder, if moved")
    p.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="the recorded classifier's folder (corpus.json keeps its id)",
    )
    p.add_argument(
        "--real", type=Path, default=None, help="the recorded realism reference corpus (else not recomputed)"
    )
    _common(p)
    p.set_defaults(func=cmd_reproduce)


# The sub-parsers this module owns, by command name; build_parser adds them in its COMMANDS order.
PARSERS = {
    "reproduce": _add_reproduce,
}
