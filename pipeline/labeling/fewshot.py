"""Labelers bound to a generator: pick K annotated real images, featurize them through the generator
(re-noise mode), fit the pixel-head ensemble, save it with its support set; label and evaluate.

A labeler reads the features of one particular generator, so it records that generator's id and
refuses any other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labelers import pixel_head
from manifests.errors import UsageError
from manifests.format.record import load_corpus
from manifests.storage.reader import iter_samples
from pipeline.diffusion.common import from_uint8
from pipeline.diffusion.features import FeatureSpec, renoise_features
from pipeline.diffusion.pixel import Generator, check_image_size
from pipeline.evaluation.metrics import IoU
from pipeline.seeds import sample_seed

MAX_SHOTS = 100
MAX_VIEWS = 16
VIEW_STREAM = 7  # sample_seed(seed, VIEW_STREAM, v): the noise of view v of a sample (pipeline/seeds.py)
FEATURE_BATCH = 8  # support images featurized at a time: bounds memory whatever K is
DEFAULT_SPEC = FeatureSpec()  # mid + the two lower-resolution up blocks at t = 50 (NOTES.md)


@dataclass(frozen=True)
class Labeler:
    head: pixel_head.PixelHead
    info: dict  # labeler.json: classes, feature spec, support keys, generator id, settings
    id: str
    path: Path

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_json(self.info["feature_spec"])

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def views(self) -> int:
        """Re-noisings of each image the head's prediction is averaged over (1: one)."""
        return int(self.info.get("views", 1))


def _features(gen: Generator, images: np.ndarray, seeds: list[int], spec: FeatureSpec) -> torch.Tensor:
    return renoise_features(gen, from_uint8(images), seeds, spec).cpu()


def train_labeler(
    gen: Generator,
    corpus: Path,
    shots: int,
    out: Path,
    seed: int = 0,
    spec: FeatureSpec = DEFAULT_SPEC,
    members: int = 10,
    views: int = 1,
    ignore_above: float | None = None,
) -> Labeler:
    """`dpp train-labeler`: K support images chosen by seed (their keys recorded), fitted and saved."""
    if not 1 <= shots <= MAX_SHOTS:
        raise UsageError(f"--shots {shots} is not allowed; it must be between 1 and {MAX_SHOTS}")
    if not 1 <= views <= MAX_VIEWS:
        raise UsageError(f"--views {views} is not allowed; it must be between 1 and {MAX_VIEWS}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not an empty folder")
    record = load_corpus(corpus)
    keys = sorted(s.key for s in iter_samples(corpus))
    if len(keys) < shots:
        raise UsageError(f"--shots {shots}: corpus {corpus} holds only {len(keys)} samples")
    order = np.random.default_rng(seed).permutation(len(keys))
    support = sorted(keys[i] for i in order[:shots])
    chosen = set(support)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        imgs, masks, seeds = [], [], []
        for s in iter_samples(corpus):
            if s.key not in chosen:
                continue
            check_image_size(gen, s.image, f"--data {corpus}")
            imgs.append(s.image)
            masks.append(s.mask)
            seeds.append(sample_seed(seed, 0, len(seeds)))
            if len(imgs) == FEATURE_BATCH:
                yield _features(gen, np.stack(imgs), seeds[-len(imgs) :], spec), _resize(masks, spec)
                imgs, masks = [], []
        if imgs:
            yield _features(gen, np.stack(imgs), seeds[-len(imgs) :], spec), _resize(masks, spec)

    channels = _features(gen, np.zeros((1, *gen.image_shape[1:], 3), np.uint8), [0], spec).shape[1]
    cfg = pixel_head.PixelHeadConfig(
        n_classes=len(record["classes"]),
        in_channels=channels,
        members=members,
        seed=seed,
        ignore_threshold=ignore_above,
    )
    head = pixel_head.fit(cfg, batches())
    meta = {
        "classes": list(record["classes"]),
        "feature_spec": spec.as_json(),
        "generator_id": gen.id,
        "support_corpus": record["corpus_id"],
        "support_keys": support,
        "seed": seed,
        "featurize": "renoise",
        **({"views": views} if views > 1 else {}),
    }
    pixel_head.save(head, out, meta)
    return load_labeler(out, gen)


def _resize(masks: list[np.ndarray], spec: FeatureSpec) -> torch.Tensor:
    m = torch.from_numpy(np.stack(masks))
    if m.shape[-1] != spec.resolution:  # nearest: class indices must stay indices
        m = torch.nn.functional.interpolate(m[:, None].float(), size=(spec.resolution,) * 2, mode="nearest")
        m = m[:, 0].to(torch.uint8)
    return m


