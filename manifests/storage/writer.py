"""Shard writing: WebDataset tar shards plus their Parquet manifests, each file written whole.

A shard is written to a temporary name, fsynced and renamed; its manifest is written after it.
Tar members carry a fixed mtime, owner and mode, so the same samples give the same bytes. Whole
corpora built in one go are staged.py's.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from manifests import faults
from manifests.format.layout import (
    MANIFEST_DIR,
    SHARDS_DIR,
    TMP_SUFFIX,
    fsync_dir,
    manifest_path,
    sha256_file,
    shard_name,
)
from manifests.format.record import write_manifest
from manifests.format.schema import make_row, rows_to_table

TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed so identical content gives identical bytes
TAR_USER = "dpp"
TAR_MODE = 0o444
MAX_SHARD_SIZE = 1_000_000
REJECTED_DIR = "rejected"  # rejected/shard-NNNNNN.tar: rejected candidates, with --keep-rejected


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or single-channel (H, W) uint8 array."""
    if array.dtype != np.uint8:
        raise ValueError(f"PNG arrays must be uint8, got {array.dtype}")
    mode = "RGB" if array.ndim == 3 else "L"
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def class_stats(mask: np.ndarray, classes: list[str]) -> tuple[list[str], list[float]]:
    """Classes present in a mask and the fraction of all pixels each covers (255 counts as no class)."""
    counts = np.bincount(mask.ravel(), minlength=256)[: len(classes)]
    fractions = (counts / mask.size).tolist()
    return [c for c, n in zip(classes, counts, strict=True) if n > 0], fractions


@dataclass(frozen=True)
class ShardInfo:
    name: str  # path relative to the corpus root, e.g. shards/shard-000000.tar
    sha256: str
    bytes: int
    samples: int
    rejected: dict | None = None  # the shard's rejected/ tar record, when rejected candidates are kept

    def as_json(self) -> dict:
        d = {"name": self.name, "sha256": self.sha256, "bytes": self.bytes, "samples": self.samples}
        return d if self.rejected is None else {**d, "rejected": self.rejected}


def _tar_writer(fileobj) -> wds.TarWriter:
    return wds.TarWriter(
        fileobj, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, encoder=False, mtime=TAR_MTIME
    )


def _finish(tar: wds.TarWriter, fileobj) -> None:
    tar.close()
    fileobj.flush()
    os.fsync(fileobj.fileno())
    fileobj.close()


