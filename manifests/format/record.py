"""The corpus record: corpus.json (the only place it is built: new_record, next_version; read, checked
and written here) and each shard's Parquet manifest (write_manifest, read_manifest).

corpus.json is the commit point of a corpus: it is written last, through a temporary file that is
fsynced and renamed, and it lists every shard with its sha256, size and sample count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.errors import DppError, UsageError, first_line
from manifests.format.layout import CORPUS_FILE, TMP_SUFFIX, canonical_json, fsync_dir, write_bytes_atomic
from manifests.format.schema import MANIFEST_SCHEMA, SCHEMA_VERSION
from manifests.format.validate import (
    JSON_OPTIONS,
    check_corpus_record,
    check_manifest_values,
    open_manifest,
    read_corpus_text,
)

REQUIRED_FIELDS = (
    "schema_version",
    "corpus_id",
    "classes",
    "counts",
    "synthetic_fraction",
    "per_generation",
    "per_class",
    "shards",
    "generator",
    "labeler",
    "config",
    "config_hash",
    "parents",
    "status",
)


def write_manifest(path: Path, table: pa.Table, metadata: dict | None = None) -> None:
    """Write one shard's manifest Parquet atomically; `metadata` (e.g. the job config) goes in its footer."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    if metadata:
        table = table.replace_schema_metadata({b"dpp": canonical_json(metadata).encode()})
    try:
        with pq.ParquetWriter(tmp, table.schema) as writer:
            writer.write_table(table)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_manifest(path: Path, classes: list[str] | None = None) -> pa.Table:
    """One shard's manifest rows, checked before use (manifests/format/validate.py): size, footer and row
    count against the limits before anything is read whole, column types against MANIFEST_SCHEMA, then the
    values (no nulls where required, keys, shard names, origins, ranges; with `classes`, the per-class
    lists). A DppError names the file, the column and what is allowed."""
    pf = open_manifest(path)
    try:
        table = pf.read(columns=MANIFEST_SCHEMA.names)
    except (OSError, pa.ArrowException) as e:
        raise DppError(f"manifest {path} is unreadable ({first_line(e)})") from e
    finally:
        pf.close()
    check_manifest_values(table, path, classes)
    return table.select(MANIFEST_SCHEMA.names)


def write_corpus_json(root: Path, record: dict) -> None:
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"corpus record lacks field(s): {', '.join(missing)}")
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(Path(root) / CORPUS_FILE, text.encode())


def load_corpus(root: Path) -> dict:
    """Read and check CORPUS/corpus.json; a clear error for a missing, broken, hostile or too-new record."""
    root = Path(root)
    if not root.exists():
        raise UsageError(f"corpus {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"corpus {root} is not a directory; a corpus is a folder holding {CORPUS_FILE}")
    path = root / CORPUS_FILE
    if not path.exists():
        raise UsageError(f"{root} is not a corpus: it has no {CORPUS_FILE}")
    text = read_corpus_text(path)  # a regular file within the size limit, UTF-8
    try:
        record = json.loads(text, **JSON_OPTIONS)
    except (ValueError, RecursionError) as e:
        raise DppError(f"{path} is not valid JSON ({first_line(e)})") from e
    if not isinstance(record, dict):
        raise DppError(f"{path} does not hold a JSON object")
    version = record.get("schema_version")
    if not isinstance(version, int):
        raise DppError(f"{path} has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema_version {version}, newer than this dataplusplus reads "
            f"(up to {SCHEMA_VERSION}); upgrade dataplusplus"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise DppError(f"{path} lacks field(s): {', '.join(missing)}")
    check_corpus_record(record, path)  # types and ranges of every field, shard paths inside
    return record


def summarize(classes: list[str], rows: Iterable[dict]) -> dict:
    """The counting fields of corpus.json (counts, fractions, per generation and class) from manifest rows."""
    counts = {"real": 0, "synthetic": 0, "rejected": 0}
    per_generation: dict[str, int] = {}
    per_class = {c: {"images": 0, "pixels": 0} for c in classes}
    for r in rows:
        if not r["kept"]:
            counts["rejected"] += 1
            continue
        counts[r["origin"]] += 1
        g = str(r["generation"])
        per_generation[g] = per_generation.get(g, 0) + 1
        area = r["width"] * r["height"]
        for c, frac in zip(classes, r["class_pixel_fraction"], strict=True):
            if frac > 0:
                per_class[c]["images"] += 1
                per_class[c]["pixels"] += round(frac * area)
    kept = counts["real"] + counts["synthetic"]
    return {
        "counts": counts,
        "synthetic_fraction": (counts["synthetic"] / kept) if kept else 0.0,
        "per_generation": dict(sorted(per_generation.items(), key=lambda kv: int(kv[0]))),
        "per_class": per_class,
    }


def new_record(corpus_id, classes, summary: dict, shards, config, chash, fields: dict) -> dict:
    """A new corpus.json (version 1 unless `fields` says otherwise): the one builder every writer uses."""
    return {
        "schema_version": SCHEMA_VERSION,
        "corpus_id": corpus_id,
        "classes": list(classes),
        **summary,
        "shards": shards,
        "generator": fields.pop("generator", None),
        "labeler": fields.pop("labeler", None),
        "config": config,
        "config_hash": chash,
        "parents": list(fields.pop("parents", None) or []),
        **fields,
        "status": "complete",
    }


def first_history(record: dict) -> dict:
    """The history entry of a corpus.json that has none yet (a corpus written before any append)."""
    kept = record["counts"]["real"] + record["counts"]["synthetic"]
    return {
        "version": int(record.get("version", 1)),
        "config_hash": record["config_hash"],
        "shards": list(range(len(record["shards"]))),
        "kept": kept,
        "synthetic_fraction": record["synthetic_fraction"],
    }


def next_version(base: dict, summary: dict, shards: list[dict], entry: dict, parents=None) -> dict:
    """The next version of corpus.json `base` (an append or a repair): its counts and shards replaced,
    `entry` added to its history (the first version's entry made up if it has none), `parents` (when
    given) joined to its parents."""
    version = int(base.get("version", 1)) + 1
    history = [*(base.get("history") or [first_history(base)]), {"version": version, **entry}]
    record = {**base, **summary, "shards": shards, "version": version, "history": history}
    if parents is not None:
        record["parents"] = sorted(set(record.get("parents") or []) | set(parents))
    return record
