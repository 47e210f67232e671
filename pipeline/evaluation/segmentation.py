"""`dpp eval-seg`: train the fixed small segmentation network on some corpora, test it on a real one.

The network and its schedule are the evaluation network's (pipeline/evaluation/evalnet.py: a 3-stage CNN
segmenter, AdamW, cosine schedule, flips) with a fixed number of optimizer steps, the same for every
training set, so rows of a comparison differ only in their data.

`--self-train UNLABELED` is the baseline a user with a few annotations and a pile of unlabeled images
would pick instead of generating data (a simple honest version of FixMatch-style self-training): train on
the annotated corpora (the teacher), pseudo-label the unlabeled images, keep the pixels whose predicted
class has probability >= `--pseudo-threshold` (the rest are ignore), and train a fresh network on the
annotated images plus the pseudo-labeled ones (the student), with the same steps. `--tags` gives it the
image-level class tags a class-conditional generator learned from: each unlabeled image's pseudo-labels
are limited to background and the classes its tags name (the tags are the classes present in the
corpus's own masks; nothing else of the masks is read).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from manifests.errors import UsageError
from manifests.format.record import load_corpus
from manifests.format.schema import IGNORE
from manifests.storage.reader import iter_samples
from pipeline.diffusion.common import from_uint8
from pipeline.evaluation.evalnet import EvalNetConfig, heldout_metrics, train_evalnet

SEG_CONFIG = EvalNetConfig(steps=2000, batch_size=32, lr=2e-3, width=16)


def _load(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = None
    images, masks = [], []
    for p in paths:
        rec = load_corpus(p)
        if classes is None:
            classes = list(rec["classes"])
        elif rec["classes"] != classes:
            raise UsageError(f"corpus {p} has classes {rec['classes']}, not {classes} like the others")
        for s in iter_samples(p):
            images.append(s.image)
            masks.append(s.mask)
    if not images:
        raise UsageError(f"corpora {', '.join(map(str, paths))} hold no samples")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UsageError(f"images of different sizes {sorted(shapes)}; eval-seg needs one size")
    return np.stack(images), np.stack(masks), classes


def eval_seg(
    train: list[Path],
    test: Path,
    steps: int = SEG_CONFIG.steps,
    seed: int = 0,
    progress=None,
    self_train: Path | None = None,
    threshold: float = 0.9,
    tags: bool = False,
) -> dict:
    xi, xm, classes = _load(train)
    ti, tm, test_classes = _load([test])
    if test_classes != classes:
        raise UsageError(f"--test {test} has classes {test_classes}, the training corpora {classes}")
    if xi.shape[1:] != ti.shape[1:]:
        raise UsageError(
            f"training images are {xi.shape[2]}x{xi.shape[1]}, test images {ti.shape[2]}x{ti.shape[1]}"
        )
    cfg = replace(SEG_CONFIG, classes=tuple(classes), steps=steps, seed=seed)
    extra: dict = {}
    if self_train is not None:
        if not 0.0 < threshold <= 1.0:
            raise UsageError(f"--pseudo-threshold {threshold} is not allowed; it must be in (0.0, 1.0]")
        ui, um, u_classes = _load([self_train])
        if u_classes != classes:
            raise UsageError(
                f"--self-train {self_train} has classes {u_classes}, the training corpora {classes}"
            )
        if ui.shape[1:] != xi.shape[1:]:
            raise UsageError(
                f"--self-train images are {ui.shape[2]}x{ui.shape[1]}, "
                f"training images {xi.shape[2]}x{xi.shape[1]}"
            )
        teacher = train_evalnet(xi, xm, cfg, progress)
        allowed = _tag_mask(um, len(classes)) if tags else None
        pseudo = pseudo_labels(teacher, ui, threshold, allowed)
        extra = {
            "self_train": str(self_train),
            "pseudo_threshold": threshold,
            "tags": tags,
            "unlabeled_images": len(ui),
            "pseudo_labeled_share": float((pseudo != IGNORE).mean()),
            "teacher_miou": heldout_metrics(teacher, cfg, ti, tm)["miou"],
        }
        xi, xm = np.concatenate([xi, ui]), np.concatenate([xm, pseudo])
    net = train_evalnet(xi, xm, cfg, progress)
    m = heldout_metrics(net, cfg, ti, tm)
    return {
        "train": [str(p) for p in train],
        "test": str(test),
        "train_images": len(xi),
        "test_images": len(ti),
        "steps": steps,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),  # the last digits depend on it (docs/results.md)
        "iou": m["pixel_iou"],
        "miou": m["miou"],
        **extra,
    }


def _tag_mask(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, K) bool: the classes each image may be pseudo-labeled with: background and its tags (the
    classes present in its mask; image-level information only)."""
    allowed = np.zeros((len(masks), n_classes), bool)
    allowed[:, 0] = True
    for i, m in enumerate(masks):
        present = np.unique(m)
        allowed[i, present[present < n_classes]] = True
    return allowed


@torch.no_grad()
def pseudo_labels(
    net, images: np.ndarray, threshold: float, allowed: np.ndarray | None = None, batch_size: int = 256
) -> np.ndarray:
    """(N, H, W) uint8 pseudo-masks of uint8 images: the network's most probable class where its
    probability is at least `threshold`, IGNORE elsewhere; with `allowed` (N, K), classes an image may not
    hold are ruled out before the probabilities are renormalised."""
    out = []
    for i in range(0, len(images), batch_size):
        logits = net(from_uint8(images[i : i + batch_size]))[1]
        if allowed is not None:
            block = torch.from_numpy(~allowed[i : i + batch_size])[:, :, None, None]
            logits = logits.masked_fill(block, float("-inf"))
        prob, cls = logits.softmax(1).max(1)
        cls[prob < threshold] = IGNORE
        out.append(cls.numpy().astype(np.uint8))
    return np.concatenate(out)
