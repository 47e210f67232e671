"""The Parquet schema of manifest rows: one row per candidate sample, kept or rejected.

Defined once here; every writer builds rows with `make_row` and every reader checks the schema.
Columns that a later stage fills (seed, generator, labeler, scores) are nullable and stay null
for samples that never went through that stage (real data, for instance).
"""

from __future__ import annotations

import re

import pyarrow as pa

SCHEMA_VERSION = 1
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
ORIGINS = ("real", "synthetic")
IGNORE = 255  # mask value of pixels that belong to no class (a labeler abstained, or unannotated)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # sample key, unique in the corpus
        pa.field("shard", pa.string(), nullable=False),  # shard name, e.g. shard-000000
        pa.field("index_in_shard", pa.int32(), nullable=False),  # candidate index within the shard
        pa.field("kept", pa.bool_(), nullable=False),  # in the tar shard (true) or rejected (false)
        pa.field("reject_reason", pa.string()),  # why a candidate was rejected; null when kept
        pa.field("origin", pa.string(), nullable=False),  # "real" | "synthetic"
        pa.field("generation", pa.int32(), nullable=False),  # 0 real; k>=1 synthetic (see DESIGN.md)
        pa.field("source", pa.string(), nullable=False),  # how the sample came to be: toyworld, ingest, ...
        pa.field("source_corpus", pa.string()),  # corpus id the sample was copied from (mix), else null
        pa.field("source_key", pa.string()),  # its key there, or the original file name for ingest
        pa.field("classes_present", pa.list_(pa.string()), nullable=False),  # class names in the mask
        pa.field("class_pixel_fraction", pa.list_(pa.float64()), nullable=False),  # per class, corpus order
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("image_sha256", pa.string()),  # sha256 of KEY.png bytes (null if never encoded)
        pa.field("mask_sha256", pa.string()),  # sha256 of KEY.seg.png bytes
        pa.field("json_sha256", pa.string()),  # sha256 of KEY.json bytes
        pa.field("seed", pa.int64()),  # the sample seed (toy world and generated samples)
        pa.field("generator_id", pa.string()),  # generator that rendered it (synthetic)
        pa.field("labeler_id", pa.string()),  # labeler that made its mask (synthetic)
        pa.field("target_classes", pa.list_(pa.string())),  # classes guidance aimed for
        pa.field("label_uncertainty", pa.float64()),  # image uncertainty score of the label head
        pa.field("classifier_confidence", pa.float64()),  # noise-aware classifier's confidence in target
        pa.field("realism_distance", pa.float64()),  # k-NN distance to real images in a fixed feature space
        pa.field("min_fragment_pixels", pa.int32()),  # smallest connected region of a non-background class
        pa.field("config_hash", pa.string(), nullable=False),  # hash of the job config that wrote it
    ]
)

COLUMNS = tuple(MANIFEST_SCHEMA.names)
_REQUIRED = {f.name for f in MANIFEST_SCHEMA if not f.nullable}


def make_row(**values) -> dict:
    """A manifest row with every column present; unknown columns and missing required ones are errors."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown manifest column(s): {', '.join(sorted(unknown))}")
    missing = {c for c in _REQUIRED if values.get(c) is None}
    if missing:
        raise ValueError(f"manifest row is missing required column(s): {', '.join(sorted(missing))}")
    if not KEY_RE.fullmatch(values["key"]):
        raise ValueError(f"sample key {values['key']!r} is not allowed; keys match [A-Za-z0-9_-]+")
    if values["origin"] not in ORIGINS:
        raise ValueError(f"origin {values['origin']!r} is not allowed; allowed: {', '.join(ORIGINS)}")
    return {c: values.get(c) for c in COLUMNS}


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
