"""Upkeep of a corpus on disk: `dpp vacuum` (remove what no corpus or job owns) and `dpp repair` (set
damaged shards aside and commit a corpus.json that lists only whole ones). Both hold the output lock,
so they never run beside a generation job, and neither ever deletes a byte of a listed shard: repair
moves damaged shards into quarantine/, vacuum removes only temporary files and files no shard owns.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from manifests.errors import UsageError
from manifests.format.layout import CORPUS_FILE, TMP_SUFFIX, fsync_dir, manifest_path
from manifests.format.record import load_corpus, next_version, read_manifest, summarize, write_corpus_json
from manifests.storage import commit as output
from manifests.verify import shard_problems

QUARANTINE_DIR = "quarantine"


def _check_target(root: Path) -> None:
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise UsageError(f"{root} {what}; give a corpus folder")
    if not (root / CORPUS_FILE).is_file() and not (root / output.JOB_FILE).is_file():
        raise UsageError(f"{root} is not a corpus (no {CORPUS_FILE}) nor the output of an unfinished job")


def _owned(root: Path) -> set[str]:
    """Files (relative paths) that belong to the corpus or to the unfinished job at `root`."""
    keep: set[str] = set()
    if (root / CORPUS_FILE).is_file():
        keep |= {f for s in load_corpus(root)["shards"] for f in output.shard_files(s)}
    pending = output.read_job(root)
    if pending and pending.get("config_hash"):  # shards the unfinished job already committed
        for index in pending.get("shards", []):
            info = output.committed_shard(root, f"shard-{int(index):06d}", pending["config_hash"])
            if info is not None:
                keep |= set(output.shard_files(info))
    return keep


def vacuum(root: Path, dry_run: bool = False) -> list[str]:
    """Remove temporary files and files of the data folders that neither corpus.json nor an unfinished
    job owns; return their paths (relative to `root`), removed or, with `dry_run`, to be removed."""
    root = Path(root)
    _check_target(root)
    if (root / CORPUS_FILE).is_file():  # a corpus.json this version cannot read: refused before the lock
        load_corpus(root)
    with output.output_lock(root) if not dry_run else nullcontext():
        keep = _owned(root)
        found = output.orphans(root, keep)
        versions = root / output.VERSIONS_DIR
        if versions.is_dir():
            found += [f"{output.VERSIONS_DIR}/{p.name}" for p in sorted(versions.glob(f"*{TMP_SUFFIX}"))]
        if not dry_run:
            output.remove(root, found)
    return found


@dataclass
class RepairResult:
    damaged: dict[str, list[str]] = field(default_factory=dict)  # shard name -> its problems
    moved: list[str] = field(default_factory=list)  # files moved, relative to the corpus
    quarantine: str | None = None  # the folder they went to, relative to the corpus
    samples_lost: int = 0  # kept samples the damaged shards listed
    version: int | None = None  # the new corpus.json version


def repair(root: Path, dry_run: bool = False) -> RepairResult:
    """Find listed shards whose files are not as corpus.json records (missing, truncated, altered, manifest
    unreadable); move their files into quarantine/<UTC time>/ (same relative paths), then write a new
    corpus.json version that lists only the whole shards, the previous one kept in versions/."""
    root = Path(root)
    if not root.is_dir() or not (root / CORPUS_FILE).is_file():
        what = "does not exist" if not root.exists() else f"is not a corpus (no {CORPUS_FILE})"
        raise UsageError(f"{root} {what}")
    load_corpus(root)  # a corpus.json this version cannot read is refused before the lock file is made
    with output.output_lock(root) if not dry_run else nullcontext():
        record = load_corpus(root)
        res = RepairResult()
        for entry in record["shards"]:
            problems = shard_problems(root, entry, classes=record["classes"])
            if problems:
                res.damaged[entry["name"]] = problems
                res.samples_lost += int(entry["samples"])
        if not res.damaged or dry_run:
            return res
        # 1. move the damaged files aside first: a crash after this leaves a corpus.json that still lists
        #    them as missing (repair again finishes the job); never an unlisted file vacuum would delete
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        res.quarantine = f"{QUARANTINE_DIR}/{stamp}"
        for entry in record["shards"]:
            if entry["name"] not in res.damaged:
                continue
            for rel in output.shard_files(entry):
                src = root / rel
                if src.exists():
                    dest = root / res.quarantine / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dest)
                    fsync_dir(src.parent)
                    fsync_dir(dest.parent)
                    res.moved.append(rel)
        # 2. the new version: whole shards only, counts recomputed from their manifests
        whole = [s for s in record["shards"] if s["name"] not in res.damaged]
        rows = [r for s in whole for r in read_manifest(manifest_path(root, s["name"])).to_pylist()]
        summary = summarize(list(record["classes"]), rows)
        old_version = int(record.get("version", 1))
        res.version = old_version + 1
        entry = {
            "kept": -res.samples_lost,
            "shards": [int(Path(n).stem.split("-")[-1]) for n in res.damaged],
            "config_hash": None,
            "repair": {"quarantine": res.quarantine, "problems": res.damaged},
            "synthetic_fraction": summary["synthetic_fraction"],
        }
        output.keep_version(root, old_version)
        write_corpus_json(root, next_version(record, summary, whole, entry))
    return res
