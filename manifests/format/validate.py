"""Validation of what every tool reads from a corpus before it uses it: corpus.json against its schema,
and manifest Parquet files against MANIFEST_SCHEMA, each with size limits checked before reading.

A corpus may come from anyone, so nothing in it is trusted: a shard name that leaves the corpus
folder, a count that is not a non-negative integer or a file too large to read whole is refused with
one line that names the file, the field and what is allowed (a DppError, exit 1). The checks are
written out one by one rather than through a schema library: explicit, and with nothing to install.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.errors import DppError
from manifests.format.schema import KEY_RE, MANIFEST_SCHEMA, ORIGINS

# --- limits (module constants, so a test can lower them) -------------------------------------------
MAX_CORPUS_JSON_BYTES = 64 * 2**20  # corpus.json larger than this is refused before it is parsed
MAX_SHARDS = 1_000_000  # shards listed in one corpus.json
MAX_CLASSES = 255  # mask value 255 means ignore, so 0-254 name classes
MAX_NAME_CHARS = 255  # class names, corpus ids and other identifiers
MAX_ITEMS = 1_000_000  # any other list in corpus.json (parents, history, training data, ...)
MAX_INT = 2**63 - 1  # counts, sizes and versions fit a signed 64-bit integer
MAX_MANIFEST_BYTES = 2 * 2**30  # a manifest Parquet file on disk
MAX_MANIFEST_FOOTER_BYTES = 64 * 2**20  # its footer (schema, row-group metadata, the job config)
MAX_MANIFEST_ROWS = 10_000_000  # rows: candidates of one shard, kept and rejected
MAX_MANIFEST_UNCOMPRESSED_BYTES = 16 * 2**30  # the row groups' declared size once decompressed

CLASS_NAME_RE = re.compile(r"^[A-Za-z0-9_. -]+$")  # as `dpp ingest --classes` allows
ID_RE = re.compile(r"^[A-Za-z0-9_.@:+-]+$")  # corpus ids, config hashes, model ids
SHARD_NAME_RE = re.compile(r"^shards/shard-[0-9]{6,9}\.tar$")
REJECTED_NAME_RE = re.compile(r"^rejected/shard-[0-9]{6,9}\.tar$")
SHARD_STEM_RE = re.compile(r"^shard-[0-9]{6,9}$")  # a manifest row's `shard`
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
GENERATION_RE = re.compile(r"^(0|[1-9][0-9]{0,8})$")


class _Bad(Exception):
    """A field and what is wrong with it; turned into one DppError line naming the file."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _int(value, field: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(field, f"is {_kind(value)} ({_show(value)}); it must be an integer in [{lo}, {hi}]")
    if not lo <= value <= hi:
        raise _Bad(field, f"is {_show(value)}; it must be an integer in [{lo}, {hi}]")
    return value


