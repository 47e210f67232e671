"""Noise-aware classifiers bound to a noise schedule: train one on an annotated real corpus, load one.

The classifier reads noisy images x_t, so it is only meaningful under the noise schedule it was
trained with: it records the generator's schedule (and, for provenance, the generator's id) and
refuses a generator whose schedule differs. The weights of the generator do not matter to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labelers import classifier as clf
from manifests.errors import UsageError
from manifests.format.record import load_corpus
from manifests.format.schema import IGNORE
from manifests.storage.reader import iter_samples
from pipeline.diffusion.common import from_uint8
from pipeline.diffusion.pixel import Generator, check_image_size
from pipeline.models import SHIPPED_CLASSIFIERS as SHIPPED  # --classifier toyworld

BACKGROUND = "background"
REPORT_TIMESTEPS = (0, 100, 300, 600)  # held-out accuracy is measured with images noised at these t


@dataclass(frozen=True)
class Classifier:
    model: clf.NoisyClassifier
    info: dict  # classifier.json: config, classes, target classes, noise schedule, generator, report
    id: str
    path: Path

    @property
    def classes(self) -> list[str]:
        """The target classes, in logit order (the corpus's classes without the background)."""
        return list(self.info["target_classes"])


def alphas_cumprod(gen: Generator) -> torch.Tensor:
    """The generator's training noise schedule, ab_t for t = 0 .. num_train_timesteps - 1."""
    n = int(gen.scheduler_config.get("num_train_timesteps", 1000))
    return gen.scheduler("ddpm", n).alphas_cumprod.detach().cpu().float()


def noise_schedule(gen: Generator) -> dict:
    """What identifies a schedule: its length, its name and a hash of ab_t written to 6 decimals."""
    ab = alphas_cumprod(gen).double().numpy()
    text = ",".join(f"{v:.6f}" for v in ab)
    return {
        "num_train_timesteps": len(ab),
        "beta_schedule": str(gen.scheduler_config.get("beta_schedule", "")),
        "alphas_cumprod_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def train_classifier(
    gen: Generator,
    corpus: Path,
    out: Path,
    steps: int = clf.ClassifierConfig.steps,
    seed: int = 0,
    holdout: float = 0.1,
    progress: Callable[[int, float], None] | None = None,
    min_pixels: int = 1,
    dense_weight: float = 0.0,
) -> dict:
    """`dpp train-classifier`: fit on the corpus minus a seeded held-out share, report held-out
    accuracy at several noise levels, save to `out`. Returns the report (also in classifier.json).
    `dense_weight` > 0 also trains on the corpus's masks (labelers/classifier.py `fit`)."""
    # 1. check inputs; nothing is written before all of them pass
    out, corpus = Path(out), Path(corpus)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not an empty folder")
    if steps < 1:
        raise UsageError(f"--steps {steps} is not allowed; it must be positive")
    if not 0 < holdout < 1:
        raise UsageError(f"holdout {holdout} is not allowed; it must be between 0 and 1 (exclusive)")
    if min_pixels < 1:
        raise UsageError(f"min_pixels {min_pixels} is not allowed; it must be positive")
    if not 0 <= dense_weight <= 100:
        raise UsageError(f"--dense-loss {dense_weight} is not allowed; it must be between 0 and 100")
    record = load_corpus(corpus)
    classes = list(record["classes"])
    targets = [c for c in classes if c != BACKGROUND]
    if not targets:
        raise UsageError(
            f"--data {corpus} has no foreground class to predict (classes: {', '.join(classes)})"
        )
    # 2. read images and per-class presence
    index = [classes.index(c) for c in targets]
    keys, images, presence, masks = [], [], [], []
    to_dense = np.full(256, IGNORE, np.uint8)  # corpus class index -> 0 background, k + 1 target k
    for i, c in enumerate(classes):
        to_dense[i] = 0 if c == BACKGROUND else targets.index(c) + 1
    for s in iter_samples(corpus):
        check_image_size(gen, s.image, f"--data {corpus}")
        counts = np.bincount(s.mask.ravel(), minlength=256)
        keys.append(s.key)
        images.append(s.image)
        presence.append(counts[index] >= min_pixels)
        if dense_weight > 0:
            masks.append(to_dense[s.mask])
    if len(keys) < 2:
        raise UsageError(f"--data {corpus} holds {len(keys)} image(s); a classifier needs at least 2")
    # 3. a seeded held-out split of the sorted keys
    order = np.argsort(keys, kind="stable")
    perm = order[np.random.default_rng(seed).permutation(len(keys))]
    n_hold = min(len(keys) - 1, max(1, round(holdout * len(keys))))
    held, train = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    x, y = np.stack(images), np.stack(presence)
    channels = 3
    if gen.text_conditioned:  # a latent model is guided on its latents: learn those
        x = torch.cat([gen.encode(from_uint8(x[i : i + 32])).float().cpu() for i in range(0, len(x), 32)])
        channels = x.shape[1]
    # 4. fit on the generator's schedule, on the generator's device
    ab = alphas_cumprod(gen)
    cfg = clf.ClassifierConfig(
        classes=tuple(targets), steps=steps, seed=seed, in_channels=channels, dense_weight=dense_weight
    )
    m = np.stack(masks)[train] if dense_weight > 0 else None
    model = clf.fit(cfg, x[train], y[train], ab, progress=progress, device=gen.device, masks=m)
    # 5. held-out accuracy at several noise levels, then save (classifier.json last)
    report = {
        "generator": gen.id,
        "classes": targets,
        "train_images": len(train),
        "heldout_images": len(held),
        "heldout_accuracy": [
            clf.accuracy(model, x[held], y[held], ab, t, seed) for t in REPORT_TIMESTEPS if t < len(ab)
        ],
    }
    meta = {
        "classes": classes,
        "target_classes": targets,
        "min_pixels": min_pixels,
        "generator_id": gen.id,
        "image_size": list(gen.image_shape[1:]),
        "noise_schedule": noise_schedule(gen),
        "corpus_id": record["corpus_id"],
        "seed": seed,
        "holdout": holdout,
        "train_images": len(train),
        "heldout_images": len(held),
        "heldout_keys": sorted(keys[i] for i in held),
        "heldout_accuracy": report["heldout_accuracy"],
    }
    report["classifier"] = clf.save(model, out, meta)
    return report


def load_classifier(path: Path, gen: Generator) -> Classifier:
    """Load a saved classifier for use with `gen`; refuse one trained under another noise schedule
    or at another image size. The model is moved to the generator's device. `toyworld` names the
    shipped classifier."""
    path = SHIPPED.get(str(path), Path(path)) if not Path(path).exists() else Path(path)
    if not (path / clf.INFO_FILE).is_file():
        raise UsageError(f"--classifier {path} is not a classifier folder (no {clf.INFO_FILE})")
    try:
        model, info = clf.load(path)
        theirs = info["noise_schedule"]
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UsageError(f"--classifier {path} is not a valid classifier folder ({e})") from e
    ours = noise_schedule(gen)
    if theirs != ours:
        raise UsageError(
            f"--classifier {path} was trained for noise schedule {theirs['beta_schedule']}/"
            f"{theirs['num_train_timesteps']} (generator {info.get('generator_id')}), but generator "
            f"{gen.id} uses {ours['beta_schedule']}/{ours['num_train_timesteps']}"
            f"{'' if theirs['beta_schedule'] != ours['beta_schedule'] else ' with other betas'}; "
            "train a classifier for this generator"
        )
    size = list(gen.image_shape[1:])
    if info.get("image_size", size) != size:
        raise UsageError(
            f"--classifier {path} was trained on {info['image_size'][1]}x{info['image_size'][0]} images, "
            f"generator {gen.id} makes {size[1]}x{size[0]}"
        )
    space = gen.latent_shape[0] if gen.text_conditioned else gen.image_shape[0]
    if model.cfg.in_channels != space:
        raise UsageError(
            f"--classifier {path} reads {model.cfg.in_channels}-channel inputs, but generator {gen.id} "
            f"denoises {space}-channel {'latents' if space != 3 else 'images'}; train a classifier for it"
        )
    model = model.to(gen.device).requires_grad_(False)
    return Classifier(model, info, clf.classifier_id(path), path)
