"""`dpp verify`: check a corpus on disk against its corpus.json and manifests, byte for byte.

Tar has no footer, so a tar cut exactly at a member boundary reads without error and just has
fewer members; completeness comes from the sha256, size and sample count recorded in corpus.json,
and each sample's member bytes are checked against the sha256 in its manifest row.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from manifests.errors import DppError, first_line
from manifests.format.layout import MANIFEST_DIR, SHARDS_DIR, TMP_SUFFIX, manifest_path, sha256_file
from manifests.format.record import load_corpus, read_manifest, summarize
from manifests.format.schema import IGNORE, KEY_RE

MEMBERS = ("png", "seg.png", "json")


@dataclass
class VerifyReport:
    corpus: Path
    corpus_id: str | None = None
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)  # each names the shard and/or sample
    notes: list[str] = field(default_factory=list)  # harmless findings (stray temp files)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """Members grouped by sample key; raises tarfile errors on a broken archive."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isfile():
                raise tarfile.TarError(f"member {m.name!r} is not a regular file")
            key, _, ext = m.name.partition(".")
            f = tar.extractfile(m)
            data = f.read() if f is not None else b""
            samples.setdefault(key, {})[ext] = data
    return samples


def _check_sample(key: str, members: dict[str, bytes], classes: list[str], row: dict | None) -> list[str]:
    problems = []
    if not KEY_RE.fullmatch(key):
        problems.append(f"key {key!r} does not match [A-Za-z0-9_-]+")
    missing = [m for m in MEMBERS if m not in members]
    extra = [m for m in members if m not in MEMBERS]
    if missing:
        problems.append(f"missing member(s) {', '.join(key + '.' + m for m in missing)}")
    if extra:
        problems.append(f"unexpected member(s) {', '.join(key + '.' + m for m in extra)}")
    if missing:
        return problems
    if row is not None:
        for ext, col in (("png", "image_sha256"), ("seg.png", "mask_sha256"), ("json", "json_sha256")):
            if row[col] is not None and hashlib.sha256(members[ext]).hexdigest() != row[col]:
                problems.append(f"{key}.{ext} bytes differ from the sha256 in its manifest row")
    try:
        with Image.open(io.BytesIO(members["png"])) as im:
            im.load()
            if im.mode != "RGB":
                problems.append(f"{key}.png is mode {im.mode}; images must be 8-bit RGB")
            size = im.size
    except Exception as e:  # noqa: BLE001 - any decode failure is a finding about this sample
        return problems + [f"{key}.png does not decode ({first_line(e)})"]
    try:
        with Image.open(io.BytesIO(members["seg.png"])) as im:
            im.load()
            if im.mode != "L":
                problems.append(f"{key}.seg.png is mode {im.mode}; masks must be 8-bit single-channel")
            mask = np.asarray(im)
    except Exception as e:  # noqa: BLE001
        return problems + [f"{key}.seg.png does not decode ({first_line(e)})"]
    if (mask.shape[1], mask.shape[0]) != size:
        problems.append(f"{key}: image is {size[0]}x{size[1]} but mask is {mask.shape[1]}x{mask.shape[0]}")
    values = set(np.unique(mask).tolist())
    bad = sorted(v for v in values if v >= len(classes) and v != IGNORE)
    if bad:
        problems.append(f"{key}.seg.png holds value(s) {bad} outside 0-{len(classes) - 1} and {IGNORE}")
    try:
        meta = json.loads(members["json"])
        for f in ("origin", "generation", "classes_present"):
            if f not in meta:
                problems.append(f"{key}.json lacks {f!r}")
        present = sorted(classes[v] for v in values if v < len(classes))
        if "classes_present" in meta and sorted(meta["classes_present"]) != present:
            problems.append(
                f"{key}.json classes_present {meta['classes_present']} disagree with the mask {present}"
            )
    except ValueError as e:
        problems.append(f"{key}.json is not valid JSON ({first_line(e)})")
    return problems


