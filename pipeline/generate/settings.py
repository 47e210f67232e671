"""A generation job's settings: one table of fields (the job file's documentation), a TOML loader that
refuses unknown keys, `--set section.key=value` overrides, and the plan a job will follow.

Precedence, lowest first: the defaults below, the job file (`--config job.toml`), command-line flags,
then `--set` overrides. Every field is in FIELDS with its section, default and meaning; the example
job file (examples/job.toml) lists them all and a test keeps the two in step.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from manifests.errors import UsageError
from manifests.format.layout import MANIFEST_DIR, SHARDS_DIR, canonical_json, config_hash, shard_name
from pipeline.diffusion.samplers import DEFAULT_SCHEDULER, SCHEDULERS, default_steps
from pipeline.seeds import sample_seed

REQUIRED = object()  # a field with no default: the job file or a flag must give it

RUNNERS = ("threads", "dask", "ray")


@dataclass(frozen=True)
class Field:
    section: str
    name: str
    kind: type  # str, int, float or bool; optional fields also take "none"
    default: object
    doc: str
    optional: bool = False  # may be absent (None)
    lo: float | None = None  # smallest allowed value (numbers)
    hi: float | None = None  # largest allowed value (numbers)
    choices: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


FIELDS = (  # one field per line, read as a table (E501 is off for this file)
    # [job]: what to make and where
    Field("job", "out", str, REQUIRED, "output corpus folder"),
    Field("job", "n", int, REQUIRED, "kept samples to write (rejected candidates are replaced)", lo=1),
    Field("job", "seed", int, REQUIRED, "job seed; sample seed = f(job seed, shard, candidate index)", lo=0),
    Field("job", "shard_size", int, 1000, "kept samples per shard (the unit of work and of resume)", lo=1),
    Field("job", "append", bool, False, "add new shards to the corpus at out instead of writing a new one"),
    Field("job", "runner", str, "threads", "task runner: threads, dask or ray", choices=RUNNERS),
    Field("job", "workers", int, 1, "shards rendered at once (threads, or local Dask workers)", lo=1),
    Field("job", "dask_address", str, None, "an existing Dask scheduler (tcp://host:port)", optional=True),
    Field("job", "ray_address", str, None, "an existing Ray cluster (host:6379, ray://host:10001 or auto)", optional=True),
    # [model]: the generator, the labeler and the denoising loop
    Field("model", "generator", str, "toyworld", "toyworld, a diffusers folder, or a hub id"),
    Field("model", "labeler", str, REQUIRED, "labeler folder trained on the generator (dpp train-labeler), or cross-attention (text-to-image generators: zero-shot masks from the UNet's attention)"),
    Field("model", "steps", int, None, "denoising steps (default: 20 for dpm, 50 for ddim and ddpm)", optional=True, lo=1),
    Field("model", "scheduler", str, DEFAULT_SCHEDULER, "dpm (DPM-Solver++ 2M), ddim or ddpm", choices=SCHEDULERS),
    Field("model", "batch_size", int, 16, "samples per UNet batch (output bytes depend on it)", lo=1),
    Field("model", "device", str, "auto", "auto (cuda when present), cpu or cuda", choices=("auto", "cpu", "cuda")),
    Field("model", "dtype", str, "float32", "float32, float16 or bfloat16", choices=("float32", "float16", "bfloat16")),
    Field("model", "allow_device_change", bool, False, "resume or append on another device or dtype than the corpus was rendered on (floats differ a little; each shard records its own)"),
    Field("model", "allow_pickle", bool, False, "load a generator folder that has only a pickle checkpoint (.bin): only if you trust it"),
    # [guidance]: classifier guidance and the class plan
    Field("guidance", "classifier", str, None, "noise-aware classifier folder (dpp train-classifier)", optional=True),
    Field("guidance", "scale", float, 0.0, "classifier guidance scale s (0 = off)", lo=0.0),
    Field("guidance", "classes", str, None, "class plan: disk,square | disk=2,square=1 | balanced", optional=True),
    Field("guidance", "cfg_scale", float, 3.0, "classifier-free guidance scale of a class-conditional pixel generator (it draws each sample's target class); 1 = conditional only", lo=0.0, hi=100.0),
    # [prompt]: text-to-image generators only (Stable Diffusion folders): each sample's prompt names its target class
    Field("prompt", "template", str, "a photo of a {class}", "prompt of a sample; {class} is its target class"),
    Field("prompt", "prompts", str, None, "prompts per class, taken in turn: disk=a coin|a plate;square=a box", optional=True),
    Field("prompt", "negative", str, "", "negative prompt (the unconditional side of classifier-free guidance)"),
    Field("prompt", "cfg_scale", float, 7.5, "classifier-free guidance scale; <= 1 = off", lo=0.0, hi=100.0),
    # [attention]: the cross-attention labeler (labelers/cross_attention.py)
    Field("attention", "low", float, 0.35, "a pixel below this on every class map is background", lo=0.0, hi=1.0),
    Field("attention", "high", float, 0.6, "a pixel at or above this is its best class; between low and high: ignore (255)", lo=0.0, hi=1.0),
    Field("attention", "refine", int, 1, "times self-attention refines the maps (0 = off)", lo=0, hi=8),
    Field("attention", "agreement", bool, False, "with a few-shot head on a text-to-image generator: also make the cross-attention masks and record their IoU with the head's on the target class (label_agreement)"),
    # [filter]: the keep rules (pipeline/filtering/rules.py)
    Field("filter", "min_target_pixels", int, 16, "pixels of the target class a mask needs; 0 = off", lo=0),
    Field("filter", "min_fragment_pixels", int, 0, "smallest object region allowed in a mask; 0 = off", lo=0),
    Field("filter", "min_confidence", float, None, "classifier confidence in the target", optional=True, lo=0.0, hi=1.0),
    Field("filter", "max_uncertainty", float, None, "label-head image uncertainty", optional=True, lo=0.0),
    Field("filter", "max_realism_distance", float, None, "k-NN distance to the real images", optional=True, lo=0.0),
    Field("filter", "drop_fraction", float, 0.1, "share of the most uncertain candidates of each block dropped", lo=0.0, hi=0.99),
    Field("filter", "block", int, 20, "candidates per block of the drop rule", lo=1),
    Field("filter", "real", str, None, "real corpus for the realism score", optional=True),
    Field("filter", "keep_rejected", bool, False, "also store rejected images (for dpp refilter)"),
    Field("filter", "max_attempts", int, 10, "candidates per kept sample before the job gives up", lo=1),
)  # fmt: skip
BY_KEY = {f.key: f for f in FIELDS}
SECTIONS = tuple(dict.fromkeys(f.section for f in FIELDS))


def _check(f: Field, value, where: str):
    """The value, type-checked and range-checked; a UsageError names the key, the value and what is allowed."""
    if value is None or (isinstance(value, str) and value.lower() == "none" and f.optional):
        if f.optional:
            return None
        raise UsageError(f"{where}{f.key} is required ({f.doc})")
    if f.kind is bool:
        ok = isinstance(value, bool)
    elif f.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif f.kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise UsageError(f"{where}{f.key} = {value!r} is not allowed; it must be {f.kind.__name__}")
    if f.choices and value not in f.choices:
        raise UsageError(f"{where}{f.key} = {value!r} is not allowed; choose one of {', '.join(f.choices)}")
    if f.kind in (int, float):
        if value != value or (f.lo is not None and value < f.lo) or (f.hi is not None and value > f.hi):
            lo = "-inf" if f.lo is None else f.lo
            hi = "inf" if f.hi is None else f.hi
            raise UsageError(f"{where}{f.key} = {value!r} is not allowed; it must be in [{lo}, {hi}]")
    return value


def read_job_file(path: Path) -> dict:
    """{section.key: value} from a TOML job file; unknown sections or keys are an error naming them."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path} does not exist or is not a file")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path} is not valid TOML ({e})") from None
    values = {}
    for section, table in doc.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise UsageError(f"--config {path}: unknown section [{section}]; allowed: {', '.join(SECTIONS)}")
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in BY_KEY:
                allowed = ", ".join(f.name for f in FIELDS if f.section == section)
                raise UsageError(f"--config {path}: unknown key {key!r}; [{section}] allows {allowed}")
            values[key] = value
    return values


