"""One shard of `dpp generate`, as numbered stages: plan -> render -> label -> score -> decide -> write.

Stages 1-4 turn a batch of candidate indices into `Candidate`s (`render_batch`); `render_shard` decides
them a block at a time (stage 5, the pure `filtering.rules.decide`) and writes each one (stage 6) as a
kept sample or a rejected row, until the shard holds its planned number of samples. Every candidate is
a pure function of its seed, so the same plan draws the same candidates whatever the rules reject.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from labelers import cross_attention
from labelers.classifier import confidence
from manifests.errors import DppError
from manifests.format.schema import IGNORE
from manifests.storage.writer import ShardWriter
from pipeline.diffusion.common import from_uint8
from pipeline.diffusion.text import AttentionMaps, attention_side
from pipeline.diffusion.text import render as text_render
from pipeline.filtering import rules as filters
from pipeline.filtering import scores as scoring
from pipeline.filtering.scores import Scores
from pipeline.generate.job import Job
from pipeline.generate.settings import ShardPlan
from pipeline.guidance.guide import render as guided_render
from pipeline.guidance.guide import target_matrix
from pipeline.labeling.fewshot import label_images, upsample_masks

ENCODE_THREADS_GPU = 2  # PNG encoder threads beside a GPU render loop


@dataclass
class Candidate:
    """One rendered, labeled and scored candidate of a shard, before the keep rules decide on it."""

    index: int  # candidate index within the shard
    seed: int
    targets: list[str]  # the class(es) it was drawn towards (empty without a class plan)
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 class indices, IGNORE where the labeler abstains
    scores: Scores
    prompt: str | None = None  # text-to-image generators
    agreement: float | None = None  # --attention-agreement: IoU of head and cross-attention masks


def sample_record(job: Job, shard: int, c: Candidate) -> tuple[str, dict, dict]:
    """The sample's key, its KEY.json and its manifest row, from the same fields."""
    key = f"syn-{shard:06d}-{c.index:06d}"
    meta = {
        "origin": "synthetic",
        "generation": job.generation,
        "source": "generate",
        "seed": c.seed,
        "generator": job.gen.id,
        "labeler": job.labeler.id,
        "target_classes": c.targets,
        **({"prompt": c.prompt} if c.prompt is not None else {}),
        "scores": {
            **c.scores.as_row(),
            **({"label_agreement": c.agreement} if job.cfg.agreement is not None else {}),
        },
    }
    row = {
        "index_in_shard": c.index,
        "source": "generate",
        "seed": c.seed,
        "generator_id": job.gen.id,
        "labeler_id": job.labeler.id,
        "target_classes": c.targets or None,
        **c.scores.as_row(),
    }
    return key, meta, row


# --- stages 1-4: a batch of candidates -------------------------------------------------------


def foreground_as_drawn(masks: np.ndarray, targets: list[list[str]], classes: list[str]) -> None:
    """A class-conditional generator drew each sample as its target class: the head's foreground (every
    labeled non-background pixel) becomes that class, in place. The generator decides which shape; the
    head only finds its pixels (docs/toyworld.md)."""
    for m, t in zip(masks, targets, strict=True):
        m[(m != 0) & (m != IGNORE)] = classes.index(t[0])


def render_batch(job: Job, plan: ShardPlan, idx: list[int]) -> list[Candidate]:
    gen, classes = job.gen, job.classes
    # 1. plan: each candidate's seed, target class(es) and prompt
    seeds = [plan.seed(c) for c in idx]
    targets = [(job.cfg.class_plan[c % len(job.cfg.class_plan)],) if job.cfg.class_plan else () for c in idx]
    prompts = [job.prompt(t[0], c) for t, c in zip(targets, idx, strict=True)] if job.text else None
    # 2. render (the attention maps of a text model are captured while it draws)
    maps = AttentionMaps(len(idx), attention_side(gen)) if job.reads_attention else None
    images, finite = _render(job, seeds, targets, prompts, maps)
    # 3. label: a mask per image, and the head's uncertainty
    attention = _attention_masks(job, maps, images, prompts, targets) if maps is not None else None
    labels = attention if job.zero_shot else label_images(gen, job.labeler, images, seeds)
    masks = upsample_masks(labels.mask, images.shape[1])  # a head may label at a lower resolution
    if job.conditional:
        foreground_as_drawn(masks, [list(t) for t in targets], classes)
    # 4. score
    uncertainty = [round(v, 6) for v in labels.score.tolist()]  # float noise below 1e-6 is not data
    conf = _confidence(job, images, targets)
    real = [None] * len(idx)
    if job.realism is not None:
        real = [round(float(v), 6) for v in job.realism.score(images)]
    out = []
    for j, c in enumerate(idx):
        tgt = [classes.index(t) for t in targets[j]]
        scores = Scores(
            finite=bool(finite[j]),
            target_pixels=scoring.target_pixels(masks[j], tgt),
            min_fragment=scoring.min_fragment(masks[j]),
            uncertainty=uncertainty[j],
            confidence=conf[j],
            realism=real[j],
        )
        cand = Candidate(c, seeds[j], list(targets[j]), images[j], masks[j], scores)
        cand.prompt = prompts[j] if prompts else None
        if job.cfg.agreement is not None:
            cand.agreement = scoring.agreement(masks[j], attention.mask[j].numpy(), tgt)
        out.append(cand)
    return out


