"""`dpp eval-generator`: how close a generator's samples are to a real corpus, in the feature space of
the fixed evaluation network: k-NN precision and recall (Kynkaanniemi et al. 2019), Frechet distance,
and the share of samples in which each class appears, beside the same share in the real data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from manifests.errors import UsageError
from pipeline.evalnet import EvalNet, EvalNetConfig, embed, predicted_presence


@dataclass(frozen=True)
class GeneratorQuality:
    precision: float  # share of generated samples inside the real manifold
    recall: float  # share of real samples inside the generated manifold
    frechet_distance: float
    k: int
    n_real: int
    n_generated: int
    class_share_generated: dict[str, float]
    class_share_real: dict[str, float]

    def as_json(self) -> dict:
        return dict(self.__dict__)


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point."""
    d = _pairwise_sq(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def coverage(queries: np.ndarray, support: np.ndarray, radii: np.ndarray) -> float:
    """Share of queries that fall inside at least one support point's k-NN ball."""
    d = _pairwise_sq(queries, support)
    return float((d <= radii[None, :]).any(axis=1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    if min(len(real), len(fake)) <= k:
        raise UsageError(f"precision/recall with k={k} needs more than {k} real and generated samples")
    return coverage(fake, real, knn_radii(real, k)), coverage(real, fake, knn_radii(fake, k))


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula, our features)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    sa = _sqrtm_psd(ca)
    cross = _sqrtm_psd(sa @ cb @ sa)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(cross))


def evaluate(
    net: EvalNet, cfg: EvalNetConfig, real: np.ndarray, generated: np.ndarray, k: int = 3
) -> GeneratorQuality:
    fr, _ = embed(net, cfg, real)
    fg, _ = embed(net, cfg, generated)
    precision, recall = precision_recall(fr, fg, k)
    pr, pg = predicted_presence(net, cfg, real), predicted_presence(net, cfg, generated)
    objects = cfg.classes[1:]
    return GeneratorQuality(
        precision=precision,
        recall=recall,
        frechet_distance=frechet_distance(fr, fg),
        k=k,
        n_real=len(real),
        n_generated=len(generated),
        class_share_generated={c: float(pg[:, i].mean()) for i, c in enumerate(objects)},
        class_share_real={c: float(pr[:, i].mean()) for i, c in enumerate(objects)},
    )