def parse_set(items: list[str]) -> dict:
    """`--set section.key=value` (the value read as TOML, else as a plain string) to {key: value}."""
    values = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq:
            raise UsageError(f"--set {item!r} is not allowed; write section.key=value")
        if key not in BY_KEY:
            raise UsageError(f"--set: unknown key {key!r}; allowed: {', '.join(BY_KEY)}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        values[key] = value
    return values


def resolve(file_values: dict, flag_values: dict, set_values: dict) -> dict:
    """The job settings {section.key: value}: defaults < job file < flags < --set; all checked."""
    merged = {f.key: f.default for f in FIELDS}
    for layer, where in ((file_values, "job file: "), (flag_values, ""), (set_values, "--set ")):
        for key, value in layer.items():
            if value is not None:
                merged[key] = _check(BY_KEY[key], value, where)
            elif BY_KEY[key].optional and layer is set_values:
                merged[key] = None
    for f in FIELDS:
        if merged[f.key] is REQUIRED:
            flag = "--" + f.name.replace("_", "-")
            raise UsageError(f"{f.key} is required ({f.doc}): give it in the job file or as {flag}")
        merged[f.key] = _check(f, merged[f.key], "")
    merged["model.steps"] = default_steps(merged["model.scheduler"], merged["model.steps"])
    _check_runner(merged)
    return merged


def _check_runner(v: dict) -> None:
    """Runner flags that would be accepted and then ignored are refused instead."""
    runner, workers, address = v["job.runner"], v["job.workers"], v["job.dask_address"]
    if address is not None and runner != "dask":
        raise UsageError(f"--dask-address applies to --runner dask; the runner is {runner}")
    if v["job.ray_address"] is not None and runner != "ray":
        raise UsageError(f"--ray-address applies to --runner ray; the runner is {runner}")
    if workers != 1 and runner == "ray":
        raise UsageError(f"--workers {workers} does not apply to --runner ray: Ray places the tasks itself")
    if workers != 1 and address is not None:
        raise UsageError(
            f"--workers {workers} starts local Dask workers; with --dask-address the cluster has its own"
        )


def settings_json(values: dict) -> dict:
    """Nested {section: {key: value}} with optional fields left out (TOML has no null)."""
    out: dict = {s: {} for s in SECTIONS}
    for f in FIELDS:
        if values[f.key] is not None:
            out[f.section][f.name] = values[f.key]
    return out


def to_toml(values: dict) -> str:
    """The settings as a TOML job file (what `--dry-run` prints and the job record stores)."""
    lines = []
    for section, table in settings_json(values).items():
        lines.append(f"[{section}]")
        for k, v in table.items():
            lines.append(f"{k} = {canonical_json(v) if not isinstance(v, bool) else str(v).lower()}")
        lines.append("")
    return "\n".join(lines)


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    index: int  # shard number in the corpus (appended shards continue the numbering)
    kept: int  # kept samples this shard must hold
    max_candidates: int  # candidates 0 .. max_candidates - 1 may be drawn before the job gives up
    job_seed: int

    def seed(self, candidate: int) -> int:
        return sample_seed(self.job_seed, self.index, candidate)

    @property
    def files(self) -> tuple[str, str]:
        name = shard_name(self.index)
        return f"{SHARDS_DIR}/{name}.tar", f"{MANIFEST_DIR}/{name}.parquet"


def plan_shards(
    n: int, shard_size: int, seed: int, max_attempts: int, first_shard: int = 0
) -> list[ShardPlan]:
    n_shards = -(-n // shard_size)
    plans = []
    for k in range(n_shards):
        kept = min(shard_size, n - k * shard_size)
        plans.append(ShardPlan(first_shard + k, kept, max_attempts * kept, seed))
    return plans


def format_plan(plans: list[ShardPlan], out: Path, chash: str, config: dict, append_to: int | None) -> str:
    """The `--dry-run` text: shards, candidate index ranges, seeds, output paths and the config hash."""
    total = sum(p.kept for p in plans)
    what = f"append to version {append_to} of" if append_to is not None else "write"
    lines = [
        f"plan: {what} {out}: {total} kept samples in {len(plans)} shard(s); config hash {chash}",
        f"  seeds: sample_seed({plans[0].job_seed}, shard, candidate) (pipeline/seeds.py)",
        f"  {'shard':>6} {'kept':>6}  {'candidates':<16} {'first seeds':<48} files",
    ]
    for p in plans[:20]:
        seeds = ", ".join(str(p.seed(c)) for c in range(min(2, p.max_candidates)))
        lines.append(
            f"  {p.index:>6} {p.kept:>6}  {f'0..{p.max_candidates - 1}':<16} {seeds + ', ...':<48} "
            f"{out / p.files[0]}, {out / p.files[1]}"
        )
    if len(plans) > 20:
        lines.append(f"  ... {len(plans) - 20} more shard(s)")
    lines.append(f"  then {out / 'corpus.json'} (written last; the commit point)")
    lines.append("resolved config (hashed):")
    lines += [f"  {k} = {canonical_json(v)}" for k, v in sorted(config.items())]
    lines.append("dry run: nothing was written")
    return "\n".join(lines)


__all__ = [
    "FIELDS",
    "ShardPlan",
    "config_hash",
    "format_plan",
    "parse_set",
    "plan_shards",
    "read_job_file",
    "resolve",
    "to_toml",
]