def load_labeler(path: Path, gen: Generator) -> Labeler:
    """Load a saved labeler; refuse one trained on the features of another generator."""
    path = Path(path)
    if not (path / "labeler.json").is_file():
        raise UsageError(f"--labeler {path} is not a labeler folder (no labeler.json)")
    head, info = pixel_head.load(path)
    if info["generator_id"] != gen.id:
        raise UsageError(
            f"--labeler {path} was trained on generator {info['generator_id']}, not {gen.id}; "
            "train a labeler for this generator"
        )
    h = hashlib.sha256((path / "head.safetensors").read_bytes())
    # label-time settings that change the masks are part of the id (none set: the weights alone, as before)
    settings = {}
    if info.get("views", 1) > 1:
        settings["views"] = info["views"]
    if head.cfg.ignore_threshold is not None:
        settings["ignore"] = head.cfg.ignore_threshold
    if settings:
        h.update(json.dumps(settings, sort_keys=True).encode())
    return Labeler(head, info, f"pixelhead@{h.hexdigest()[:12]}", path)


def view_seeds(seeds: list[int], view: int) -> list[int]:
    """The noise seeds of one view: view 0 is the samples' own seeds, view v > 0 is derived from them."""
    return list(seeds) if view == 0 else [sample_seed(s, VIEW_STREAM, view) for s in seeds]


def label_images(gen: Generator, labeler: Labeler, images: np.ndarray, seeds: list[int]) -> pixel_head.Labels:
    """Masks and uncertainties for uint8 images (re-noise features, the same way the head was fitted),
    averaged over the labeler's views (re-noisings with other seeded noise)."""
    views = [_features(gen, images, view_seeds(seeds, v), labeler.spec) for v in range(labeler.views)]
    return pixel_head.label(labeler.head, views if len(views) > 1 else views[0])


def eval_labeler(
    gen: Generator, labeler: Labeler, corpus: Path, seed: int = 0, class_given: bool = False
) -> dict:
    """`dpp eval-labeler`: per-class IoU and mIoU on a corpus's images, support images excluded.
    `class_given`: label as `dpp generate` does for a class-conditional generator, which knows the class
    it drew: each image's foreground becomes its class (the most frequent object class of its true mask;
    an image with none keeps the head's own classes). This is the quality of the masks the head writes
    into a class-conditional synthetic corpus, measured on real images."""
    classes = labeler.classes
    record = load_corpus(corpus)
    if list(record["classes"]) != list(classes):
        raise UsageError(
            f"--data {corpus} has classes {', '.join(record['classes'])}; the labeler was trained on "
            f"{', '.join(classes)}"
        )
    support = (
        set(labeler.info["support_keys"]) if labeler.info["support_corpus"] == record["corpus_id"] else set()
    )
    acc = IoU(len(classes))
    n = 0
    batch: list = []

    def flush():
        nonlocal n
        imgs = np.stack([b.image for b in batch])
        masks = np.stack([b.mask for b in batch])
        pred = label_images(gen, labeler, imgs, [sample_seed(seed, 1, n + i) for i in range(len(batch))])
        p = upsample_masks(pred.mask, masks.shape[-1])
        if class_given:
            for m, t in zip(p, masks, strict=True):
                counts = np.bincount(t[t != pixel_head.IGNORE].ravel(), minlength=len(classes))[1:]
                if counts.sum():
                    m[(m != 0) & (m != pixel_head.IGNORE)] = 1 + int(counts.argmax())
        acc.add(p, masks)
        n += len(batch)

    for s in iter_samples(corpus):
        if s.key in support:
            continue
        check_image_size(gen, s.image, f"--data {corpus}")
        batch.append(s)
        if len(batch) == 32:
            flush()
            batch = []
    if batch:
        flush()
    if n == 0:
        raise UsageError(f"--data {corpus} has no images outside the labeler's support set")
    iou = dict(zip(classes, acc.per_class(), strict=True))
    return {"labeler": labeler.id, "images": n, "iou": iou, "miou": acc.mean(), "class_given": class_given}


def upsample_masks(mask: torch.Tensor, size: int) -> np.ndarray:
    """(B, R, R) class-index masks to (B, size, size) uint8, nearest (indices stay indices)."""
    if mask.shape[-1] != size:
        mask = torch.nn.functional.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")[:, 0]
    return mask.numpy().astype(np.uint8)
