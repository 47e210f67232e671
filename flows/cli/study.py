"""`dpp study`: experiments on the whole pipeline at toy scale (collapse: the self-consuming loop)."""

from __future__ import annotations

from pathlib import Path

from flows.cli.args import NONNEG, POS, _check_writable, _common, _device_arg, _pickle_arg, _say


def cmd_study(args) -> int:
    from manifests.errors import UsageError
    from pipeline.diffusion.load import load_generator
    from pipeline.studies.collapse import config_from_flags, format_table, parse_seeds, run_study

    if args.seeds is not None and args.seed is not None:
        raise UsageError("--seed and --seeds are not allowed together; give the seeds with --seeds")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else (args.seed or 0,)
    cfg = config_from_flags(args, seeds)
    _check_writable("--out", args.out)
    load_generator(args.generator, args.device, allow_pickle=args.allow_pickle)  # refused before any write
    result = run_study(
        cfg, args.out, args.generator, args.device, lambda t: _say(args, t), allow_pickle=args.allow_pickle
    )
    print(format_table(result))
    _say(args, f"wrote {args.out / 'collapse.md'} and {args.out / 'collapse.json'}; corpora under {args.out}")
    return 0


# --- parser ---


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="experiments: collapse (the self-consuming loop at toy scale)")
    p.add_argument("study", choices=("collapse",), help="collapse: generations trained on their own output")
    p.add_argument("--out", type=Path, required=True, help="folder for every corpus, model and the table")
    p.add_argument("--generator", default="toyworld", help="generation 1 (default: the shipped toyworld)")
    _pickle_arg(p)
    p.add_argument("--generations", type=POS, default=3, help="model generations per policy (default 3)")
    p.add_argument(
        "--policies", default="replace,accumulate", help="replace, accumulate, fresh, control (comma list)"
    )
    p.add_argument("--n-real", type=POS, default=1000, help="real training images R (default 1000)")
    p.add_argument("--n-synthetic", type=POS, default=1000, help="samples per generation N (default 1000)")
    p.add_argument("--n-eval", type=POS, default=500, help="held-out real images (default 500)")
    p.add_argument("--finetune-steps", type=POS, default=300, help="steps between generations (default 300)")
    p.add_argument("--steps", type=POS, default=20, help="DPM-Solver++ steps per sample (default 20)")
    p.add_argument("--shots", type=POS, default=8, help="labeler support images (default 8)")
    p.add_argument("--seed", type=NONNEG, default=None, help="one seed (default 0); --seeds for several")
    p.add_argument("--seeds", default=None, help="seeds, comma list (0,1): each a full repeat of every arm")
    p.add_argument(
        "--seg-steps", type=POS, default=2000, help="steps of the segmenter on each generation (default 2000)"
    )
    _device_arg(p)
    _common(p)
    p.set_defaults(func=cmd_study)


# The sub-parsers this module owns, by command name; build_parser adds them in its COMMANDS order.
PARSERS = {
    "study": _add_study,
}
