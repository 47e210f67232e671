"""`dpp generate` (plain loop): render N samples, label them with a few-shot head, write a synthetic corpus.

The path of one sample: seed = sample_seed(job seed, shard, index) -> x_T from a CPU generator
seeded with it -> our denoising loop -> uint8 image -> re-noise features (same mode as the head's
support images) -> mask + uncertainty -> shard. Every sample is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pipeline.generator import Generator, sample
from pipeline.labeling import Labeler, label_images
from pipeline.seeds import sample_seed
from pipeline.shards import CorpusSample, WriteResult, check_counts, write_corpus


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
) -> WriteResult:
    """`render(seeds) -> uint8 images` replaces the denoising loop when given: images are a pure function
    of (generator, seed, steps, scheduler, batch), so a caller labelling the same renders with several
    labelers (benchmarks/label_efficiency.py) can render once and pass a memo here."""
    check_counts(n, shard_size)
    if render is None:

        def render(seeds: list[int]) -> np.ndarray:
            return sample(gen, seeds, scheduler, steps, batch_size)

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
    }
    parents = sorted(
        {labeler.info["support_corpus"]} | {d["corpus_id"] for d in gen.info.get("training_data", [])}
    )

    def samples() -> Iterator[CorpusSample]:
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            where = [divmod(i, shard_size) for i in idx]
            seeds = [sample_seed(seed, s, i) for s, i in where]
            images = render(seeds)
            labels = label_images(gen, labeler, images, seeds)
            masks = labels.mask.numpy()
            scores = [round(v, 6) for v in labels.score.tolist()]  # float noise below 1e-6 is not data
            for (shard, index), s, image, mask, score in zip(
                where, seeds, images, masks, scores, strict=True
            ):
                meta = {
                    "origin": "synthetic",
                    "generation": generation,
                    "source": "generate",
                    "seed": s,
                    "generator": gen.id,
                    "labeler": labeler.id,
                    "scores": {"label_uncertainty": score},
                }
                row = {
                    "source": "generate",
                    "seed": s,
                    "generator_id": gen.id,
                    "labeler_id": labeler.id,
                    "label_uncertainty": score,
                }
                yield CorpusSample(
                    f"syn-{shard:06d}-{index:06d}", np.ascontiguousarray(image), mask, meta, row
                )

    return write_corpus(
        out,
        samples,
        n,
        labeler.classes,
        config,
        "synthetic",
        shard_size,
        overwrite,
        quiet,
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
        parents=parents,
    )
