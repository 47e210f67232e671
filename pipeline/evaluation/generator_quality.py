"""`dpp eval-generator`: how close a generator's samples are to a real corpus, in the feature space of
the fixed evaluation network: k-NN precision and recall (Kynkaanniemi et al. 2019), Frechet distance,
the share of samples in which each class appears, and shape purity (does each drawn object read as ONE
shape?), each beside the same figure on the real images. For a class-conditional generator, also the
share of samples whose objects are mostly the class they were drawn as."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from manifests.errors import UsageError
from pipeline.evaluation.evalnet import EvalNet, EvalNetConfig, embed, predicted_presence

if TYPE_CHECKING:
    from pipeline.diffusion.pixel import Generator


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
    shape_purity_generated: float  # mean over objects of the share of its pixels in its majority class
    shape_purity_real: float
    objects_generated: int  # objects (connected non-background regions >= the size floor) found
    objects_real: int
    object_share_generated: dict[str, float]  # share of objects whose majority class is each class
    object_share_real: dict[str, float]
    drawn_as_asked: float | None = None  # class-conditional: share of samples mostly of the asked class

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


OBJECT_MIN_PIXELS = 12  # at 32x32; scaled with the image area


def object_purity(masks: np.ndarray, n_classes: int, min_pixels: int = OBJECT_MIN_PIXELS) -> np.ndarray:
    """The objects of predicted masks (N, H, W): each 4-connected region of non-background pixels of at
    least `min_pixels` (scaled from 32x32 to the image area). Returns (M, 2): per object, its purity (the
    share of its pixels in its majority class) and that class."""
    floor = max(1, round(min_pixels * masks.shape[1] * masks.shape[2] / 1024))
    rows = []
    for m in masks:
        regions, n = ndimage.label((m != 0) & (m < n_classes))
        for r in range(1, n + 1):
            px = m[regions == r]
            if len(px) < floor:
                continue
            counts = np.bincount(px, minlength=n_classes)
            rows.append((counts.max() / len(px), int(counts.argmax())))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def drawn_as_asked(masks: np.ndarray, asked: list[int]) -> float:
    """Share of samples whose most frequent non-background predicted class is the class asked for."""
    hits = 0
    for m, a in zip(masks, asked, strict=True):
        counts = np.bincount(m.ravel(), minlength=a + 1)
        counts[0] = 0
        hits += counts.sum() > 0 and int(counts.argmax()) == a
    return hits / max(1, len(asked))


def _object_shares(objects: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    n = max(1, len(objects))
    return {c: float((objects[:, 1] == i + 1).sum() / n) for i, c in enumerate(names)}


def evaluate(
    net: EvalNet,
    cfg: EvalNetConfig,
    real: np.ndarray,
    generated: np.ndarray,
    k: int = 3,
    asked: list[str] | None = None,
) -> GeneratorQuality:
    """`asked`: the class each generated sample was drawn as (class-conditional generators)."""
    fr, mr = embed(net, cfg, real)
    fg, mg = embed(net, cfg, generated)
    precision, recall = precision_recall(fr, fg, k)
    pr, pg = predicted_presence(net, cfg, real), predicted_presence(net, cfg, generated)
    objects = cfg.classes[1:]
    n_classes = len(cfg.classes)
    obj_r, obj_g = object_purity(mr, n_classes), object_purity(mg, n_classes)
    for name in asked or ():
        if name not in cfg.classes:
            raise UsageError(f"class {name!r} is not one the evaluation network knows ({', '.join(objects)})")
    return GeneratorQuality(
        precision=precision,
        recall=recall,
        frechet_distance=frechet_distance(fr, fg),
        k=k,
        n_real=len(real),
        n_generated=len(generated),
        class_share_generated={c: float(pg[:, i].mean()) for i, c in enumerate(objects)},
        class_share_real={c: float(pr[:, i].mean()) for i, c in enumerate(objects)},
        shape_purity_generated=float(obj_g[:, 0].mean()) if len(obj_g) else 0.0,
        shape_purity_real=float(obj_r[:, 0].mean()) if len(obj_r) else 0.0,
        objects_generated=len(obj_g),
        objects_real=len(obj_r),
        object_share_generated=_object_shares(obj_g, objects),
        object_share_real=_object_shares(obj_r, objects),
        drawn_as_asked=drawn_as_asked(mg, [cfg.classes.index(c) for c in asked]) if asked else None,
    )


def evaluate_generator(
    gen: Generator,
    real_corpus: Path,
    *,
    n: int,
    seed: int,
    scheduler: str | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    classes: str | None = None,
    cfg_scale: float | None = None,
    k: int = 3,
    quiet: bool = False,
) -> GeneratorQuality:
    """`dpp eval-generator`: `n` samples of `gen` (sample i seeded sample_seed(seed, 0, i); a
    class-conditional generator draws the class plan `classes`) against the first `n` images of the
    corpus `real_corpus`, in the evaluation network's feature space. The sampler defaults to
    DEFAULT_SCHEDULER with its DEFAULT_STEPS."""
    from tqdm import tqdm

    from manifests.storage.reader import iter_samples
    from pipeline.diffusion.pixel import sample
    from pipeline.diffusion.samplers import DEFAULT_SCHEDULER, default_steps
    from pipeline.diffusion.sampling import DEFAULT_CFG_SCALE, SampleRequest, sample_classes
    from pipeline.evaluation.evalnet import load_evalnet
    from pipeline.seeds import sample_seed

    scheduler = scheduler or DEFAULT_SCHEDULER
    steps = default_steps(scheduler, steps)
    net, cfg = load_evalnet()
    real = np.stack([s.image for s in iter_samples(real_corpus, limit=n)])
    if real.shape[1:] != (*gen.image_shape[1:], 3):
        raise UsageError(
            f"--real images are {real.shape[2]}x{real.shape[1]}, the generator makes "
            f"{gen.image_shape[2]}x{gen.image_shape[1]}"
        )
    if gen.text_conditioned:  # prompts name the judge's classes in turn (default: all of them)
        from pipeline.diffusion.sampling import run

        plan = classes or ",".join(cfg.classes[1:])
        req = SampleRequest(n=n, seed=seed, steps=steps, scheduler=scheduler, batch_size=batch_size,
                            classes=plan, cfg_scale=cfg_scale)  # fmt: skip
        drawn = run(gen, req)
        return evaluate(net, cfg, real, drawn.images, k=k, asked=drawn.classes)
    seeds = [sample_seed(seed, 0, i) for i in range(n)]
    asked = sample_classes(gen, SampleRequest(n=n, seed=seed, classes=classes, cfg_scale=cfg_scale))
    bar = tqdm(total=n, desc="sampling", unit="sample", disable=quiet)
    fake = sample(
        gen,
        seeds,
        scheduler,
        steps,
        batch_size,
        progress=bar.update,
        classes=asked,
        cfg_scale=DEFAULT_CFG_SCALE if cfg_scale is None else cfg_scale,
    )
    bar.close()
    return evaluate(net, cfg, real, fake, k=k, asked=asked)


def format_quality(q: GeneratorQuality, generator: str, real: Path) -> str:
    """The report of `dpp eval-generator`: generator id `generator` against the corpus `real`."""
    lines = [
        f"generator {generator}: {q.n_generated} samples vs {q.n_real} real ({real})",
        f"precision (k={q.k})   {q.precision:.3f}",
        f"recall    (k={q.k})   {q.recall:.3f}",
        f"Frechet distance    {q.frechet_distance:.3f}",
        f"shape purity        {q.shape_purity_generated:.3f} ({q.objects_generated} objects; real images "
        f"{q.shape_purity_real:.3f}, {q.objects_real} objects)",
    ]
    if q.drawn_as_asked is not None:
        lines.append(
            f"drawn as asked      {q.drawn_as_asked:.3f} (samples mostly of the class they were drawn as)"
        )
    lines.append(f"{'class':<12} {'shows class':>12} {'real':>8} {'objects':>9} {'real':>8}")
    for c in q.class_share_generated:
        lines.append(
            f"{c:<12} {q.class_share_generated[c]:>12.3f} {q.class_share_real[c]:>8.3f} "
            f"{q.object_share_generated[c]:>9.3f} {q.object_share_real[c]:>8.3f}"
        )
    return "\n".join(lines)
