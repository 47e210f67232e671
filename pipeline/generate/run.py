"""`dpp generate` (plain loop): render candidates, label, score and filter them, shard the kept ones.

The path of one sample, in the order this file runs it:
  candidate c of shard s -> seed = sample_seed(job seed, s, c) -> target class from the class plan
  -> x_T from a CPU generator seeded with it -> our denoising loop (classifier guidance when asked)
  -> uint8 image -> re-noise features -> mask + uncertainty (the few-shot head)
  -> scores (mask sanity, classifier confidence, realism) -> keep rules, per block of candidates
  -> kept: tar shard + manifest row;  rejected: manifest row with its reason (and, with
     --keep-rejected, its image and mask in rejected/).
Every candidate is a pure function of its seed, so `--n N` (N kept samples) draws the same candidates
in the same order whatever the rules reject, and a refilter with the same rules decides the same.

A job writes into its output folder shard by shard (manifests/storage/commit.py): `start` decides whether to
begin, resume or append, `render_shard` writes one shard, `finish` reconciles and commits corpus.json.
`run` does this in one process; flows/generate.py does the same steps as a Prefect flow.
"""

from __future__ import annotations

import functools
import shutil
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from labelers import cross_attention
from labelers.classifier import confidence
from labelers.cross_attention import CrossAttentionLabeler
from manifests.errors import DppError, Refused, UsageError
from manifests.format.layout import CORPUS_FILE, MANIFEST_DIR, canonical_json, config_hash, shard_name
from manifests.format.record import load_corpus, read_manifest, summarize, write_corpus_json
from manifests.storage import commit as output
from manifests.storage.writer import IGNORE, ShardWriter, WriteResult, _record, check_counts
from manifests.verify import shard_problems
from pipeline.diffusion.common import from_uint8
from pipeline.diffusion.pixel import Generator
from pipeline.diffusion.text import AttentionMaps, Prompts, TextGenerator, attention_side, parse_prompts
from pipeline.diffusion.text import render as text_render
from pipeline.filtering import rules as filters
from pipeline.filtering.rules import FilterRules, Scores
from pipeline.generate.settings import ShardPlan, plan_shards
from pipeline.guidance.guide import Guide, target_matrix
from pipeline.guidance.guide import render as guided_render
from pipeline.labeling.fewshot import Labeler, label_images, upsample_masks

REALISM_K = 3
REALISM_REFERENCE = 1000  # real images embedded for the realism score (the first ones of --real)


@dataclass(frozen=True)
class Realism:
    """The realism score: mean distance to the k nearest real images in the shipped evaluation
    network's feature space (a fixed space, trained on real toy-world data)."""

    corpus_id: str
    reference: np.ndarray  # (R, D) embeddings of real images
    net: object
    cfg: object

    def score(self, images: np.ndarray) -> np.ndarray:
        from pipeline.evaluation.evalnet import embed

        return filters.knn_distance(embed(self.net, self.cfg, images)[0], self.reference, REALISM_K)

    def reference_quantiles(self) -> dict:
        """Real-to-real k-NN distances (each real image left out of its own neighbours): a scale for
        --max-realism-distance."""
        d = filters.knn_distance(self.reference, self.reference, REALISM_K, exclude_self=True)
        return {f"p{q}": round(float(np.quantile(d, q / 100)), 6) for q in (50, 90, 95, 99)}


def load_realism(corpus: Path, image_shape: tuple[int, int, int]) -> Realism:
    from manifests.storage.reader import iter_samples
    from pipeline.evaluation.evalnet import embed, load_evalnet

    net, cfg = load_evalnet()
    record = load_corpus(corpus)
    images = [s.image for s in iter_samples(corpus, limit=REALISM_REFERENCE)]
    if len(images) <= REALISM_K:
        raise UsageError(
            f"--real {corpus} holds {len(images)} images; the realism score needs more than {REALISM_K}"
        )
    if images[0].shape[:2] != image_shape[1:]:
        raise UsageError(
            f"--real {corpus} has {images[0].shape[1]}x{images[0].shape[0]} images; "
            f"the generator makes {image_shape[2]}x{image_shape[1]}"
        )
    return Realism(record["corpus_id"], embed(net, cfg, np.stack(images))[0], net, cfg)