def _render(job: Job, seeds, targets, prompts, maps) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and a finite flag per image: a render hook, a text model from prompts, or our pixel
    loop (with classifier guidance and classifier-free guidance when the job asks for them)."""
    if job.render is not None:
        return job.render(seeds), np.ones(len(seeds), bool)
    if job.text:
        steer = None  # classifier guidance on the latents, on top of classifier-free guidance
        if job.guide is not None and job.guide.scale:
            steer = job.guide.adjust(target_matrix(targets, job.guide.classes))
        return text_render(
            job.gen,
            seeds,
            prompts,
            job.cfg.prompts,
            job.cfg.scheduler,
            job.cfg.steps,
            maps=maps,
            adjust_eps=steer,
        )
    return guided_render(
        job.gen, seeds, job.cfg.scheduler, job.cfg.steps, job.guide, targets, job.cfg.cfg_scale
    )


def _attention_masks(job: Job, maps: AttentionMaps, images, prompts, targets):
    """Zero-shot masks: the class word's attention while the image was drawn."""
    cross_maps, self_maps = maps.result()
    words = [
        {job.classes.index(w): job.gen.class_tokens(p, w) for w in t}
        for p, t in zip(prompts, targets, strict=True)
    ]
    rules = job.labeler.config if job.zero_shot else job.cfg.agreement
    return cross_attention.label(cross_maps, self_maps, words, images.shape[1:3], rules)


def _confidence(job: Job, images: np.ndarray, targets) -> list[float | None]:
    """The noise-aware classifier's confidence in each image's target (None without a classifier)."""
    if job.guide is None or not job.cfg.class_plan:
        return [None] * len(images)
    gen = job.gen
    with torch.no_grad():
        x0 = from_uint8(images)
        x0 = gen.encode(x0).float() if job.text else x0.to(gen.device)  # latent model: latents
        tm = target_matrix(targets, job.guide.classes).to(gen.device)
        return [round(v, 6) for v in confidence(job.guide.model, x0, tm).cpu().tolist()]


# --- stages 5-6: decide and write, block by block --------------------------------------------


def next_batches(
    rules: filters.FilterRules, batch_size: int, needed: int, start_at: int, ahead: int
) -> tuple[int, list[list[int]]]:
    """The size of the next block (its first candidate is `start_at`) and the batches of candidate
    indices to render before it is decided, with `needed` samples still to keep and `ahead` candidates
    rendered but not decided yet. Float results depend a little on the batch a candidate is rendered
    in, so `shard_batches` replays this to render one candidate again in its own batch."""
    # a block is decided together (the rank rule ranks within it); without the rank rule each
    # candidate stands alone, so the last block is only as long as the samples still needed
    size = rules.block if rules.drop_fraction > 0 else min(rules.block, needed)
    if ahead >= size:
        return size, []
    # render up to a whole batch at once (a GPU wants big batches)
    count = max(size, min(batch_size, -(-needed // size) * size)) - ahead
    first = start_at + ahead
    ends = range(first, first + count, batch_size)
    return size, [list(range(b, min(first + count, b + batch_size))) for b in ends]


def shard_batches(
    rules: filters.FilterRules, batch_size: int, plan_kept: int, kept: list[bool]
) -> list[list[int]]:
    """Every batch `render_shard` rendered for a shard, from its manifest's `kept` flags in candidate
    order (the decisions are all the schedule depends on)."""
    out: list[list[int]] = []
    done, start_at, ahead = 0, 0, 0
    while done < plan_kept and start_at < len(kept):
        size, batches = next_batches(rules, batch_size, plan_kept - done, start_at, ahead)
        out += batches
        ahead += sum(map(len, batches)) - size
        done += sum(kept[start_at : start_at + size])
        start_at += size
    return out


def render_shard(
    job: Job, plan: ShardPlan, corpus_id: str, progress: Callable[[int], None] | None = None
) -> dict:
    """Render, label, score and filter candidates of one shard until it holds plan.kept samples; write the
    tar and then its manifest (the shard's commit). Returns the shard record. A failure removes the
    shard's temporary files and leaves nothing under its final names."""
    rules = job.cfg.rules
    # on a GPU, rendering is fast enough that PNG encoding on the caller's thread would hold it back;
    # on a CPU the cores are busy rendering, and a thread would only compete (docs/benchmarks.md)
    threads = ENCODE_THREADS_GPU if job.gen.device.type == "cuda" else 0
    with ShardWriter(
        job.cfg.out,
        plan.index,
        job.classes,
        job.chash,
        job.metadata(corpus_id),
        job.cfg.keep_rejected,
        threads,
    ) as writer:
        kept, start_at, reasons = 0, 0, Counter()
        ahead: list[Candidate] = []  # candidates rendered (in whole batches) but not decided yet, in order
        while kept < plan.kept:
            if start_at >= plan.max_candidates:
                raise DppError(
                    f"shard {plan.index}: the filter kept {kept} of {start_at} candidates, the cap is "
                    f"{job.cfg.max_attempts} candidates per sample (--max-attempts); rejected: "
                    f"{filters.describe_reasons(reasons)}; loosen those rules"
                )
            size, batches = next_batches(rules, job.cfg.batch_size, plan.kept - kept, start_at, len(ahead))
            for idx in batches:
                ahead += render_batch(job, plan, idx)
            block, ahead = ahead[:size], ahead[size:]
            # 5. decide
            decisions = filters.decide(rules, [c.scores for c in block])
            # 6. write: kept samples until the shard is full, everything else as a rejected row
            for c, reason in zip(block, decisions, strict=True):
                key, meta, row = sample_record(job, plan.index, c)
                if reason is None and kept < plan.kept:
                    writer.add(key, np.ascontiguousarray(c.image), c.mask, meta, **row)
                    kept += 1
                    if progress is not None:
                        progress(1)
                else:
                    reason = reason or filters.SURPLUS
                    reasons[reason] += 1
                    writer.reject(key, reason, np.ascontiguousarray(c.image), c.mask, meta, **row)
            start_at += size
        return writer.close().as_json()
