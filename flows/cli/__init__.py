"""The `dpp` command line: argument parsing, one-line errors and exit codes.

Exit codes: 0 success, 1 runtime failure, 2 usage error. Errors print one line naming the bad
value (plus one line per bad file where there are several); `--debug` adds the traceback.

Each command module (corpus, models, jobs, study, demo, reproduce, view) owns its commands: their handlers
and, in PARSERS, one function per command that adds its sub-parser; args.py holds the flag groups they share.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from flows.cli import corpus, demo, jobs, models, reproduce, study, view
from flows.cli.args import OneLineParser
from manifests.errors import DppError

PROG = "dpp"

# The sub-commands in the order `dpp --help` lists them.
COMMANDS = (
    "demo",
    "toyworld",
    "ingest",
    "mix",
    "export",
    "study",
    "verify",
    "vacuum",
    "repair",
    "audit",
    "train-generator",
    "sample",
    "eval-generator",
    "train-labeler",
    "eval-labeler",
    "train-classifier",
    "generate",
    "serve",
    "server",
    "refilter",
    "relabel",
    "reproduce",
    "eval-seg",
    "preview",
    "view",
)
PARSERS = {
    **demo.PARSERS,
    **corpus.PARSERS,
    **study.PARSERS,
    **models.PARSERS,
    **jobs.PARSERS,
    **reproduce.PARSERS,
    **view.PARSERS,
}
assert sorted(PARSERS) == sorted(COMMANDS), "every command module's PARSERS, each command once"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="dataplusplus: labeled dataset synthesis with provenance")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMANDS:
        PARSERS[name](sub)
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
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
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
