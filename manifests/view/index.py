"""What `dpp view` knows of a corpus: its manifests as columns (filter, sort, page) and an index of each
tar shard's members (offset and size), so that a sample's bytes are read with one seek, in place.

Nothing here writes. A sample is addressed by its key, looked up in the manifests; the only files opened
are the shards corpus.json lists (their names are checked on load) and their manifests. A damaged shard
(missing, another size than recorded, a broken tar, a member whose bytes do not hash as its manifest row
says) is reported as damaged with a message; the rest of the corpus stays readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from manifests.audit import lineage
from manifests.errors import DppError, UsageError, first_line
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.format.schema import IGNORE, KEY_RE, MANIFEST_SCHEMA
from manifests.preview import IGNORE_COLOUR, PALETTE

# Manifest columns shown as scores (filter ranges, sort), where a corpus has any value in them.
SCORES = ("label_uncertainty", "classifier_confidence", "realism_distance", "min_fragment_pixels")
MEMBERS = {"png": "image_sha256", "seg.png": "mask_sha256", "json": "json_sha256"}
MAX_PAGE = 500


class NotFound(LookupError):
    """No such corpus or sample (HTTP 404)."""


class Damaged(DppError):
    """The bytes of a sample cannot be read as recorded (HTTP 500 with the message)."""


@dataclass
class Shard:
    """One shard's files: the kept tar, the rejected tar (if kept), and what is known to be wrong."""

    stem: str
    tar: Path
    rejected: Path | None
    damaged: str | None = None  # found at load (size, missing files) or when the tar is first indexed
    members: dict[Path, dict[str, dict[str, tuple[int, int]]]] = field(default_factory=dict)


