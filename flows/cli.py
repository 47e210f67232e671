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
from pathlib import Path

from manifests.errors import DppError, UsageError

PROG = "dpp"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _int_type(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            what = "positive" if minimum == 1 else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be {what}")
        return value

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _say(args, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


# --- commands ---------------------------------------------------------------------------------


def cmd_toyworld(args) -> int:
    from pipeline.realdata import write_toyworld

    res = write_toyworld(args.out, args.n, args.seed, args.size, args.shard_size, args.overwrite, args.quiet)
    _report_written(args, res)
    return 0


def cmd_ingest(args) -> int:
    from pipeline.realdata import ingest

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


def cmd_verify(args) -> int:
    from manifests.corpus import CORPUS_FILE
    from manifests.verify import verify_corpus

    for path in args.corpus:  # a path that is no corpus at all is a usage error, said before any work
        if not (path / CORPUS_FILE).is_file():
            what = "does not exist" if not path.exists() else f"is not a corpus (no {CORPUS_FILE})"
            raise UsageError(f"{path} {what}")
    bad = 0
    for path in args.corpus:
        rep = verify_corpus(path)
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


def cmd_audit(args) -> int:
    from manifests.audit import audit, format_audit

    result = audit(args.corpus)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_audit(result))
    return 0


def cmd_preview(args) -> int:
    from pipeline.preview import write_preview

    shown = write_preview(args.corpus, args.out, args.n)
    _say(args, f"wrote {args.out}: {shown} samples with their masks")
    return 0


def cmd_demo(args) -> int:
    from manifests.audit import audit, format_audit
    from manifests.verify import verify_corpus
    from pipeline.preview import write_preview
    from pipeline.realdata import write_toyworld

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the demo needs a folder")
    out.mkdir(parents=True, exist_ok=True)
    real = out / "real"
    _say(args, f"[1/4] toy world: rendering {args.n} labeled scenes (seed {args.seed}) into {real}")
    res = write_toyworld(real, args.n, args.seed, 32, args.shard_size, overwrite=True, quiet=args.quiet)
    _report_written(args, res)
    _say(args, "[2/4] verify: re-hashing shards and decoding every sample")
    rep = verify_corpus(real)
    if not rep.ok:
        raise DppError(f"verify found {len(rep.problems)} problem(s) in {real}: {rep.problems[0]}")
    _say(args, f"      OK: {rep.shards} shard(s), {rep.samples} samples")
    _say(args, "[3/4] audit: real vs synthetic accounting")
    result = audit([real])
    (out / "audit.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    _say(args, format_audit(result))
    _say(args, "[4/4] preview: contact sheet of images and masks")
    shown = write_preview(real, out / "preview.png", 64)
    _say(args, f"      wrote {out / 'preview.png'} ({shown} samples)")
    _say(args, f"done: corpus in {real}, audit in {out / 'audit.json'}, picture in {out / 'preview.png'}")
    _say(args, "not yet in the demo: generator, labelers, guidance, filters (later issues)")
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="dataplusplus: labeled dataset synthesis with provenance")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    pos = _int_type(1)
    nonneg = _int_type(0)

    p = sub.add_parser("demo", help="the whole job on the embedded default, offline, on the CPU")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the demo's outputs")
    p.add_argument("--n", type=pos, default=500, help="toy-world samples (default 500)")
    p.add_argument("--seed", type=nonneg, default=0, help="job seed (default 0)")
    p.add_argument("--shard-size", type=_int_type(1), default=250)
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("toyworld", help="write a real corpus of procedural toy-world scenes")
    p.add_argument("--n", type=pos, required=True, help="number of samples")
    p.add_argument(
        "--seed", type=nonneg, required=True, help="job seed; the same seed gives identical shards"
    )
    p.add_argument("--out", type=Path, required=True, help="output corpus folder")
    p.add_argument("--size", type=int, choices=(32, 64), default=32, help="image side in pixels")
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

    p = sub.add_parser("verify", help="check shards, samples and manifests against corpus.json")
    p.add_argument("corpus", type=Path, nargs="+", help="corpus folder(s)")
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("audit", help="real vs synthetic accounting of one or more corpora")
    p.add_argument("corpus", type=Path, nargs="+", help="corpus folder(s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _common(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("preview", help="contact sheet of images beside their masks")
    p.add_argument("corpus", type=Path, help="corpus folder")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--n", type=pos, default=64, help="samples to show (default 64)")
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
