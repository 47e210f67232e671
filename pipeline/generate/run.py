"""`dpp generate` in one process: lock the output, start (or resume, or append), render the missing shards,
reconcile and commit corpus.json last.

The path of one sample: job.py builds the Job (models loaded once per process); settings.py plans the
shards (each candidate's seed = sample_seed(job seed, shard, candidate)); shard.py renders each shard
as stages (plan -> render -> label -> score -> decide -> write); `finish` here reconciles and commits.
The output folder's own files (lock, job.json, orphans, versions) are manifests/storage/commit.py's.
flows/generate.py runs the same steps as a Prefect flow.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from manifests.errors import DppError, UsageError
from manifests.format.layout import CORPUS_FILE, manifest_path, shard_name
from manifests.format.record import (
    load_corpus,
    new_record,
    next_version,
    read_manifest,
    summarize,
    write_corpus_json,
)
from manifests.storage import commit as output
from manifests.storage.staged import WriteResult
from manifests.verify import shard_problems
from pipeline.diffusion.pixel import Generator
from pipeline.diffusion.samplers import DEFAULT_SCHEDULER, default_steps
from pipeline.filtering.rules import FilterRules
from pipeline.filtering.scores import REALISM_K, Realism
from pipeline.generate.job import GenerateConfig, Job
from pipeline.generate.settings import ShardPlan, plan_shards
from pipeline.generate.shard import render_shard
from pipeline.guidance.guide import Guide
from pipeline.labeling.fewshot import Labeler

# --- the output folder: start, shards, commit -------------------------------------------------


@dataclass
class Start:
    """What a job found at its output and decided (with the output's lock held)."""

    plans: list[ShardPlan]
    committed: dict[int, dict]  # shard index -> shard record, already committed by this same job
    corpus_id: str
    base: dict | None = None  # the corpus.json this job appends to
    done: WriteResult | None = None  # the output already holds this job's result
    removed: list[str] = field(default_factory=list)  # orphans and temp files removed
    rendered_on: list[dict] = field(default_factory=list)  # devices/dtypes of this job's shards (job.json)

    @property
    def resumed(self) -> bool:
        return bool(self.committed)


def _load_record(out: Path, overwrite: bool) -> dict | None:
    if not (out / CORPUS_FILE).exists():
        return None
    try:
        return load_corpus(out)
    except DppError as e:
        if overwrite:
            return None
        raise UsageError(
            f"--out {out} holds a corpus that cannot be read ({e}); pass --overwrite to replace it"
        ) from None


def start(job: Job, overwrite: bool = False) -> Start:
    """Decide what to do at job.cfg.out (call with the lock held) and prepare it: nothing (already done),
    resume an unfinished run of this same job, append, or start afresh (manifests/storage/commit.py
    decides; this reads the folder and acts). Writes job.json (the plan) and removes orphans; never
    touches a committed corpus unless overwrite."""
    out, chash = job.cfg.out, job.chash
    record = _load_record(out, overwrite)
    problems = []  # a damaged corpus is neither called done nor built upon
    for entry in record["shards"] if record else []:
        problems += shard_problems(out, entry, classes=record["classes"])
    found = output.Found(record, tuple(problems), output.read_job(out), bool(output.other_entries(out)))
    d = output.decide(found, out, chash, job.cfg.append, overwrite, job.classes)
    pending = found.pending if d.action == "resume" else None
    rendered_on = _check_device(
        job, (d.base or {}).get("rendered_on", []), (pending or {}).get("rendered_on", [])
    )
    if d.wipe:
        output.wipe(out)
    elif d.drop_pending:  # another job's unfinished append: its shards go, the corpus stays
        output.clean(out, {f for s in record["shards"] for f in output.shard_files(s)})
    if d.clear_job:
        output.clear_job(out)
    if d.action == "done":
        return Start([], {}, record["corpus_id"], done=WriteResult(out, record, already_done=True))
    base, first = d.base, d.first_shard
    plans = plan_shards(job.cfg.n, job.cfg.shard_size, job.cfg.seed, job.cfg.max_attempts, first)
    corpus_id = base["corpus_id"] if base else f"synthetic-{chash}"
    if d.action != "resume":
        output.write_job(
            out,
            {
                "kind": "generate",
                "config_hash": chash,
                "config": job.config,
                "append": job.cfg.append,
                "base_version": base.get("version", 1) if base else None,
                "first_shard": first,
                "shards": [p.index for p in plans],
                "rendered_on": rendered_on,
            },
        )
    elif rendered_on != pending.get("rendered_on"):  # resumed elsewhere (--allow-device-change): say so
        output.write_job(out, {**pending, "rendered_on": rendered_on})
    committed = {}
    for p in plans:
        info = output.committed_shard(out, shard_name(p.index), chash)
        if info is not None:
            committed[p.index] = info
    keep = {f for s in (base or {}).get("shards", []) for f in output.shard_files(s)}
    keep |= {f for s in committed.values() for f in output.shard_files(s)}
    removed = output.clean(out, keep)
    return Start(plans, committed, corpus_id, base, removed=removed, rendered_on=rendered_on)


def _where(r: dict) -> str:
    return f"{r['device']}/{r['dtype']}"


def _union(*lists: list[dict]) -> list[dict]:
    return sorted({_where(r): r for rs in lists for r in rs}.values(), key=_where)


def _check_device(job: Job, corpus: list[dict], interrupted: list[dict]) -> list[dict]:
    """Refuse to add samples rendered on another device or dtype than those already in the corpus
    (an append) or already committed by this job (a resume), unless --allow-device-change: floats
    differ a little across devices and dtypes, so the corpus would silently mix both. Returns where
    this job's shards are rendered (what job.json records). Corpora that record nothing pass."""
    now = job.rendered_on
    other = [r for r in _union(corpus, interrupted) if r != now]
    if other and not job.cfg.allow_device_change:
        what = "the corpus at" if corpus and other[0] in corpus else "the interrupted job in"
        raise UsageError(
            f"{what} --out {job.cfg.out} was rendered on {_where(other[0])}, this run would render on "
            f"{_where(now)} and mix both; rerun with --device {other[0]['device']} --dtype "
            f"{other[0]['dtype']}, or pass --allow-device-change (each shard records where it was rendered)"
        )
    return _union(interrupted, [now])


def _shard_rows(out: Path, info: dict) -> list[dict]:
    return read_manifest(manifest_path(out, info["name"])).to_pylist()


def _unique(rows: list[dict], keys: set[str]):
    for r in rows:
        if r["key"] in keys:
            raise DppError(f"reconcile: sample key {r['key']} appears twice")
        keys.add(r["key"])
        yield r


def finish(job: Job, st: Start, infos: dict[int, dict]) -> WriteResult:
    """Reconcile (every planned shard is there; kept + rejected = candidates drawn; keys unique) and
    commit: corpus.json written last (for an append, the previous one is kept under versions/)."""
    out = job.cfg.out
    missing = [p.index for p in st.plans if p.index not in infos]
    if missing:
        raise DppError(f"reconcile: shard(s) {', '.join(map(str, missing))} of the plan were not written")
    base_shards = list(st.base["shards"]) if st.base else []
    shards = base_shards + [infos[p.index] for p in st.plans]
    keys: set[str] = set()
    candidates = 0

    def rows():  # shard by shard, checked as they pass: memory does not grow with the corpus
        nonlocal candidates
        for s in base_shards:
            yield from _unique(_shard_rows(out, s), keys)
        for p in st.plans:
            part = _shard_rows(out, infos[p.index])
            candidates += len(part)
            kept = sum(r["kept"] for r in part)
            if kept != p.kept or infos[p.index]["samples"] != kept:
                raise DppError(
                    f"reconcile: shard {p.index} holds {kept} kept samples, the plan says {p.kept}"
                )
            if any(r["config_hash"] != job.chash for r in part):
                raise DppError(f"reconcile: shard {p.index} holds rows of another job")
            yield from _unique(part, keys)

    summary = summarize(job.classes, rows())
    added = {
        "config_hash": job.chash,
        "shards": [p.index for p in st.plans],
        "kept": sum(p.kept for p in st.plans),
        "candidates": candidates,
        "rendered_on": st.rendered_on,
    }
    if st.base is None:
        first = {"version": 1, **added, "synthetic_fraction": summary["synthetic_fraction"]}
        fields = {**_provenance(job), "version": 1, "history": [first], "rendered_on": st.rendered_on}
        record = new_record(st.corpus_id, job.classes, summary, shards, job.config, job.chash, fields)
    else:
        entry = {**added, "config": job.config, "synthetic_fraction": summary["synthetic_fraction"]}
        record = next_version(st.base, summary, shards, entry, _provenance(job)["parents"])
        record["rendered_on"] = _union(st.base.get("rendered_on", []), st.rendered_on)
        output.keep_version(out, int(st.base.get("version", 1)))
    write_corpus_json(out, record)
    output.clear_job(out)
    return WriteResult(out, record, already_done=False)


def _provenance(job: Job) -> dict:
    gen, labeler = job.gen, job.labeler
    filter_record = {"rules": job.cfg.rules.as_json(), "class_plan": list(job.cfg.class_plan)}
    if job.realism is not None:
        filter_record["realism_reference"] = {
            "corpus_id": job.realism.corpus_id,
            "path": job.realism.path,
            "images": int(job.realism.reference.shape[0]),
            "k": REALISM_K,
            "real_to_real_distance": job.realism.reference_quantiles(),
        }
    return {
        "generator": {
            "id": gen.id,
            "source": gen.source,
            "sample_generation": job.generation,
            "training_data": gen.info.get("training_data", []),
        },
        "labeler": {
            "id": labeler.id,
            "path": None if labeler.path is None else str(labeler.path),
            "support_corpus": labeler.info["support_corpus"],
            "support_keys": labeler.info["support_keys"],
        },
        "classifier": None
        if job.guide is None
        else {"id": job.guide.id, "path": job.guide.path, "scale": job.guide.scale},
        "filter": filter_record,
        "parents": sorted(
            ({labeler.info["support_corpus"]} - {None})
            | {d["corpus_id"] for d in gen.info.get("training_data", [])}
        ),
    }


def run(job: Job, overwrite: bool = False, quiet: bool = False) -> WriteResult:
    """The plain loop (no Prefect): lock, start (or resume), render the missing shards one by one, commit.
    flows/generate.py runs the same steps as a Prefect flow."""
    with output.output_lock(job.cfg.out) as created:
        st = start(job, overwrite)
        if st.done is not None:
            return st.done
        infos = dict(st.committed)
        todo = [p for p in st.plans if p.index not in infos]
        with tqdm(
            total=sum(p.kept for p in todo), desc=f"generating {job.cfg.out.name}", unit="sample",
            disable=quiet, leave=False,
        ) as bar:  # fmt: skip
            with abandon_on_error(job, created, infos):
                for p in todo:
                    infos[p.index] = render_shard(job, p, st.corpus_id, bar.update)
        return finish(job, st, infos)


@contextmanager
def abandon_on_error(job: Job, created: bool, infos: dict):
    """On a failure: with no shard of this job committed, leave the output as it was (remove job.json,
    and the folder if this job created it); otherwise keep the committed shards for a rerun to continue."""
    try:
        yield
    except BaseException as e:
        if not infos:
            output.clear_job(job.cfg.out)
            if created:
                shutil.rmtree(job.cfg.out, ignore_errors=True)
        kept = [f"{len(infos)} committed shard(s) are kept in {job.cfg.out}; rerun the same job to continue"]
        kept = kept if infos else []
        if isinstance(e, OSError):  # disk full, permission lost, ...: said in one line, with what is kept
            raise DppError(f"{e.strerror or e} while writing {job.cfg.out}", details=kept) from e
        if isinstance(e, DppError):
            e.details += kept
        raise


def generate(
    gen: Generator,
    labeler: Labeler,
    n: int,
    seed: int,
    out: Path,
    shard_size: int = 1000,
    steps: int | None = None,
    scheduler: str = DEFAULT_SCHEDULER,
    batch_size: int = 16,
    overwrite: bool = False,
    quiet: bool = False,
    render: Callable[[list[int]], np.ndarray] | None = None,
    rules: FilterRules | None = None,
    guide: Guide | None = None,
    class_plan: tuple[str, ...] = (),
    realism: Realism | None = None,
    keep_rejected: bool = False,
    max_attempts: int = 10,
    append: bool = False,
    cfg_scale: float = GenerateConfig.cfg_scale,
) -> WriteResult:
    """Write (or resume, or append to) a synthetic corpus of `n` kept samples, in this process.
    `render(seeds) -> uint8 images` replaces the denoising loop when given (images are a pure function
    of generator, seed, steps, scheduler and batch, so benchmarks/label_efficiency.py renders once and
    labels with several heads). `steps` defaults to the scheduler's own count (DEFAULT_STEPS)."""
    cfg = GenerateConfig(
        n=n, seed=seed, out=Path(out), shard_size=shard_size, scheduler=scheduler,
        steps=default_steps(scheduler, steps),
        batch_size=batch_size, rules=rules or FilterRules(), class_plan=tuple(class_plan),
        keep_rejected=keep_rejected, max_attempts=max_attempts, append=append, cfg_scale=cfg_scale,
    )  # fmt: skip
    job = Job(cfg=cfg, gen=gen, labeler=labeler, guide=guide, realism=realism, render=render)
    return run(job, overwrite, quiet)
