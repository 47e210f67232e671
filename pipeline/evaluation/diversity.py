"""Diversity of a corpus per generation: the Vendi score of its images in the evaluation network's space.

The Vendi score (Friedman & Dieng, 2023) of n embeddings is exp(-sum_i l_i log l_i), l the eigenvalues
of K / n, K the n x n cosine-similarity kernel. It is an effective number of distinct samples: 1 for n
copies of one image, n for n mutually orthogonal embeddings, k for k equal groups of orthogonal
vectors; it does not change when a row is scaled. Why this figure: it needs no reference set and no
bins (it is the entropy of the similarity spectrum, the "diversity" that predicts the next
generation's quality in the collapse literature), and it reads as a count.

Its ceiling is min(n, D) (D = 64 features for the shipped network), and it grows with n on small sets,
so generations are compared on the same number of images: the first MAX_IMAGES kept samples of each
generation by key order (keys are seeded and in a mix already shuffled, so the first ones by key are an
arbitrary, repeatable subset; reading them is cheap).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from manifests.errors import DppError, first_line
from manifests.format.layout import SHARDS_DIR, manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.storage.reader import decode_png, tar_members
from pipeline.evaluation.evalnet import embed, load_evalnet
from pipeline.models import SHIPPED_EVALNET

MAX_IMAGES = 1000  # images per generation the figure is computed on (the first ones by key)
IMAGE_SIZE = 32  # the shipped evaluation networks were trained on 32x32 toy-world images


def vendi_score(embeddings: np.ndarray) -> float:
    """The Vendi score of the rows of an (n, d) matrix under the cosine-similarity kernel."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings of shape {x.shape} are not allowed; give a non-empty (n, d) matrix")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"row {int(np.argmin(norms))} is all zeros; its cosine similarity is undefined")
    z = x / norms[:, None]
    n, d = z.shape
    # K / n = Z Z^T / n has the same non-zero eigenvalues as Z^T Z / n: use the smaller of the two
    small = z.T @ z if d < n else z @ z.T
    eig = np.linalg.eigvalsh(small / n)
    eig = eig[eig > 1e-12]  # zeros (and rounding noise around them) add nothing to the entropy
    eig = eig / eig.sum()
    return float(np.exp(-(eig * np.log(eig)).sum()))


def _kept_rows(corpus: Path) -> tuple[dict, list[dict]]:
    record = load_corpus(corpus)
    rows = []
    for s in record["shards"]:
        rows += [r for r in read_manifest(manifest_path(corpus, s["name"])).to_pylist() if r["kept"]]
    return record, rows


def _images(corpus: Path, rows: list[dict]) -> np.ndarray:
    """The images of the given manifest rows, in the rows' order, read from their shards."""
    by_shard: dict[str, set[str]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], set()).add(r["key"])
    png = {}
    for shard, keys in sorted(by_shard.items()):
        found = tar_members(Path(corpus) / SHARDS_DIR / f"{shard}.tar", keys)
        png.update({k: m["png"] for k, m in found.items()})
    missing = [r["key"] for r in rows if r["key"] not in png]
    if missing:
        raise DppError(f"{corpus}: sample {missing[0]} is in its manifest but not in its shard")
    images = []
    for r in rows:
        try:
            images.append(decode_png(png[r["key"]], "RGB"))
        except (OSError, ValueError) as e:  # Pillow's errors on a damaged PNG
            raise DppError(f"{corpus}: sample {r['key']}'s image cannot be read: {first_line(e)}") from None
    return np.stack(images)


def first_kept_images(corpus: Path, n: int) -> np.ndarray:
    """The images of a corpus's first `n` kept samples by key (every generation together)."""
    _, rows = _kept_rows(Path(corpus))
    return _images(Path(corpus), sorted(rows, key=lambda r: r["key"])[:n])


@lru_cache(maxsize=4)
def _evalnet(folder: str):
    return load_evalnet(Path(folder))


def corpus_diversity(corpus: Path, evalnet: Path = SHIPPED_EVALNET, max_images: int = MAX_IMAGES) -> dict:
    """Each generation's Vendi score in the embedding of the evaluation network at `evalnet`, on its first
    `max_images` kept samples by key. A corpus the network cannot judge (other classes, other image
    size) gets a `note` saying why and no figures."""
    record, rows = _kept_rows(Path(corpus))
    net, cfg = _evalnet(str(evalnet))
    out = {
        "measure": "vendi",
        "space": Path(evalnet).name,  # the evaluation network's folder name
        "max_images": max_images,
        "chosen": "first kept samples of each generation by key",
        "per_generation": {},
        "note": None,
    }
    classes = list(record["classes"])
    if classes != list(cfg.classes):
        out["note"] = (
            f"not available: the corpus's classes ({', '.join(classes)}) are not the evaluation network's "
            f"({', '.join(cfg.classes)})"
        )
        return out
    sizes = sorted({(r["width"], r["height"]) for r in rows})
    if sizes and sizes != [(IMAGE_SIZE, IMAGE_SIZE)]:
        w, h = sizes[0] if sizes[0] != (IMAGE_SIZE, IMAGE_SIZE) else sizes[-1]
        out["note"] = (
            f"not available: the corpus holds {w}x{h} images; the evaluation network judges "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}"
        )
        return out
    per: dict[int, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["key"]):
        per.setdefault(int(r["generation"]), []).append(r)
    for g in sorted(per):
        chosen = per[g][:max_images]
        features, _ = embed(net, cfg, _images(Path(corpus), chosen))
        out["per_generation"][str(g)] = {"vendi": round(vendi_score(features), 4), "images": len(chosen)}
    return out
