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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from labelers.classifier import confidence
from manifests.corpus import load_corpus
from manifests.errors import DppError, UsageError
from pipeline import filters
from pipeline.filters import FilterRules, Scores
from pipeline.generator import Generator, from_uint8
from pipeline.guidance import Guide, target_matrix
from pipeline.guidance import render as guided_render
from pipeline.labeling import Labeler, label_images
from pipeline.seeds import sample_seed
from pipeline.shards import ShardWriter, WriteResult, check_counts, write_shards

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
        from pipeline.evalnet import embed

        return filters.knn_distance(embed(self.net, self.cfg, images)[0], self.reference, REALISM_K)

    def reference_quantiles(self) -> dict:
        """Real-to-real k-NN distances (each real image left out of its own neighbours): a scale for
        --max-realism-distance."""
        d = filters.knn_distance(self.reference, self.reference, REALISM_K, exclude_self=True)
        return {f"p{q}": round(float(np.quantile(d, q / 100)), 6) for q in (50, 90, 95, 99)}


def load_realism(corpus: Path, image_shape: tuple[int, int, int]) -> Realism:
    from pipeline.evalnet import embed, load_evalnet
    from pipeline.reader import iter_samples

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
) -> WriteResult:
    """Write a synthetic corpus of `n` kept samples. `render(seeds) -> uint8 images` replaces the
    denoising loop when given (images are a pure function of generator, seed, steps, scheduler and
    batch, so benchmarks/label_efficiency.py renders once and labels with several heads)."""
    check_counts(n, shard_size)
    rules = rules or FilterRules()
    if max_attempts < 1:
        raise UsageError(f"--max-attempts {max_attempts} is not allowed; it must be positive")
    if guide is not None and guide.scale and not class_plan:
        raise UsageError("--guidance-scale needs --classes: guidance steers towards a target class")
    if render is not None and guide is not None and guide.scale:
        raise ValueError("a render hook replaces the denoising loop, so it cannot be guided")
    classes = labeler.classes
    for c in class_plan:
        if c not in classes:
            raise UsageError(f"--classes: {c!r} is not a class of the labeler ({', '.join(classes)})")
        if guide is not None and c not in guide.classes:
            raise UsageError(f"--classes: the classifier does not know {c!r} ({', '.join(guide.classes)})")
    generation = int(gen.info.get("sample_generation", 1))
    config = {
        "kind": "generate",
        "n": n,
        "seed": seed,
        "shard_size": shard_size,
        "generator": gen.id,
        "labeler": labeler.id,
        "steps": steps,
        "scheduler": scheduler,
        "batch_size": batch_size,
        "rules": rules.as_json(),
        "classifier": getattr(guide, "id", None),
        "guidance_scale": guide.scale if guide is not None else 0.0,
        "class_plan": list(class_plan),
        "realism_reference": realism.corpus_id if realism else None,
        "max_attempts": max_attempts,
        "keep_rejected": keep_rejected,
    }
    parents = sorted(
        {labeler.info["support_corpus"]} | {d["corpus_id"] for d in gen.info.get("training_data", [])}
    )

    def candidates(shard: int, start: int, count: int):
        """Render, label and score candidates start..start+count-1 of a shard, in render batches."""
        for b in range(start, start + count, batch_size):
            idx = list(range(b, min(start + count, b + batch_size)))
            seeds = [sample_seed(seed, shard, c) for c in idx]
            targets = [(class_plan[c % len(class_plan)],) if class_plan else () for c in idx]
            if render is not None:
                images, finite = render(seeds), np.ones(len(seeds), bool)
            else:
                images, finite = guided_render(gen, seeds, scheduler, steps, guide, targets)
            labels = label_images(gen, labeler, images, seeds)
            masks = labels.mask.numpy()
            if masks.shape[1:] != images.shape[1:3]:
                raise DppError(f"labeler masks are {masks.shape[1:]}, images {images.shape[1:3]}")
            uncertainty = [round(v, 6) for v in labels.score.tolist()]  # float noise below 1e-6 is not data
            conf = [None] * len(idx)
            if guide is not None and class_plan:
                with torch.no_grad():
                    x0 = from_uint8(images).to(gen.device)
                    tm = target_matrix(targets, guide.classes).to(gen.device)
                    conf = [round(v, 6) for v in confidence(guide.model, x0, tm).cpu().tolist()]
            real = [None] * len(idx)
            if realism is not None:
                real = [round(float(v), 6) for v in realism.score(images)]
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
                yield c, seeds[j], list(targets[j]), images[j], masks[j], scores

    def fill(shard: int, writer: ShardWriter) -> None:
        need = min(shard_size, n - shard * shard_size)
        kept, start, reasons = 0, 0, Counter()
        while kept < need:
            if start >= max_attempts * need:
                raise DppError(
                    f"shard {shard}: the filter kept {kept} of {start} candidates, the cap is "
                    f"{max_attempts} candidates per sample (--max-attempts); rejected: "
                    f"{filters.describe_reasons(reasons)}; loosen those rules"
                )
            block = list(candidates(shard, start, rules.block))
            decisions = filters.decide(rules, [b[-1] for b in block])
            for (c, s, tgt, image, mask, sc), reason in zip(block, decisions, strict=True):
                key = f"syn-{shard:06d}-{c:06d}"
                meta = {
                    "origin": "synthetic",
                    "generation": generation,
                    "source": "generate",
                    "seed": s,
                    "generator": gen.id,
                    "labeler": labeler.id,
                    "target_classes": tgt,
                    "scores": {
                        "label_uncertainty": sc.uncertainty,
                        "classifier_confidence": sc.confidence,
                        "realism_distance": sc.realism,
                        "min_fragment_pixels": sc.min_fragment,
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
                if reason is None and kept < need:
                    writer.add(key, np.ascontiguousarray(image), mask, meta, **row)
                    kept += 1
                    bar.update(1)
                else:
                    reason = reason or filters.SURPLUS
                    reasons[reason] += 1
                    writer.reject(key, reason, np.ascontiguousarray(image), mask, meta, **row)
            start += rules.block

    n_shards = -(-n // shard_size)
    with tqdm(total=n, desc=f"generating {Path(out).name}", unit="sample", disable=quiet, leave=False) as bar:
        filter_record = {"rules": rules.as_json(), "class_plan": list(class_plan)}
        if realism is not None:
            filter_record["realism_reference"] = {
                "corpus_id": realism.corpus_id,
                "images": int(realism.reference.shape[0]),
                "k": REALISM_K,
                "real_to_real_distance": realism.reference_quantiles(),
            }
        return write_shards(
            out,
            n_shards,
            fill,
            classes,
            config,
            "synthetic",
            overwrite,
            keep_rejected,
            generator={
                "id": gen.id,
                "source": gen.source,
                "sample_generation": generation,
                "training_data": gen.info.get("training_data", []),
            },
            labeler={
                "id": labeler.id,
                "path": str(labeler.path),
                "support_corpus": labeler.info["support_corpus"],
                "support_keys": labeler.info["support_keys"],
            },
            classifier=None if guide is None else {"id": guide.id, "scale": guide.scale},
            filter=filter_record,
            parents=parents,
        )
