"""`dpp eval-seg`: train the fixed small segmentation network on some corpora, test it on a real one.

The network and its schedule are the evaluation network's (pipeline/evaluation/evalnet.py: a 3-stage CNN
segmenter, AdamW, cosine schedule, flips) with a fixed number of optimizer steps, the same for every
training set, so rows of a comparison differ only in their data.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from manifests.errors import UsageError
from manifests.format.record import load_corpus
from manifests.storage.reader import iter_samples
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
    train: list[Path], test: Path, steps: int = SEG_CONFIG.steps, seed: int = 0, progress=None
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
    net = train_evalnet(xi, xm, cfg, progress)
    m = heldout_metrics(net, cfg, ti, tm)
    return {
        "train": [str(p) for p in train],
        "test": str(test),
        "train_images": len(xi),
        "test_images": len(ti),
        "steps": steps,
        "seed": seed,
        "iou": m["pixel_iou"],
        "miou": m["miou"],
    }
