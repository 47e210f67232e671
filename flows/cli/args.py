"""Shared pieces of the `dpp` command line: argument types, flag groups (the job-file fields among them),
progress bars and the lines every command prints."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from manifests.errors import DppError, UsageError
from pipeline.diffusion.samplers import SCHEDULERS


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


POS = _int_type(1)
NONNEG = _int_type(0)
POSITIVE = _float_type(0.0, lo_open=True)


def _common(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    """--debug on every command; --quiet only where there is progress output to silence."""
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when present"
    )
    _threads_arg(p)


def _threads_arg(p: argparse.ArgumentParser) -> None:
    """--threads: torch's CPU threads. Trainings' last digits depend on it (a float sum splits differently),
    so a run meant to reproduce published figures pins it (the results scripts use 1)."""
    p.add_argument(
        "--threads",
        type=POS,
        help="torch CPU threads (default: torch's own, one per core); the same count gives the same digits",
    )


def _dtype_arg(p: argparse.ArgumentParser, help: str = "float32 on the CPU; half precision on a GPU") -> None:
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help=help)


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
    p.add_argument(
        "--steps",
        type=_int_type(1),
        default=None,
        help="denoising steps (default: 20 for dpm, 50 for ddim and ddpm)",
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=None,
        help="sampler: dpm = DPM-Solver++ (2M), the default; ddim; ddpm",
    )
    p.add_argument("--batch-size", type=_int_type(1), default=batch_default, help="samples per UNet batch")
    _device_arg(p)
    _dtype_arg(p)


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


def _training_bar(args, steps: int):
    """A bar over `steps` optimizer steps and the progress(step, loss) callback that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=steps, desc="training", unit="step", disable=args.quiet)

    def progress(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    return bar, progress


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


def _report_filter(args, out: Path, rec: dict, only: list[int] | None = None) -> None:
    """`filter: kept X of Y candidates; rejected ...` over the corpus's shards (or shards `only`)."""
    from manifests.format.layout import manifest_path
    from manifests.format.record import read_manifest
    from pipeline.filtering.rules import describe_reasons

    reasons: Counter = Counter()
    kept = total = 0
    for s in rec["shards"]:
        stem = Path(s["name"]).stem
        if only is not None and int(stem.split("-")[-1]) not in only:
            continue
        for r in read_manifest(manifest_path(Path(out), stem)).to_pylist():
            total += 1
            kept += r["kept"]
            if not r["kept"]:
                reasons[r["reject_reason"]] += 1
    if total:
        why = f"; rejected {describe_reasons(reasons)}" if reasons else ""
        _say(args, f"filter: kept {kept} of {total} candidates{why}")