class ShardWriter:
    """Writes one shard: kept samples go to the tar and the manifest, rejected ones to the manifest only
    (and, with `keep_rejected`, their image and mask to rejected/shard-NNNNNN.tar for `dpp refilter`)."""

    def __init__(
        self,
        root: Path,
        index: int,
        classes: list[str],
        config_hash: str,
        metadata: dict,
        keep_rejected: bool = False,
        encode_threads: int = 0,
    ):
        self.root = Path(root)
        self.name = shard_name(index)
        self.classes = list(classes)
        self.config_hash = config_hash
        self.metadata = metadata
        (self.root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
        self.tar_path = self.root / SHARDS_DIR / f"{self.name}.tar"
        self.tmp_path = self.tar_path.with_name(self.tar_path.name + TMP_SUFFIX)
        self._file = open(self.tmp_path, "wb")
        self._tar = _tar_writer(self._file)
        self.rejected_path = self.root / REJECTED_DIR / f"{self.name}.tar" if keep_rejected else None
        self._rfile = self._rtar = None
        self.rows: list[dict] = []
        self.kept = 0
        self.rejected_kept = 0
        self._keys: set[str] = set()
        # encode_threads > 0: PNG encoding runs in that many threads while the caller goes on (rendering
        # the next batch); samples are still written in the order they were given, so the bytes are the same
        self._pool = ThreadPoolExecutor(encode_threads, "dpp-png") if encode_threads > 0 else None
        self._queue: deque[tuple[Future, dict, str | None]] = deque()
        self._depth = 4 * max(1, encode_threads)

    def _encode(
        self, key: str, image: np.ndarray, mask: np.ndarray, meta: dict, png: bytes | None = None
    ) -> tuple[dict, dict]:
        if image.shape[:2] != mask.shape:
            raise ValueError(f"sample {key}: image {image.shape[:2]} and mask {mask.shape} differ in size")
        present, fractions = class_stats(mask, self.classes)
        png, seg = png if png is not None else encode_png(image), encode_png(mask)
        meta = {"key": key, "classes_present": present, **meta}
        js = (json.dumps(meta, sort_keys=True) + "\n").encode()
        cols = dict(
            key=key,
            classes_present=present,
            class_pixel_fraction=fractions,
            width=int(mask.shape[1]),
            height=int(mask.shape[0]),
            image_sha256=sha256_bytes(png),
            mask_sha256=sha256_bytes(seg),
            json_sha256=sha256_bytes(js),
            origin=meta["origin"],
            generation=meta["generation"],
        )
        return {"__key__": key, "png": png, "seg.png": seg, "json": js}, cols

    def add(
        self, key: str, image: np.ndarray, mask: np.ndarray, meta: dict, png: bytes | None = None, **row
    ) -> None:
        """Write one kept sample. `meta` becomes KEY.json; `row` fills the other manifest columns. `png`:
        the image's PNG bytes where they already exist (relabel copies them byte for byte)."""
        self._submit(key, image, mask, meta, row, None, png)

    def reject(
        self,
        key: str,
        reason: str,
        image: np.ndarray,
        mask: np.ndarray,
        meta: dict,
        png: bytes | None = None,
        **row,
    ) -> None:
        """Record a rejected candidate: a manifest row (kept = false, with its reason), nothing in the
        shard; its image and mask go to the rejected tar when the writer keeps rejected candidates."""
        self._submit(key, image, mask, meta, row, reason, png)

    def _submit(self, key: str, image, mask, meta: dict, row: dict, reason: str | None, png=None) -> None:
        self._claim(key)
        if self._pool is None:
            members, cols = self._encode(key, image, mask, meta, png)
            self._put(members, {**cols, **row}, reason)
            return
        self._queue.append((self._pool.submit(self._encode, key, image, mask, meta, png), row, reason))
        while len(self._queue) > self._depth or (self._queue and self._queue[0][0].done()):
            self._write_next()

    def _write_next(self) -> None:
        future, row, reason = self._queue.popleft()
        members, cols = future.result()
        self._put(members, {**cols, **row}, reason)

    def add_encoded(self, members: dict, row: dict) -> dict:
        """Write one kept sample from already encoded members (refilter copies them byte for byte)."""
        self._claim(row["key"])
        return self._put(members, row, None)

    def reject_encoded(self, members: dict | None, row: dict, reason: str) -> dict:
        self._claim(row["key"])
        return self._put(members, row, reason)

    def _put(self, members: dict | None, row: dict, reason: str | None) -> dict:
        """Append one sample, in order: kept -> tar + row; rejected -> row (+ rejected tar if kept)."""
        row = {**row, "index_in_shard": row.get("index_in_shard", len(self.rows))}
        if reason is None:
            faults.point("shard.sample")
            self._tar.write(members)
            self.kept += 1
            full = make_row(
                **{**row, "shard": self.name, "kept": True, "reject_reason": None, **self._stamp()}
            )
            self.rows.append(full)
            return full
        if members is not None and self.rejected_path is not None:
            if self._rtar is None:
                self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
                self._rfile = open(self._rtmp, "wb")
                self._rtar = _tar_writer(self._rfile)
            self._rtar.write(members)
            self.rejected_kept += 1
        else:
            row = {**row, "image_sha256": None, "mask_sha256": None, "json_sha256": None}
        full = make_row(
            **{**row, "shard": self.name, "kept": False, "reject_reason": reason, **self._stamp()}
        )
        self.rows.append(full)
        return full

    def _claim(self, key: str) -> None:
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.name}")
        self._keys.add(key)

    def _stamp(self) -> dict:
        return {"config_hash": self.config_hash}

    @property
    def _rtmp(self) -> Path:
        return self.rejected_path.with_name(self.rejected_path.name + TMP_SUFFIX)

    def close(self) -> ShardInfo:
        """Finish the tar (fsync, rename), then write the manifest. Returns the shard's record."""
        while self._queue:
            self._write_next()
        if self._pool is not None:
            self._pool.shutdown()
        _finish(self._tar, self._file)
        os.replace(self.tmp_path, self.tar_path)
        fsync_dir(self.tar_path.parent)
        faults.point("shard.tar_renamed")
        rejected = None
        if self._rtar is not None:
            _finish(self._rtar, self._rfile)
            os.replace(self._rtmp, self.rejected_path)
            fsync_dir(self.rejected_path.parent)
            rejected = ShardInfo(
                name=f"{REJECTED_DIR}/{self.rejected_path.name}",
                sha256=sha256_file(self.rejected_path),
                bytes=self.rejected_path.stat().st_size,
                samples=self.rejected_kept,
            ).as_json()
        info = ShardInfo(
            name=f"{SHARDS_DIR}/{self.tar_path.name}",
            sha256=sha256_file(self.tar_path),
            bytes=self.tar_path.stat().st_size,
            samples=self.kept,
            rejected=rejected,
        )
        # the manifest comes last and records the tar it describes: a resumed job keeps a shard only
        # when its manifest is there, from the same config, and the tar's sha256 still matches
        write_manifest(
            manifest_path(self.root, self.name),
            rows_to_table(self.rows),
            {**self.metadata, "shard": info.as_json()},
        )
        return info

    def abort(self) -> None:
        """Drop a shard that could not be finished: close and remove its temporary file."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        self._queue.clear()
        try:
            self._tar.close()
        except Exception:  # the tar may be half-written; it is being deleted anyway
            pass
        self._file.close()
        self.tmp_path.unlink(missing_ok=True)
        if self._rtar is not None:
            try:
                self._rtar.close()
            except Exception:  # as above
                pass
            self._rfile.close()
            self._rtmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
