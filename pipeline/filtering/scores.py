"""Every per-candidate score of `dpp generate`, in one place: the `Scores` the keep rules decide on (and
their manifest columns, both ways), mask sanity (target pixels, smallest fragment), the k-NN realism
distance (Realism) and the agreement of two labelers. Scores measure; rules.py decides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.errors import UsageError
from manifests.format.record import load_corpus
from manifests.format.schema import IGNORE


@dataclass(frozen=True)
class Scores:
    """What the rules look at, for one candidate; all of it is stored in the candidate's manifest row."""

    finite: bool
    target_pixels: int  # pixels of the target class(es), or of any non-background class without target
    min_fragment: int | None  # smallest non-background region in pixels (None: no object at all)
    uncertainty: float | None
    confidence: float | None = None
    realism: float | None = None

    def as_row(self) -> dict:
        """The manifest columns (and KEY.json `scores`) that store these scores; target_pixels and
        finite are stored through the mask's class fractions and the reject reason."""
        return {
            "label_uncertainty": self.uncertainty,
            "classifier_confidence": self.confidence,
            "realism_distance": self.realism,
            "min_fragment_pixels": self.min_fragment,
        }

    @classmethod
    def from_row(cls, row: dict, classes: list[str]) -> Scores:
        """The scores a manifest row stores (the inverse of as_row, with target_pixels from the class
        fractions): what `dpp refilter` decides on."""
        area = row["width"] * row["height"]
        fr = row["class_pixel_fraction"]
        targets = row["target_classes"] or []
        idx = [classes.index(t) for t in targets] if targets else range(1, len(classes))
        return cls(
            finite=row["reject_reason"] != "non_finite",
            target_pixels=int(round(sum(fr[i] for i in idx) * area)),
            min_fragment=row["min_fragment_pixels"],
            uncertainty=row["label_uncertainty"],
            confidence=row["classifier_confidence"],
            realism=row["realism_distance"],
        )


def target_pixels(mask: np.ndarray, targets: list[int]) -> int:
    """Pixels of the target classes; with no target, of every class but background (0) and ignore."""
    if targets:
        return int(np.isin(mask, targets).sum())
    return int(((mask != 0) & (mask != IGNORE)).sum())


def min_fragment(mask: np.ndarray) -> int | None:
    """Size of the smallest 4-connected region of one non-background class (None if there is none)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    seen[(mask == 0) | (mask == IGNORE)] = True
    smallest = None
    for y0, x0 in zip(*np.nonzero(~seen), strict=True):
        if seen[y0, x0]:
            continue
        cls, size, stack = mask[y0, x0], 0, [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and mask[ny, nx] == cls:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        smallest = size if smallest is None else min(smallest, size)
    return smallest


def knn_distance(
    queries: np.ndarray, reference: np.ndarray, k: int = 3, exclude_self: bool = False
) -> np.ndarray:
    """Mean Euclidean distance of each query embedding to its k nearest reference embeddings."""
    d = np.sqrt(np.maximum(((queries[:, None, :] - reference[None, :, :]) ** 2).sum(-1), 0.0))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    k = min(k, reference.shape[0] - int(exclude_self))
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def agreement(mask: np.ndarray, other: np.ndarray, classes: list[int]) -> float | None:
    """IoU of the pixels two labelers give the target classes, over pixels neither ignores (IGNORE); None
    when neither gives a target any pixel."""
    valid = (mask != IGNORE) & (other != IGNORE)
    a = np.isin(mask, classes) & valid
    b = np.isin(other, classes) & valid
    union = int((a | b).sum())
    return None if union == 0 else round(float((a & b).sum()) / union, 6)


# --- realism: distance to real images in the evaluation network's features --------------------------

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
    path: str | None = None  # the real corpus's folder (as given), recorded beside its id

    def score(self, images: np.ndarray) -> np.ndarray:
        from pipeline.evaluation.evalnet import embed

        return knn_distance(embed(self.net, self.cfg, images)[0], self.reference, REALISM_K)

    def reference_quantiles(self) -> dict:
        """Real-to-real k-NN distances (each real image left out of its own neighbours): a scale for
        --max-realism-distance."""
        d = knn_distance(self.reference, self.reference, REALISM_K, exclude_self=True)
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
    return Realism(record["corpus_id"], embed(net, cfg, np.stack(images))[0], net, cfg, str(corpus))
