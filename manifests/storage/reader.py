"""Reading a corpus back: samples from its tar shards through webdataset, decoded to arrays."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from manifests.errors import DppError
from manifests.format.record import load_corpus
from manifests.format.schema import KEY_RE

MEMBERS = ("png", "seg.png", "json")


@dataclass(frozen=True)
class Sample:
    key: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 class indices, 255 = ignore
    meta: dict  # KEY.json


def decode_png(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert(mode), dtype=np.uint8)


def shard_paths(root: Path) -> list[str]:
    record = load_corpus(root)
    return [str(Path(root) / s["name"]) for s in record["shards"] if s["samples"] > 0]


def iter_samples(root: Path, limit: int | None = None) -> Iterator[Sample]:
    """Samples in shard order. Masks get their own decoder: webdataset's "rgb8" would make them RGB."""
    urls = shard_paths(root)
    if not urls:
        return
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for i, s in enumerate(ds):
        if limit is not None and i >= limit:
            return
        yield Sample(
            key=s["__key__"],
            image=decode_png(s["png"], "RGB"),
            mask=decode_png(s["seg.png"], "L"),
            meta=json.loads(s["json"]),
        )


def load_images(roots: list[Path]) -> np.ndarray:
    """All images of the given corpora as one (N, H, W, 3) uint8 array (they must share a size)."""
    images = [s.image for root in roots for s in iter_samples(root)]
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


def single_class_labels(roots: list[Path], classes: list[str]) -> np.ndarray:
    """One label per image of the given corpora, in load_images order, for a class-conditional generator:
    the index (0-based, background excluded) of the one class its mask shows, or len(classes) - 1 ("no
    class") where the mask shows none or several."""
    none = len(classes) - 1
    labels = []
    for root in roots:
        for s in iter_samples(root):
            present = [c for c in np.unique(s.mask) if 0 < c < len(classes)]
            labels.append(int(present[0]) - 1 if len(present) == 1 else none)
    return np.asarray(labels, dtype=np.int64)


def tar_members(tar: Path, keys: set[str] | None = None) -> dict[str, dict]:
    """The encoded members (png, seg.png, json, with __key__) of one shard tar, by key, optionally only
    `keys`; {} for a missing tar. For copying samples byte for byte (refilter, mix). A member whose name
    is not KEY.ext with KEY matching [A-Za-z0-9_-]+ (say ../evil.png or /abs.png) is refused."""
    if not Path(tar).exists():
        return {}
    out = {}
    for s in wds.WebDataset([str(tar)], shardshuffle=False, empty_check=False):
        key = s["__key__"]
        if not KEY_RE.fullmatch(key):
            raise DppError(
                f"{tar}: member {key!r} is not allowed; members are KEY.png, KEY.seg.png and KEY.json "
                "with KEY matching [A-Za-z0-9_-]+"
            )
        if keys is None or key in keys:
            lacking = [f"{key}.{m}" for m in MEMBERS if m not in s]
            if lacking:
                raise DppError(f"{tar}: sample {key} lacks member(s) {', '.join(lacking)}")
            out[key] = {"__key__": key, **{m: s[m] for m in MEMBERS}}
    return out