def index_tar(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {ext: (offset, size)}} of a tar's regular members, read once from its headers. A broken tar,
    a member that runs past the end of the file or a name that is not KEY.ext raises Damaged."""
    size = path.stat().st_size
    out: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if not KEY_RE.fullmatch(key) or ext not in MEMBERS:
                    raise Damaged(f"member {m.name!r} is not KEY.png, KEY.seg.png or KEY.json")
                if m.offset_data + m.size > size:
                    raise Damaged(f"member {m.name} runs past the end of the file (truncated)")
                out.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise Damaged(f"not a readable tar ({first_line(e)})") from e
    return out


def mask_png(seg: bytes) -> bytes:
    """A class-index mask as a palette PNG in the preview's class colours; background (0) transparent so
    that it lies over the image, ignore (255) white."""
    with Image.open(io.BytesIO(seg)) as im:
        mask = np.asarray(im.convert("L"), dtype=np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    for i in range(256):
        palette[i] = PALETTE[i % len(PALETTE)]
    palette[IGNORE] = IGNORE_COLOUR
    out = Image.fromarray(mask, mode="P")
    out.putpalette(palette.reshape(-1).tolist())
    buf = io.BytesIO()
    out.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


def _numbers(col: pa.ChunkedArray) -> np.ndarray:
    values = col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    values[~np.isfinite(values)] = np.nan  # null or non-finite: no score (JSON has no NaN or infinity)
    return values


class Corpus:
    """One corpus as `dpp view` reads it: manifest columns in memory, shards indexed on first use."""

    def __init__(self, index: int, root: Path):
        self.index = index
        self.root = Path(root)
        self.record = load_corpus(self.root)
        self.classes = list(self.record["classes"])
        self.shards: dict[str, Shard] = {}
        tables = []
        for entry in self.record["shards"]:
            stem = Path(entry["name"]).stem
            rej = entry.get("rejected")
            shard = Shard(stem, self.root / entry["name"], self.root / rej["name"] if rej else None)
            self.shards[stem] = shard
            shard.damaged = self._size_problem(entry) or (rej and self._size_problem(rej))
            try:
                tables.append(read_manifest(manifest_path(self.root, stem), self.classes))
            except DppError as e:
                shard.damaged = f"its manifest cannot be read: {first_line(e)}"
        self.table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
        t = self.table
        n = t.num_rows
        self.keys = {k: i for i, k in enumerate(t.column("key").to_pylist())}
        self.kept = t.column("kept").to_numpy(zero_copy_only=False).astype(bool)
        self.origin = np.asarray(t.column("origin").to_pylist(), dtype=object)
        self.generation = t.column("generation").to_numpy(zero_copy_only=False)
        self.reason = np.asarray(t.column("reject_reason").to_pylist(), dtype=object)
        self.shard_of = np.asarray(t.column("shard").to_pylist(), dtype=object)
        fractions = pc.list_flatten(t.column("class_pixel_fraction")).to_numpy(zero_copy_only=False)
        self.present = fractions.reshape(n, len(self.classes)) > 0
        self.scores = {}
        for name in SCORES:
            values = _numbers(t.column(name))
            if n and not np.isnan(values).all():
                self.scores[name] = values
        self._lock = threading.Lock()

    def _size_problem(self, entry: dict) -> str | None:
        path = self.root / entry["name"]
        if not path.is_file():
            return f"{entry['name']} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{entry['name']} has {size} bytes, corpus.json records {entry['bytes']} (truncated?)"
        return None

    # --- what the page shows ---

    def summary(self) -> dict:
        """The corpus for the page: counts, filter choices, score ranges, lineage, damaged shards."""
        reasons: dict[str, int] = {}
        for r in self.reason[~self.kept]:
            reasons[str(r)] = reasons.get(str(r), 0) + 1
        ranges = {name: [float(np.nanmin(v)), float(np.nanmax(v))] for name, v in self.scores.items()}
        return {
            "index": self.index,
            "name": self.root.name,
            "corpus_id": self.record["corpus_id"],
            "classes": self.classes,
            "counts": self.record["counts"],
            "candidates": int(len(self.kept)),
            "origins": sorted({str(o) for o in self.origin}),
            "generations": sorted({int(g) for g in self.generation}),
            "reasons": dict(sorted(reasons.items())),  # rejects by reason
            "scores": ranges,
            "lineage": lineage(self.record),
            "damaged": {s.stem: s.damaged for s in self.shards.values() if s.damaged},
            "palette": [[int(c) for c in PALETTE[i % len(PALETTE)]] for i in range(len(self.classes))],
        }

    def select(self, params: dict) -> np.ndarray:
        """Row numbers matching the filters in `params`, in the requested order. Bad values are a
        UsageError naming the parameter and what is allowed."""
        ok = np.ones(len(self.kept), dtype=bool)
        origin = params.get("origin")
        if origin:
            if origin not in ("real", "synthetic"):
                raise UsageError(f"origin {origin!r} is not allowed; allowed: real, synthetic")
            ok &= self.origin == origin
        gen = params.get("generation")
        if gen not in (None, ""):
            try:
                ok &= self.generation == int(gen)
            except ValueError:
                raise UsageError(f"generation {gen!r} is not an integer") from None
        cls = params.get("cls")
        if cls:
            if cls not in self.classes:
                allowed = ", ".join(self.classes)
                raise UsageError(f"class {cls!r} is not a class of this corpus; allowed: {allowed}")
            ok &= self.present[:, self.classes.index(cls)]
        status = params.get("status") or "all"
        if status == "kept":
            ok &= self.kept
        elif status == "rejected":
            ok &= ~self.kept
        elif status.startswith("reason:"):
            ok &= self.reason == status.removeprefix("reason:")
        elif status != "all":
            raise UsageError(f"status {status!r} is not allowed; allowed: all, kept, rejected, reason:NAME")
        for name, values in self.scores.items():
            for bound, cmp in (("min", np.greater_equal), ("max", np.less_equal)):
                text = params.get(f"{bound}_{name}")
                if text in (None, ""):
                    continue
                try:
                    limit = float(text)
                except ValueError:
                    raise UsageError(f"{bound}_{name} {text!r} is not a number") from None
                with np.errstate(invalid="ignore"):
                    ok &= cmp(values, limit)  # NaN (no score) never passes a bound
        rows = np.flatnonzero(ok)
        sort = params.get("sort") or ""
        if sort:
            if sort not in self.scores:
                allowed = ", ".join(self.scores) or "none (this corpus records no scores)"
                raise UsageError(f"sort {sort!r} is not allowed; allowed: {allowed}")
            values = self.scores[sort][rows]
            if params.get("order") == "desc":
                values = -values
            rows = rows[np.argsort(values, kind="stable")]  # NaN sorts last either way
        return rows

    def page(self, params: dict) -> dict:
        """One page of the selection: {total, offset, limit, items}."""
        rows = self.select(params)
        offset = _int_param(params, "offset", 0, 0)
        limit = _int_param(params, "limit", 60, 1, MAX_PAGE)
        return {
            "total": int(len(rows)),
            "offset": offset,
            "limit": limit,
            "items": self.items(rows[offset : offset + limit]),
        }

    def items(self, rows: np.ndarray) -> list[dict]:
        t = self.table.take(pa.array(rows, type=pa.int64()))
        cols = {c: t.column(c).to_pylist() for c in ("key", "classes_present", "seed", "image_sha256")}
        out = []
        for j, r in enumerate(rows):
            shard = self.shards.get(self.shard_of[r])
            kept = bool(self.kept[r])
            stored = kept or (shard is not None and shard.rejected is not None and cols["image_sha256"][j])
            out.append(
                {
                    "key": cols["key"][j],
                    "kept": kept,
                    "reason": self.reason[r],
                    "origin": self.origin[r],
                    "generation": int(self.generation[r]),
                    "classes_present": cols["classes_present"][j],
                    "seed": cols["seed"][j],
                    "scores": {n: _num(v[r]) for n, v in self.scores.items()},
                    "stored": bool(stored),
                    "damaged": shard.damaged if shard is not None and stored else None,
                }
            )
        return out

    def row(self, key: str) -> int:
        if not KEY_RE.fullmatch(key) or key not in self.keys:
            raise NotFound(f"no sample {key!r} in corpus {self.index}")
        return self.keys[key]

    def detail(self, key: str) -> dict:
        """Everything about one sample: its manifest row, KEY.json, seed, lineage and the command that
        renders it again (generated corpora)."""
        r = self.row(key)
        row = {k: _finite(v) for k, v in self.table.slice(r, 1).to_pylist()[0].items()}
        item = self.items(np.array([r]))[0]
        meta, damaged = None, item["damaged"]
        if item["stored"] and damaged is None:
            try:
                meta = json.loads(self.member(key, "json"))
            except Damaged as e:
                damaged = str(e)
        kind = (self.record.get("config") or {}).get("kind")
        command = None
        if row["origin"] == "synthetic" and kind in ("generate", "relabel") and row["seed"] is not None:
            command = f"dpp reproduce {self.root} {key}"
        return {
            **item,
            "damaged": damaged,
            "row": row,
            "meta": meta,
            "command": command,
            "lineage": lineage(self.record),
        }

    def _members(self, shard: Shard, tar: Path) -> dict[str, dict[str, tuple[int, int]]]:
        """The member index of one of a shard's tars, read on first use (a broken tar marks the shard)."""
        with self._lock:
            if tar not in shard.members:
                try:
                    shard.members[tar] = index_tar(tar)
                except Damaged as e:
                    shard.damaged = str(e)
            if shard.damaged:
                raise Damaged(f"shard {tar.relative_to(self.root)} is damaged: {shard.damaged}")
            return shard.members[tar]

    def warm(self) -> None:
        """Index every shard's tars now (dpp view does it in the background after the server starts), so
        that later pages anywhere in the corpus read their images without indexing first."""
        for shard in list(self.shards.values()):
            for tar in (shard.tar, shard.rejected):
                if tar is not None and not shard.damaged:
                    try:
                        self._members(shard, tar)
                    except Damaged:
                        pass  # recorded on the shard; a request for its samples says so

    def member(self, key: str, ext: str) -> bytes:
        """The bytes of KEY.ext, read from its shard by offset; checked against the manifest's sha256."""
        r = self.row(key)
        shard = self.shards.get(self.shard_of[r])
        tar = None if shard is None else (shard.tar if self.kept[r] else shard.rejected)
        if tar is None:
            raise NotFound(f"sample {key} is a rejected candidate whose image was not kept (--keep-rejected)")
        name = tar.relative_to(self.root)
        if shard.damaged:
            raise Damaged(f"shard {name} is damaged: {shard.damaged}")
        where = self._members(shard, tar).get(key, {}).get(ext)
        if where is None:
            raise Damaged(f"shard {name} is damaged: it lacks member {key}.{ext}")
        offset, size = where
        with open(tar, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        expected = self.table.column(MEMBERS[ext])[r].as_py()
        if len(data) != size or (expected and hashlib.sha256(data).hexdigest() != expected):
            raise Damaged(f"shard {name} is damaged: {key}.{ext} does not hash as its manifest row records")
        return data


def _finite(v):
    """JSON has no NaN or infinity: a non-finite score (reason non_finite) shows as null."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _num(v: float) -> float | None:
    return None if np.isnan(v) else float(v)  # scores are finite or NaN (see _numbers)


def _int_param(params: dict, name: str, default: int, lo: int, hi: int | None = None) -> int:
    text = params.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} {text!r} is not an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise UsageError(f"{name} {value} is not allowed; it must be in [{lo}, {hi if hi else 'inf'})")
    return value


def open_corpora(paths: list[Path]) -> list[Corpus]:
    """The named corpora, each checked (a folder that is not a corpus is a UsageError, before any work)."""
    if not paths:
        raise UsageError("give at least one corpus folder")
    return [Corpus(i, Path(p)) for i, p in enumerate(paths)]
