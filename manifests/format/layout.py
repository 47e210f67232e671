"""The on-disk layout every tool reads: folder and file names, canonical JSON and its hash, sha256 of
files, and atomic writing (a whole file or nothing)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from manifests import faults

CORPUS_FILE = "corpus.json"
SHARDS_DIR = "shards"
MANIFEST_DIR = "manifest"
TMP_SUFFIX = ".tmp"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def manifest_path(root: Path, shard: str) -> Path:
    """ROOT/manifest/shard-NNNNNN.parquet of a shard, given its name ("shard-NNNNNN") or its corpus.json
    entry name ("shards/shard-NNNNNN.tar")."""
    return Path(root) / MANIFEST_DIR / f"{Path(shard).stem}.parquet"


def canonical_json(obj) -> str:
    """Stable JSON text (sorted keys, no spaces) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: temp name in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"atomic:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