@dataclass
class Job:
    """Everything one generation job needs, resolved: models, counts, rules, output. Its `config` (what
    the output bytes depend on) is hashed; the hash names the corpus and stamps every manifest row."""

    gen: Generator | TextGenerator
    labeler: Labeler | CrossAttentionLabeler
    n: int
    seed: int
    out: Path
    shard_size: int = 1000
    steps: int = 50
    scheduler: str = "ddim"
    batch_size: int = 16
    rules: FilterRules = field(default_factory=FilterRules)
    guide: Guide | None = None
    class_plan: tuple[str, ...] = ()
    realism: Realism | None = None
    keep_rejected: bool = False
    max_attempts: int = 10
    append: bool = False
    render: Callable[[list[int]], np.ndarray] | None = None  # replaces the denoising loop (benchmarks)
    prompts: Prompts | None = None  # text-to-image generators: each sample's prompt, from its class
    agreement: cross_attention.AttentionLabelerConfig | None = None  # score head vs cross-attention masks
    cfg_scale: float = 3.0  # class-conditional pixel generators: classifier-free guidance towards the target

    def __post_init__(self):
        self.out = Path(self.out)
        check_counts(self.n, self.shard_size)
        if self.text:
            self._check_text_job()
        elif isinstance(self.labeler, CrossAttentionLabeler) or self.agreement is not None:
            what = "--labeler cross-attention" if self.agreement is None else "--attention-agreement"
            raise UsageError(
                f"{what} needs a text-to-image generator (a Stable Diffusion folder); {self.gen.id} is "
                "unconditional: train a labeler with dpp train-labeler"
            )
        if self.max_attempts < 1:
            raise UsageError(f"--max-attempts {self.max_attempts} is not allowed; it must be positive")
        if self.conditional:
            if not self.class_plan:
                raise UsageError(
                    f"{self.gen.id} is class-conditional and needs --classes: each sample draws its "
                    "target class"
                )
            if self.render is not None:
                raise ValueError("a render hook replaces the denoising loop; it cannot draw a class")
            for c in self.class_plan:
                if c not in self.gen.class_names:
                    raise UsageError(
                        f"--classes: {c!r} is not a class {self.gen.id} draws "
                        f"({', '.join(self.gen.class_names)})"
                    )
        guided = self.guide is not None and self.guide.scale
        if guided and not self.class_plan:
            raise UsageError("--guidance-scale needs --classes: guidance steers towards a target class")
        if self.render is not None and guided:
            raise ValueError("a render hook replaces the denoising loop, so it cannot be guided")
        for c in self.class_plan:
            if c not in self.classes:
                raise UsageError(
                    f"--classes: {c!r} is not a class of the labeler ({', '.join(self.classes)})"
                )
            if self.guide is not None and c not in self.guide.classes:
                raise UsageError(
                    f"--classes: the classifier does not know {c!r} ({', '.join(self.guide.classes)})"
                )
        if self.rules.min_confidence is not None and (self.guide is None or not self.class_plan):
            raise UsageError(
                "--min-confidence needs --classifier and --classes (it is confidence in the target)"
            )
        if self.rules.max_realism_distance is not None and self.realism is None:
            raise UsageError("--max-realism-distance needs --real (the real corpus to measure distance to)")

    @property
    def classes(self) -> list[str]:
        return self.labeler.classes

    @property
    def conditional(self) -> bool:
        """A class-conditional pixel generator: each sample is drawn as its target class, and the labeler's
        foreground becomes that class (the generator decides which shape; the head finds its pixels)."""
        return not self.text and bool(self.gen.class_names)

    @property
    def text(self) -> bool:
        """A text-to-image generator: samples are rendered from prompts (pipeline/diffusion/text.py)."""
        return getattr(self.gen, "text_conditioned", False)

    def _check_text_job(self) -> None:
        if not self.class_plan:
            raise UsageError(
                "a text-to-image generator needs --classes: each sample's prompt names its target class"
            )
        if self.render is not None:
            raise ValueError("a render hook replaces the pixel denoising loop; it cannot render prompts")
        self.prompts = self.prompts or Prompts()
        if self.agreement is not None and isinstance(self.labeler, CrossAttentionLabeler):
            raise UsageError(
                "--attention-agreement compares a few-shot head (--labeler FOLDER) with the cross-attention "
                "masks; with --labeler cross-attention there is nothing to compare"
            )
        attention = isinstance(self.labeler, CrossAttentionLabeler) or self.agreement is not None
        if attention and self.gen.latent_shape[1] != self.gen.latent_shape[2]:
            raise UsageError(
                f"cross-attention masks need square images; {self.gen.id} makes "
                f"{self.gen.image_shape[2]}x{self.gen.image_shape[1]}"
            )
        if isinstance(self.labeler, CrossAttentionLabeler):  # its masks need the class word in the prompt
            for c in dict.fromkeys(self.class_plan):
                lists = dict(self.prompts.per_class)
                for text in lists.get(c, (self.prompts.prompt(c, 0),)):
                    if not self.gen.class_tokens(text, c):
                        raise UsageError(
                            f"--labeler cross-attention: the prompt {text!r} does not contain the class "
                            f"word {c!r}; the labeler reads the attention of that word"
                        )

    def prompt(self, target: str, candidate: int) -> str:
        """The prompt of `candidate` (its target class `target`): the plan's classes take turns."""
        return self.prompts.prompt(target, candidate // len(self.class_plan))

    @property
    def generation(self) -> int:
        return int(self.gen.info.get("sample_generation", 1))

    @property
    def config(self) -> dict:
        return (
            {
                "kind": "generate",
                "n": self.n,
                "seed": self.seed,
                "shard_size": self.shard_size,
                "generator": self.gen.id,
                "labeler": self.labeler.id,
                "steps": self.steps,
                "scheduler": self.scheduler,
                "batch_size": self.batch_size,
                "rules": self.rules.as_json(),
                "classifier": getattr(self.guide, "id", None),
                "guidance_scale": self.guide.scale if self.guide is not None else 0.0,
                "class_plan": list(self.class_plan),
                "realism_reference": self.realism.corpus_id if self.realism else None,
                "max_attempts": self.max_attempts,
                "keep_rejected": self.keep_rejected,
                "append": self.append,
            }
            | ({"prompts": self.prompts.as_json()} if self.text else {})
            | ({"agreement": asdict(self.agreement)} if self.agreement is not None else {})
            | ({"cfg_scale": self.cfg_scale} if self.conditional else {})
        )

    @property
    def chash(self) -> str:
        return config_hash(self.config)

    def metadata(self, corpus_id: str) -> dict:
        return {"corpus_id": corpus_id, "config": self.config, "config_hash": self.chash}


def job_from_settings(values: dict) -> Job:
    """A Job from resolved job-file settings (pipeline/generate/settings.py): loads the generator, labeler,
    classifier and realism reference they name. Cached per process, so task workers load each model once."""
    return _job_from_text(canonical_json(values))


@functools.lru_cache(maxsize=4)
def _job_from_text(text: str) -> Job:
    import json

    from pipeline.diffusion.load import load_generator
    from pipeline.guidance.guide import parse_class_plan
    from pipeline.labeling.fewshot import load_labeler

    v = json.loads(text)
    gen = load_generator(v["model.generator"], v["model.device"], v["model.dtype"], v["model.allow_pickle"])
    try:
        attn_rules = cross_attention.AttentionLabelerConfig(
            v["attention.low"], v["attention.high"], v["attention.refine"]
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if v["model.labeler"] == cross_attention.NAME:  # zero-shot: its classes are the ones the plan names
        lab = CrossAttentionLabeler(["background", *_plan_names(v["guidance.classes"])], attn_rules)
    else:
        lab = load_labeler(Path(v["model.labeler"]), gen)
    classes_spec = v["guidance.classes"]
    if (getattr(gen, "text_conditioned", False) or gen.class_names) and not classes_spec:
        classes_spec = "balanced"  # every sample of a conditional model needs a class (its prompt, its label)
    plan = parse_class_plan(classes_spec, lab.classes)
    prompts = None
    if getattr(gen, "text_conditioned", False):
        prompts = Prompts(
            v["prompt.template"],
            parse_prompts(v["prompt.prompts"], [c for c in lab.classes if c != "background"]),
            v["prompt.negative"],
            v["prompt.cfg_scale"],
        )
    guide = None
    if v["guidance.scale"] and not v["guidance.classifier"]:
        raise UsageError("--guidance-scale needs --classifier (a noise-aware classifier folder)")
    if v["guidance.classifier"]:
        from pipeline.guidance.classifier import alphas_cumprod, load_classifier

        clf = load_classifier(Path(v["guidance.classifier"]), gen)
        guide = Guide(clf.model, tuple(clf.classes), v["guidance.scale"], alphas_cumprod(gen), clf.id)
    rules = FilterRules(
        min_target_pixels=v["filter.min_target_pixels"],
        min_fragment_pixels=v["filter.min_fragment_pixels"],
        min_confidence=v["filter.min_confidence"],
        max_uncertainty=v["filter.max_uncertainty"],
        max_realism_distance=v["filter.max_realism_distance"],
        drop_fraction=v["filter.drop_fraction"],
        block=v["filter.block"],
    )
    realism = load_realism(Path(v["filter.real"]), gen.image_shape) if v["filter.real"] else None
    return Job(
        gen,
        lab,
        v["job.n"],
        v["job.seed"],
        Path(v["job.out"]),
        v["job.shard_size"],
        v["model.steps"],
        v["model.scheduler"],
        v["model.batch_size"],
        rules,
        guide,
        plan,
        realism,
        v["filter.keep_rejected"],
        v["filter.max_attempts"],
        v["job.append"],
        prompts=prompts,
        agreement=attn_rules if v["attention.agreement"] else None,
        cfg_scale=v["guidance.cfg_scale"],
    )


def _plan_names(spec: str | None) -> list[str]:
    """The class names a `--classes` plan lists, in order (the cross-attention labeler's classes)."""
    if not spec or spec == "balanced":
        raise UsageError(
            "--labeler cross-attention needs the classes by name: --classes disk,square (or disk=2,square=1)"
        )
    names = [part.strip().partition("=")[0].strip() for part in spec.split(",")]
    bad = [n for n in names if not n or n == "background" or n == "balanced"]
    if bad:
        raise UsageError(f"--classes {spec!r}: {bad[0]!r} is not allowed as a class name")
    return list(dict.fromkeys(names))


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


def _damaged(out: Path, record: dict, refuse: bool, append: bool) -> bool:
    """Is a listed file of this corpus not as recorded? With `refuse`, say so and stop: a damaged corpus
    is neither called done nor built upon."""
    damaged = [p for entry in record["shards"] for p in shard_problems(out, entry, classes=record["classes"])]
    if damaged and refuse:
        raise Refused(
            f"--out {out} is damaged ({len(damaged)} problem(s), first: {damaged[0]}); "
            f"run `dpp repair {out}` to set the damaged shards aside"
            + ("" if append else ", or pass --overwrite to start again")
        )
    return bool(damaged)


def start(job: Job, overwrite: bool = False) -> Start:
    """Decide what to do at job.out (call with the lock held): nothing (already done), resume an
    unfinished run of this same job, append, or start afresh; refuse a different job unless overwrite.
    Writes job.json (the plan) and removes orphans; never touches a committed corpus unless overwrite."""
    out, chash = job.out, job.chash
    record = _load_record(out, overwrite)
    if record is not None and _damaged(out, record, job.append or not overwrite, job.append):
        output.wipe(out)  # --overwrite on a damaged corpus: start again
        record = None
    pending = output.read_job(out)
    if pending is not None and pending.get("config_hash") != chash:
        if not overwrite:
            raise UsageError(
                f"--out {out} holds an unfinished job with another config "
                f"(hash {pending.get('config_hash')}); rerun that job to finish it, "
                "or pass --overwrite to discard it"
            )
        if pending.get("append") and record is not None:
            output.clean(out, {f for s in record["shards"] for f in output.shard_files(s)})
        else:
            output.wipe(out)
            record = None
        output.clear_job(out)
        pending = None
    if pending is not None:  # this same job, interrupted: is it in fact finished?
        if record is not None and _holds(record, job, pending):
            output.clear_job(out)
            return Start([], {}, record["corpus_id"], done=WriteResult(out, record, already_done=True))
        base = record if job.append else None
        first = pending["first_shard"]
    elif job.append:
        if record is None:
            raise UsageError(f"--append: {out} holds no corpus to append to; run without --append first")
        if list(record["classes"]) != list(job.classes):
            raise UsageError(
                f"--append: {out} has classes {', '.join(record['classes'])}, the labeler "
                f"{', '.join(job.classes)}; an appended shard must use the corpus's classes"
            )
        base = record
        first = output.next_shard_index(record)
    else:
        if record is not None and _holds(record, job, None):
            return Start([], {}, record["corpus_id"], done=WriteResult(out, record, already_done=True))
        if record is not None or output.other_entries(out):
            if not overwrite:
                what = f"a different corpus ({record['corpus_id']})" if record else "files but no corpus"
                raise UsageError(
                    f"--out {out} already holds {what}; choose a new folder or pass --overwrite to replace it"
                )
            output.wipe(out)
        base, first = None, 0
    plans = plan_shards(job.n, job.shard_size, job.seed, job.max_attempts, first)
    corpus_id = base["corpus_id"] if base else f"synthetic-{chash}"
    if pending is None:
        output.write_job(
            out,
            {
                "kind": "generate",
                "config_hash": chash,
                "config": job.config,
                "append": job.append,
                "base_version": base.get("version", 1) if base else None,
                "first_shard": first,
                "shards": [p.index for p in plans],
            },
        )
    committed = {}
    for p in plans:
        info = output.committed_shard(out, shard_name(p.index), chash)
        if info is not None:
            committed[p.index] = info
    keep = {f for s in (base or {}).get("shards", []) for f in output.shard_files(s)}
    keep |= {f for s in committed.values() for f in output.shard_files(s)}
    removed = output.clean(out, keep)
    return Start(plans, committed, corpus_id, base, removed=removed)


def _holds(record: dict, job: Job, pending: dict | None) -> bool:
    """Does this corpus.json already hold the result of `job`?"""
    if job.append:  # an append is done when the version after its base lists its config
        if pending is None:
            return False
        last = (record.get("history") or [{}])[-1]
        return (
            record.get("version", 1) == pending["base_version"] + 1 and last.get("config_hash") == job.chash
        )
    return record.get("config_hash") == job.chash and record.get("status") == "complete"


ENCODE_THREADS_GPU = 2  # PNG encoder threads beside a GPU render loop


def render_shard(
    job: Job, plan: ShardPlan, corpus_id: str, progress: Callable[[int], None] | None = None
) -> dict:
    """Render, label, score and filter candidates of one shard until it holds plan.kept samples; write the
    tar and then its manifest (the shard's commit). Returns the shard record. A failure removes the
    shard's temporary files and leaves nothing under its final names."""
    gen, labeler, rules, classes = job.gen, job.labeler, job.rules, job.classes
    plan_cycle = job.class_plan
    cross = isinstance(labeler, CrossAttentionLabeler)
    agree = job.agreement is not None  # the few-shot head's masks, compared with cross-attention masks

    def candidates(start: int, count: int):
        """Candidates start..start+count-1 of the shard, rendered and labeled in batches."""
        for b in range(start, start + count, job.batch_size):
            idx = list(range(b, min(start + count, b + job.batch_size)))
            seeds = [plan.seed(c) for c in idx]
            targets = [(plan_cycle[c % len(plan_cycle)],) if plan_cycle else () for c in idx]
            prompts = [job.prompt(t[0], c) for t, c in zip(targets, idx, strict=True)] if job.text else None
            maps = AttentionMaps(len(idx), attention_side(gen)) if cross or agree else None
            if job.render is not None:
                images, finite = job.render(seeds), np.ones(len(seeds), bool)
            elif job.text:
                steer = None  # classifier guidance on the latents, on top of classifier-free guidance
                if job.guide is not None and job.guide.scale:
                    steer = job.guide.adjust(target_matrix(targets, job.guide.classes))
                images, finite = text_render(
                    gen, seeds, prompts, job.prompts, job.scheduler, job.steps, maps=maps, adjust_eps=steer
                )
            else:
                images, finite = guided_render(
                    gen, seeds, job.scheduler, job.steps, job.guide, targets, job.cfg_scale
                )
            attention = None
            if maps is not None:  # zero-shot masks: the class word's attention while the image was drawn
                cross_maps, self_maps = maps.result()
                words = [
                    {classes.index(w): gen.class_tokens(p, w) for w in t}
                    for p, t in zip(prompts, targets, strict=True)
                ]
                rules_xa = labeler.config if cross else job.agreement
                attention = cross_attention.label(cross_maps, self_maps, words, images.shape[1:3], rules_xa)
            labels = attention if cross else label_images(gen, labeler, images, seeds)
            masks = upsample_masks(labels.mask, images.shape[1])  # a head may label at a lower resolution
            if job.conditional:  # the generator drew the target class: the head's foreground is that class
                for j, t in enumerate(targets):
                    masks[j][(masks[j] != 0) & (masks[j] != IGNORE)] = classes.index(t[0])
            extra = [{"prompt": p} for p in prompts] if prompts else [{} for _ in idx]
            if agree:
                for j, t in enumerate(targets):
                    k = [classes.index(c) for c in t]
                    extra[j]["agreement"] = filters.agreement(masks[j], attention.mask[j].numpy(), k)
            uncertainty = [round(v, 6) for v in labels.score.tolist()]  # float noise below 1e-6 is not data
            conf = [None] * len(idx)
            if job.guide is not None and plan_cycle:
                with torch.no_grad():
                    x0 = from_uint8(images)
                    x0 = gen.encode(x0).float() if job.text else x0.to(gen.device)  # latent model: latents
                    tm = target_matrix(targets, job.guide.classes).to(gen.device)
                    conf = [round(v, 6) for v in confidence(job.guide.model, x0, tm).cpu().tolist()]
            real = [None] * len(idx)
            if job.realism is not None:
                real = [round(float(v), 6) for v in job.realism.score(images)]
            for j, c in enumerate(idx):
                tgt = [classes.index(t) for t in targets[j]]
                scores = Scores(
                    finite=bool(finite[j]),
                    target_pixels=filters.target_pixels(masks[j], tgt),
                    min_fragment=filters.min_fragment(masks[j]),
                    uncertainty=uncertainty[j],
                    confidence=conf[j],
                    realism=real[j],
                )
                yield c, seeds[j], list(targets[j]), images[j], masks[j], scores, extra[j]

    # on a GPU, rendering is fast enough that PNG encoding on the caller's thread would hold it back;
    # on a CPU the cores are busy rendering, and a thread would only compete (docs/benchmarks.md)
    threads = ENCODE_THREADS_GPU if gen.device.type == "cuda" else 0
    with ShardWriter(
        job.out, plan.index, classes, job.chash, job.metadata(corpus_id), job.keep_rejected, threads
    ) as writer:
        kept, start_at, reasons = 0, 0, Counter()
        ahead: list = []  # candidates rendered (in whole batches) but not decided yet, in order
        while kept < plan.kept:
            if start_at >= plan.max_candidates:
                raise DppError(
                    f"shard {plan.index}: the filter kept {kept} of {start_at} candidates, the cap is "
                    f"{job.max_attempts} candidates per sample (--max-attempts); rejected: "
                    f"{filters.describe_reasons(reasons)}; loosen those rules"
                )
            # a block is decided together (the rank rule ranks within it); without the rank rule each
            # candidate stands alone, so the last block is only as long as the samples still needed
            needed = plan.kept - kept
            size = rules.block if rules.drop_fraction > 0 else min(rules.block, needed)
            if len(ahead) < size:  # render up to a whole batch at once (a GPU wants big batches)
                count = max(size, min(job.batch_size, -(-needed // size) * size)) - len(ahead)
                ahead += candidates(start_at + len(ahead), count)
            block, ahead = ahead[:size], ahead[size:]
            decisions = filters.decide(rules, [b[5] for b in block])
            for (c, s, tgt, image, mask, sc, extra), reason in zip(block, decisions, strict=True):
                key = f"syn-{plan.index:06d}-{c:06d}"
                meta = {
                    "origin": "synthetic",
                    "generation": job.generation,
                    "source": "generate",
                    "seed": s,
                    "generator": gen.id,
                    "labeler": labeler.id,
                    "target_classes": tgt,
                    **({"prompt": extra["prompt"]} if "prompt" in extra else {}),
                    "scores": {
                        "label_uncertainty": sc.uncertainty,
                        "classifier_confidence": sc.confidence,
                        "realism_distance": sc.realism,
                        "min_fragment_pixels": sc.min_fragment,
                        **({"label_agreement": extra["agreement"]} if "agreement" in extra else {}),
                    },
                }
                row = {
                    "index_in_shard": c,
                    "source": "generate",
                    "seed": s,
                    "generator_id": gen.id,
                    "labeler_id": labeler.id,
                    "target_classes": tgt or None,
                    "label_uncertainty": sc.uncertainty,
                    "classifier_confidence": sc.confidence,
                    "realism_distance": sc.realism,
                    "min_fragment_pixels": sc.min_fragment,
                }
                if reason is None and kept < plan.kept:
                    writer.add(key, np.ascontiguousarray(image), mask, meta, **row)
                    kept += 1
                    if progress is not None:
                        progress(1)
                else:
                    reason = reason or filters.SURPLUS
                    reasons[reason] += 1
                    writer.reject(key, reason, np.ascontiguousarray(image), mask, meta, **row)
            start_at += size
        return writer.close().as_json()


def _shard_rows(out: Path, info: dict) -> list[dict]:
    return read_manifest(out / MANIFEST_DIR / f"{Path(info['name']).stem}.parquet").to_pylist()


def _unique(rows: list[dict], keys: set[str]):
    for r in rows:
        if r["key"] in keys:
            raise DppError(f"reconcile: sample key {r['key']} appears twice")
        keys.add(r["key"])
        yield r


def finish(job: Job, st: Start, infos: dict[int, dict]) -> WriteResult:
    """Reconcile (every planned shard is there; kept + rejected = candidates drawn; keys unique) and
    commit: corpus.json written last (for an append, the previous one is kept under versions/)."""
    out = job.out
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
    }
    if st.base is None:
        record = _record(
            st.corpus_id,
            job.classes,
            summary,
            shards,
            job.config,
            job.chash,
            {
                **_provenance(job),
                "version": 1,
                "history": [{"version": 1, **added, "synthetic_fraction": summary["synthetic_fraction"]}],
            },
        )
    else:
        version = int(st.base.get("version", 1)) + 1
        history = list(st.base.get("history") or [output.first_history(st.base)])
        history.append({"version": version, **added, "config": job.config,
                        "synthetic_fraction": summary["synthetic_fraction"]})  # fmt: skip
        record = {**st.base, **summary, "shards": shards, "version": version, "history": history}
        parents = set(record.get("parents") or []) | set(_provenance(job)["parents"])
        record["parents"] = sorted(parents)
        output.keep_version(out, int(st.base.get("version", 1)))
    write_corpus_json(out, record)
    output.clear_job(out)
    return WriteResult(out, record, already_done=False)


def _provenance(job: Job) -> dict:
    gen, labeler = job.gen, job.labeler
    filter_record = {"rules": job.rules.as_json(), "class_plan": list(job.class_plan)}
    if job.realism is not None:
        filter_record["realism_reference"] = {
            "corpus_id": job.realism.corpus_id,
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
        "classifier": None if job.guide is None else {"id": job.guide.id, "scale": job.guide.scale},
        "filter": filter_record,
        "parents": sorted(
            ({labeler.info["support_corpus"]} - {None})
            | {d["corpus_id"] for d in gen.info.get("training_data", [])}
        ),
    }


def run(job: Job, overwrite: bool = False, quiet: bool = False) -> WriteResult:
    """The plain loop (no Prefect): lock, start (or resume), render the missing shards one by one, commit.
    flows/generate.py runs the same steps as a Prefect flow."""
    with output.output_lock(job.out) as created:
        st = start(job, overwrite)
        if st.done is not None:
            return st.done
        infos = dict(st.committed)
        todo = [p for p in st.plans if p.index not in infos]
        with tqdm(
            total=sum(p.kept for p in todo), desc=f"generating {job.out.name}", unit="sample",
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
            output.clear_job(job.out)
            if created:
                shutil.rmtree(job.out, ignore_errors=True)
        kept = [f"{len(infos)} committed shard(s) are kept in {job.out}; rerun the same job to continue"]
        kept = kept if infos else []
        if isinstance(e, OSError):  # disk full, permission lost, ...: said in one line, with what is kept
            raise DppError(f"{e.strerror or e} while writing {job.out}", details=kept) from e
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
    steps: int = 50,
    scheduler: str = "ddim",
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
) -> WriteResult:
    """Write (or resume, or append to) a synthetic corpus of `n` kept samples, in this process.
    `render(seeds) -> uint8 images` replaces the denoising loop when given (images are a pure function
    of generator, seed, steps, scheduler and batch, so benchmarks/label_efficiency.py renders once and
    labels with several heads)."""
    job = Job(
        gen, labeler, n, seed, Path(out), shard_size, steps, scheduler, batch_size, rules or FilterRules(),
        guide, tuple(class_plan), realism, keep_rejected, max_attempts, append, render,
    )  # fmt: skip
    return run(job, overwrite, quiet)