def shard_problems(
    root: Path, entry: dict, manifest: bool = True, classes: list[str] | None = None
) -> list[str]:
    """What is wrong with the files of one shard that corpus.json lists, without opening its samples:
    a tar (or rejected tar) missing, or its size or sha256 not as recorded; with `manifest`, its
    manifest missing or unreadable. Empty when the shard is whole. Used by verify, audit, repair and
    by generate before it touches an existing corpus."""
    root = Path(root)
    name = entry["name"]
    path = root / name
    problems = []
    if not path.is_file():
        problems.append(f"{name}: listed in corpus.json but missing")
    else:
        size = path.stat().st_size
        digest = sha256_file(path)
        if size != entry["bytes"]:
            problems.append(
                f"{name}: {size} bytes, corpus.json records {entry['bytes']} (truncated or altered)"
            )
        if digest != entry["sha256"]:
            problems.append(f"{name}: sha256 {digest[:12]}… differs from corpus.json {entry['sha256'][:12]}…")
    rej = entry.get("rejected")
    if rej is not None:  # rejected candidates kept for refilter: whole, as recorded
        rpath = root / rej["name"]
        if not rpath.is_file():
            problems.append(f"{rej['name']}: listed in corpus.json but missing")
        elif sha256_file(rpath) != rej["sha256"]:
            problems.append(f"{rej['name']}: sha256 differs from corpus.json")
    if manifest:
        stem = Path(name).stem
        mpath = manifest_path(root, stem)
        if not mpath.is_file():
            problems.append(f"{name}: its manifest {MANIFEST_DIR}/{stem}.parquet is missing")
        else:
            try:
                rows = read_manifest(mpath, classes)
                kept = sum(rows.column("kept").to_pylist())
                if kept != entry["samples"]:
                    problems.append(
                        f"{name}: its manifest lists {kept} kept samples, corpus.json {entry['samples']}"
                    )
            except DppError as e:
                problems.append(f"{name}: {e}")
    return problems


def verify_corpus(root: Path, check_samples: bool = True, progress=None) -> VerifyReport:
    """Recompute every shard's sha256, size and count; check every sample's members, sizes and values.
    `progress(n)` is called as samples are checked."""
    root = Path(root)
    report = VerifyReport(corpus=root)
    try:
        record = load_corpus(root)
    except DppError as e:
        report.problems.append(str(e))
        return report
    report.corpus_id = record["corpus_id"]
    classes = list(record["classes"])
    seen_keys: dict[str, str] = {}
    all_rows: list[dict] = []
    listed = set()
    for entry in record["shards"]:
        name = entry["name"]
        listed.add(name)
        report.shards += 1
        path = root / name
        where = f"{name}"
        report.problems += shard_problems(root, entry, manifest=False)
        if not path.is_file():
            continue
        stem = Path(name).stem
        mpath = manifest_path(root, stem)
        rows: dict[str, dict] = {}
        if not mpath.is_file():
            report.problems.append(f"{where}: its manifest {MANIFEST_DIR}/{stem}.parquet is missing")
        else:
            try:
                table = read_manifest(mpath, classes)
                shard_rows = table.to_pylist()
                all_rows.extend(shard_rows)
                rows = {r["key"]: r for r in shard_rows if r["kept"]}
            except DppError as e:
                report.problems.append(f"{where}: {e}")
        try:
            samples = _read_tar(path)
        except (tarfile.TarError, OSError, EOFError) as e:
            report.problems.append(f"{where}: unreadable tar ({first_line(e)})")
            continue
        if len(samples) != entry["samples"]:
            report.problems.append(
                f"{where}: holds {len(samples)} samples, corpus.json records {entry['samples']}"
            )
        if rows:
            for key in sorted(set(rows) - set(samples)):
                report.problems.append(f"{where} sample {key}: in the manifest but not in the tar")
            for key in sorted(set(samples) - set(rows)):
                report.problems.append(f"{where} sample {key}: in the tar but not in the manifest")
        for key, members in samples.items():
            report.samples += 1
            if key in seen_keys:
                report.problems.append(f"{where} sample {key}: key also used in {seen_keys[key]}")
            seen_keys[key] = name
            if check_samples:
                for p in _check_sample(key, members, classes, rows.get(key)):
                    report.problems.append(f"{where} sample {key}: {p}")
            if progress is not None:
                progress(1)
    if all_rows:
        summary = summarize(classes, all_rows)
        for f in ("counts", "per_generation"):
            if summary[f] != record[f]:
                report.problems.append(
                    f"corpus.json {f} {record[f]} disagree with the manifests {summary[f]}"
                )
    for folder in (SHARDS_DIR, MANIFEST_DIR):
        d = root / folder
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            rel = f"{folder}/{p.name}"
            if p.name.endswith(TMP_SUFFIX):
                report.notes.append(
                    f"{rel}: temporary file left by an interrupted write (not part of the corpus)"
                )
            elif folder == SHARDS_DIR and rel not in listed:
                report.notes.append(f"{rel}: not listed in corpus.json (not part of the corpus)")
    return report