def _fraction(value, field: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Bad(field, f"is {_kind(value)} ({_show(value)}); it must be a number in [0, 1]")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise _Bad(field, f"is {_show(value)}; it must be a number in [0, 1]")
    return float(value)


def _str(value, field: str, pattern: re.Pattern | None = None, allowed: str = "", max_chars=MAX_NAME_CHARS):
    if not isinstance(value, str):
        raise _Bad(field, f"is {_kind(value)} ({_show(value)}); it must be a string")
    if len(value) > max_chars:
        raise _Bad(field, f"is {len(value)} characters long; at most {max_chars} are allowed")
    if pattern is not None and not pattern.fullmatch(value):
        raise _Bad(field, f"{_show(value)} is not allowed; {allowed}")
    return value


def _obj(value, field: str, optional: bool = False) -> dict | None:
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        what = "an object or null" if optional else "an object"
        raise _Bad(field, f"is {_kind(value)} ({_show(value)}); it must be {what}")
    return value


def _list(value, field: str, max_items: int = MAX_ITEMS) -> list:
    if not isinstance(value, list):
        raise _Bad(field, f"is {_kind(value)} ({_show(value)}); it must be a list")
    if len(value) > max_items:
        raise _Bad(field, f"lists {len(value)} items; at most {max_items} are allowed")
    return value


def _id(value, field: str) -> str:
    return _str(value, field, ID_RE, "ids use letters, digits and _ . @ : + -")


def _per_generation(value, field: str) -> None:
    for g, n in _obj(value, field).items():
        _str(g, f"{field} key", GENERATION_RE, "keys are generation numbers: 0, 1, 2, ...")
        _int(n, f"{field}[{g!r}]")


def _shard_file(value, field: str, pattern: re.Pattern, where: str) -> None:
    entry = _obj(value, field)
    for k in ("name", "sha256", "bytes", "samples"):
        if k not in entry:
            raise _Bad(field, f"lacks {k!r}")
    _str(
        entry["name"], f"{field}.name", pattern,
        f"it must be a path inside the corpus: {where}/shard-NNNNNN.tar (no '..', not absolute)",
    )  # fmt: skip
    _str(entry["sha256"], f"{field}.sha256", SHA256_RE, "it must be 64 lowercase hex digits")
    _int(entry["bytes"], f"{field}.bytes")
    _int(entry["samples"], f"{field}.samples")


def _check_record(record: dict) -> None:
    _int(record["schema_version"], "schema_version", lo=1)
    _id(record["corpus_id"], "corpus_id")
    _id(record["config_hash"], "config_hash")
    _str(record["status"], "status")

    classes = _list(record["classes"], "classes", MAX_CLASSES)
    if not classes:
        raise _Bad("classes", "is empty; a corpus names at least one class")
    for i, c in enumerate(classes):
        _str(c, f"classes[{i}]", CLASS_NAME_RE, "class names use letters, digits, space, '_', '-' and '.'")
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise _Bad("classes", f"list {dup!r} twice; class names must be unique")

    counts = _obj(record["counts"], "counts")
    for k in ("real", "synthetic", "rejected"):
        if k not in counts:
            raise _Bad("counts", f"lacks {k!r}")
        _int(counts[k], f"counts.{k}")
    _fraction(record["synthetic_fraction"], "synthetic_fraction")
    _per_generation(record["per_generation"], "per_generation")
    for c, v in _obj(record["per_class"], "per_class").items():
        if c not in classes:
            raise _Bad("per_class", f"names {_show(c)}, which is not in classes")
        v = _obj(v, f"per_class[{c!r}]")
        for k in ("images", "pixels"):
            if k in v:
                _int(v[k], f"per_class[{c!r}].{k}")

    names = set()
    for i, entry in enumerate(_list(record["shards"], "shards", MAX_SHARDS)):
        _shard_file(entry, f"shards[{i}]", SHARD_NAME_RE, "shards")
        if entry["name"] in names:
            raise _Bad(f"shards[{i}].name", f"{entry['name']!r} is listed twice")
        names.add(entry["name"])
        if entry.get("rejected") is not None:
            _shard_file(entry["rejected"], f"shards[{i}].rejected", REJECTED_NAME_RE, "rejected")

    for i, p in enumerate(_list(record["parents"], "parents")):
        _id(p, f"parents[{i}]")
    config = _obj(record["config"], "config")
    if config.get("kind") is not None:
        _str(config["kind"], "config.kind")

    gen = _obj(record["generator"], "generator", optional=True)
    if gen:
        _str(gen.get("id"), "generator.id", max_chars=4096)
        if gen.get("sample_generation") is not None:
            _int(gen["sample_generation"], "generator.sample_generation")
        for i, d in enumerate(_list(gen.get("training_data") or [], "generator.training_data")):
            d = _obj(d, f"generator.training_data[{i}]")
            _id(d.get("corpus_id"), f"generator.training_data[{i}].corpus_id")
            if d.get("version") is not None:
                _int(d["version"], f"generator.training_data[{i}].version", lo=1)
            if d.get("samples") is not None:
                _int(d["samples"], f"generator.training_data[{i}].samples")
            if d.get("per_generation") is not None:
                _per_generation(d["per_generation"], f"generator.training_data[{i}].per_generation")
    lab = _obj(record["labeler"], "labeler", optional=True)
    if lab:
        _str(lab.get("id"), "labeler.id", max_chars=4096)
        if lab.get("support_corpus") is not None:
            _id(lab["support_corpus"], "labeler.support_corpus")

    # optional fields that audit, append and mix read
    if record.get("version") is not None:
        _int(record["version"], "version", lo=1)
    for i, h in enumerate(_list(record.get("history") or [], "history")):
        h = _obj(h, f"history[{i}]")
        _int(h.get("version"), f"history[{i}].version", lo=1)
        _fraction(h.get("synthetic_fraction"), f"history[{i}].synthetic_fraction")
        if h.get("kept") is not None:
            _int(h["kept"], f"history[{i}].kept", lo=-MAX_INT)  # a repair records samples lost as < 0
        for j, s in enumerate(_list(h.get("shards") or [], f"history[{i}].shards", MAX_SHARDS)):
            _int(s, f"history[{i}].shards[{j}]")
        if h.get("config_hash") is not None:
            _id(h["config_hash"], f"history[{i}].config_hash")
    policy = _obj(record.get("policy"), "policy", optional=True)
    if policy:
        _str(policy.get("name"), "policy.name")
        for i, s in enumerate(_list(policy.get("sources") or [], "policy.sources")):
            s = _obj(s, f"policy.sources[{i}]")
            _id(s.get("corpus_id"), f"policy.sources[{i}].corpus_id")
            _int(s.get("version", 1), f"policy.sources[{i}].version", lo=1)
            _int(s.get("taken", 0), f"policy.sources[{i}].taken")
    for i, g in enumerate(_list(record.get("source_generations") or [], "source_generations")):
        _int(g, f"source_generations[{i}]")


def check_corpus_record(record: dict, path: Path) -> None:
    """Refuse a corpus.json whose fields are not of the documented types and ranges (DESIGN.md)."""
    try:
        _check_record(record)
    except _Bad as e:
        raise DppError(f"{path}: {e}") from None


def read_corpus_text(path: Path) -> str:
    """The text of a corpus.json, refused when it is not a regular file or larger than the limit."""
    path = Path(path)
    if not path.is_file():
        raise DppError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_CORPUS_JSON_BYTES:
        raise DppError(
            f"{path} is {size} bytes; a corpus.json of at most {MAX_CORPUS_JSON_BYTES} bytes is read"
        )
    with open(path, "rb") as f:
        data = f.read(MAX_CORPUS_JSON_BYTES + 1)  # bounded even if the file grows meanwhile
    if len(data) > MAX_CORPUS_JSON_BYTES:
        raise DppError(f"{path} is larger than {MAX_CORPUS_JSON_BYTES} bytes; that much is read at most")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DppError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


JSON_OPTIONS = {"parse_constant": _refuse_constant}  # NaN, Infinity: Python's json accepts them


# --- manifests ------------------------------------------------------------------------------------


def _footer_bytes(path: Path, size: int) -> int:
    """The footer length a Parquet file declares (its last 8 bytes: length, then b"PAR1")."""
    if size < 12:
        raise DppError(f"manifest {path} is unreadable ({size} bytes is too short for Parquet)")
    with open(path, "rb") as f:
        f.seek(size - 8)
        tail = f.read(8)
    if tail[4:] != b"PAR1":
        raise DppError(f"manifest {path} is unreadable (it does not end like a Parquet file)")
    return int.from_bytes(tail[:4], "little")


def open_manifest(path: Path) -> pq.ParquetFile:
    """A manifest's Parquet file, opened after its size, footer, row count and declared uncompressed size
    are checked against the limits; its columns are checked with `check_manifest_schema`."""
    path = Path(path)
    if not path.exists():
        raise DppError(f"manifest {path} is missing")
    if not path.is_file():
        raise DppError(f"manifest {path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise DppError(
            f"manifest {path} is {size} bytes; a manifest of at most {MAX_MANIFEST_BYTES} bytes is read"
        )
    footer = _footer_bytes(path, size)
    if footer > MAX_MANIFEST_FOOTER_BYTES:
        raise DppError(
            f"manifest {path} declares a {footer}-byte footer; at most {MAX_MANIFEST_FOOTER_BYTES} are read"
        )
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        schema = pf.schema_arrow
    except (OSError, pa.ArrowException) as e:
        raise DppError(f"manifest {path} is unreadable ({_first_line(e)})") from None
    if meta.num_rows > MAX_MANIFEST_ROWS:
        pf.close()
        raise DppError(f"manifest {path} holds {meta.num_rows} rows; at most {MAX_MANIFEST_ROWS} are read")
    unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if unpacked > MAX_MANIFEST_UNCOMPRESSED_BYTES:
        pf.close()
        raise DppError(
            f"manifest {path} declares {unpacked} bytes of rows once decompressed; "
            f"at most {MAX_MANIFEST_UNCOMPRESSED_BYTES} are read"
        )
    try:
        check_manifest_schema(schema, path)
    except DppError:
        pf.close()
        raise
    return pf


def check_manifest_schema(schema: pa.Schema, path: Path) -> None:
    """Every MANIFEST_SCHEMA column is present with its type (extra columns are ignored)."""
    missing = [n for n in MANIFEST_SCHEMA.names if n not in schema.names]
    if missing:
        raise DppError(f"manifest {path} lacks column(s) {', '.join(missing)}")
    for want in MANIFEST_SCHEMA:
        if schema.get_all_field_indices(want.name) != [schema.get_field_index(want.name)]:
            raise DppError(f"manifest {path} has column {want.name} more than once")
        got = schema.field(want.name).type
        if not got.equals(want.type):
            raise DppError(f"manifest {path}: column {want.name} is {got}; it must be {want.type}")


def _first_bad(ok: pa.ChunkedArray | pa.Array) -> int | None:
    bad = pc.indices_nonzero(pc.invert(pc.fill_null(ok, False)))
    return None if len(bad) == 0 else bad[0].as_py()


def check_manifest_values(table: pa.Table, path: Path, classes: list[str] | None = None) -> None:
    """Required columns hold no nulls; keys, shard names, origins and numbers are in range; with `classes`,
    every row's class lists agree with them. The first bad row is named."""

    def refuse(col: str, row: int, allowed: str) -> None:
        value = table.column(col)[row].as_py()
        raise DppError(f"manifest {path}: column {col} row {row} holds {_show(value)}; {allowed}")

    for f in MANIFEST_SCHEMA:
        if not f.nullable and table.column(f.name).null_count:
            refuse(f.name, _first_bad(pc.is_valid(table.column(f.name))), "it must not be null")
    col = table.column
    checks = [
        ("key", pc.match_substring_regex(col("key"), KEY_RE.pattern), "keys match [A-Za-z0-9_-]+"),
        ("shard", pc.match_substring_regex(col("shard"), SHARD_STEM_RE.pattern), "it must be shard-NNNNNN"),
        ("origin", pc.is_in(col("origin"), value_set=pa.array(ORIGINS)), f"allowed: {', '.join(ORIGINS)}"),
        ("generation", pc.greater_equal(col("generation"), 0), "it must be 0 or more"),
        ("index_in_shard", pc.greater_equal(col("index_in_shard"), 0), "it must be 0 or more"),
        ("width", pc.greater(col("width"), 0), "it must be 1 or more"),
        ("height", pc.greater(col("height"), 0), "it must be 1 or more"),
    ]  # fmt: skip
    for name, ok, allowed in checks:
        row = _first_bad(ok)
        if row is not None:
            refuse(name, row, allowed)
    fractions = table.column("class_pixel_fraction")
    flat = pc.list_flatten(fractions)
    in_range = pc.and_(pc.greater_equal(flat, 0.0), pc.less_equal(flat, 1.0))
    if flat.null_count or (len(flat) and not pc.all(in_range).as_py()):
        for row, values in enumerate(fractions.to_pylist()):
            if any(v is None or not 0.0 <= v <= 1.0 for v in values):
                refuse("class_pixel_fraction", row, "fractions are numbers in [0, 1]")
    if classes is not None:
        row = _first_bad(pc.equal(pc.list_value_length(fractions), len(classes)))
        if row is not None:
            refuse("class_pixel_fraction", row, f"it must hold one fraction per class ({len(classes)})")
        present = pc.list_flatten(table.column("classes_present"))
        if present.null_count or (
            len(present) and not pc.all(pc.is_in(present, value_set=pa.array(classes))).as_py()
        ):
            for row, values in enumerate(table.column("classes_present").to_pylist()):
                if any(v not in classes for v in values):
                    refuse("classes_present", row, f"class names are among {', '.join(classes)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# --- paths ----------------------------------------------------------------------------------------


def escapes(root: Path, path: Path) -> bool:
    """Whether `path`, symbolic links followed, lies outside `root` (also followed): a file a corpus or
    an input folder lists must not lead elsewhere."""
    try:
        return not Path(path).resolve(strict=False).is_relative_to(Path(root).resolve(strict=False))
    except (OSError, RuntimeError):  # a symbolic-link loop
        return True
