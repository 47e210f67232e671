"""The output folder of a generation job: its lock, its job record, committed shards, clean-up, versions.

A job writes straight into its output folder, shard by shard, so that an interrupted job can continue:
  .dpp.lock          held (flock) while a job runs; a second job on the same folder is refused
  job.json           the running job: config hash and plan; present only until the job commits
  shards/, manifest/ one tar and one Parquet manifest per shard; a shard is committed when its manifest
                     (written after the tar) records this job's config hash and the tar's sha256
  corpus.json        written last: the commit point; readers see only the shards it lists
  versions/          earlier corpus.json files of a corpus that jobs appended to (corpus.vN.json)
Temporary files and files of no committed shard are orphans: a resumed job removes them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from manifests.errors import Refused, UsageError
from manifests.format.layout import (
    CORPUS_FILE,
    MANIFEST_DIR,
    SHARDS_DIR,
    TMP_SUFFIX,
    manifest_path,
    sha256_file,
    write_bytes_atomic,
)

LOCK_FILE = ".dpp.lock"
JOB_FILE = "job.json"
VERSIONS_DIR = "versions"
REJECTED_DIR = "rejected"
DATA_DIRS = (SHARDS_DIR, MANIFEST_DIR, REJECTED_DIR)


@contextmanager
def output_lock(out: Path) -> Iterator[bool]:
    """Hold the job lock of `out` (created if missing) for the duration; yields whether `out` was created
    here. The lock is an flock on out/.dpp.lock, so it goes with the process, even on SIGKILL."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {out} is a file; a corpus is a folder")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: parent folder {out.parent} does not exist")
    created = not out.exists()
    out.mkdir(exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise UsageError(
                f"--out {out} is being written by another dpp job (pid {holder}); "
                "wait for it to finish or stop it, then rerun"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield created
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race with a waiting job)


def read_job(out: Path) -> dict | None:
    path = Path(out) / JOB_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return {"config_hash": None}  # unreadable: treated as a job with another config
    return record if isinstance(record, dict) else {"config_hash": None}


def write_job(out: Path, record: dict) -> None:
    write_bytes_atomic(Path(out) / JOB_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def clear_job(out: Path) -> None:
    (Path(out) / JOB_FILE).unlink(missing_ok=True)


def shard_files(info: dict) -> list[str]:
    """Paths (relative to the corpus) of a shard record's files: tar, manifest, rejected tar."""
    stem = Path(info["name"]).stem
    files = [info["name"], f"{MANIFEST_DIR}/{stem}.parquet"]
    if info.get("rejected"):
        files.append(info["rejected"]["name"])
    return files


def committed_shard(out: Path, name: str, chash: str) -> dict | None:
    """The shard record of shard `name` (e.g. shard-000003) when it is committed by the job with config
    hash `chash`: its manifest is readable, records that hash, and its tars still hash as recorded."""
    out = Path(out)
    manifest = manifest_path(out, name)
    if not manifest.is_file():
        return None
    try:
        meta = json.loads(pq.read_schema(manifest).metadata[b"dpp"])
        info = meta["shard"]
        if meta.get("config_hash") != chash:
            return None
        for rec in (info, info.get("rejected")):
            if rec is None:
                continue
            path = out / rec["name"]
            if (
                not path.is_file()
                or path.stat().st_size != rec["bytes"]
                or sha256_file(path) != rec["sha256"]
            ):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def orphans(out: Path, keep: set[str]) -> list[str]:
    """Temporary files, and files of the data folders that no kept shard owns (paths relative to `out`)."""
    out = Path(out)
    found = []
    for d in DATA_DIRS:
        folder = out / d
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            rel = f"{d}/{p.name}"
            if rel not in keep or p.name.endswith(TMP_SUFFIX):
                found.append(rel)
    found += [p.name for p in sorted(out.glob(f"*{TMP_SUFFIX}"))]
    return found


def remove(out: Path, rels: list[str]) -> None:
    for rel in rels:
        p = Path(out) / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def clean(out: Path, keep: set[str]) -> list[str]:
    """Remove temporary files and files of the data folders that no kept shard owns; return their names."""
    found = orphans(out, keep)
    remove(out, found)
    return found


def wipe(out: Path) -> None:
    """Empty `out` for --overwrite: corpus.json first (so a crash never leaves a corpus that lists missing
    shards), then everything else but the lock."""
    out = Path(out)
    (out / CORPUS_FILE).unlink(missing_ok=True)
    for p in sorted(out.iterdir()):
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def keep_version(out: Path, version: int) -> Path:
    """Copy the current corpus.json to versions/corpus.vN.json (whole, atomically) before it is replaced."""
    out = Path(out)
    (out / VERSIONS_DIR).mkdir(exist_ok=True)
    dest = out / VERSIONS_DIR / f"corpus.v{version}.json"
    write_bytes_atomic(dest, (out / CORPUS_FILE).read_bytes())
    return dest


def other_entries(out: Path) -> list[str]:
    return sorted(p.name for p in Path(out).iterdir() if p.name != LOCK_FILE)


def next_shard_index(record: dict) -> int:
    """The first shard number after those a corpus.json lists: where an appended job starts."""
    return 1 + max((int(Path(s["name"]).stem.split("-")[-1]) for s in record["shards"]), default=-1)


# --- what a job does at its output: a pure decision ----------------------------------------------


@dataclass(frozen=True)
class Found:
    """What a job found at its output folder, read with the lock held."""

    record: dict | None  # the committed corpus.json (None: none, or unreadable and --overwrite given)
    problems: tuple[str, ...] = ()  # files the record lists that are not as recorded (verify)
    pending: dict | None = None  # job.json of an unfinished job
    other_entries: bool = False  # anything at the output besides the lock


@dataclass(frozen=True)
class Decision:
    """What to do at the output, in order: wipe it, or drop another job's unfinished shards (the corpus
    stays), or remove a finished job's job.json; then `action`: done (the output already holds this
    job's result), resume (the same job, interrupted), append (to `base`) or new."""

    action: str
    wipe: bool = False
    drop_pending: bool = False
    clear_job: bool = False
    base: dict | None = None  # the corpus.json a resumed or new append builds on
    first_shard: int = 0


def holds(record: dict, config_hash: str, append: bool, pending: dict | None) -> bool:
    """Does this corpus.json already hold the result of the job with `config_hash`?"""
    if append:  # an append is done when the version after its base lists its config
        if pending is None:
            return False
        last = (record.get("history") or [{}])[-1]
        next_version = record.get("version", 1) == pending["base_version"] + 1
        return next_version and last.get("config_hash") == config_hash
    return record.get("config_hash") == config_hash and record.get("status") == "complete"


def decide(
    found: Found, out: Path, config_hash: str, append: bool, overwrite: bool, classes: list[str]
) -> Decision:
    """Begin, resume, append or stop, from what is at `out` (pure: tests/test_commit_decide.py is its
    table). Refuses, in one line, a damaged corpus (unless --overwrite starts again), another job's
    unfinished work or another corpus (unless --overwrite), and an append with nothing to append to."""
    record, pending, wipe, drop, clear = found.record, found.pending, False, False, False
    if record is not None and found.problems:
        if append or not overwrite:
            raise Refused(
                f"--out {out} is damaged ({len(found.problems)} problem(s), first: {found.problems[0]}); "
                f"run `dpp repair {out}` to set the damaged shards aside"
                + ("" if append else ", or pass --overwrite to start again")
            )
        wipe, record, pending = True, None, None  # --overwrite on a damaged corpus: start again
    if pending is not None and pending.get("config_hash") != config_hash:
        if not overwrite:
            raise UsageError(
                f"--out {out} holds an unfinished job with another config "
                f"(hash {pending.get('config_hash')}); rerun that job to finish it, "
                "or pass --overwrite to discard it"
            )
        if pending.get("append") and record is not None:
            drop = True
        else:
            wipe, record = True, None
        clear, pending = True, None
    if pending is not None:  # this same job, interrupted: is it in fact finished?
        if record is not None and holds(record, config_hash, append, pending):
            return Decision("done", wipe, drop, clear_job=True)
        base = record if append else None
        return Decision("resume", wipe, drop, clear, base, pending["first_shard"])
    if append:
        if record is None:
            raise UsageError(f"--append: {out} holds no corpus to append to; run without --append first")
        if list(record["classes"]) != list(classes):
            raise UsageError(
                f"--append: {out} has classes {', '.join(record['classes'])}, the labeler "
                f"{', '.join(classes)}; an appended shard must use the corpus's classes"
            )
        return Decision("append", wipe, drop, clear, record, next_shard_index(record))
    if record is not None and holds(record, config_hash, False, None):
        return Decision("done", wipe, drop, clear)
    if record is not None or (found.other_entries and not wipe and not drop):
        if not overwrite:
            what = f"a different corpus ({record['corpus_id']})" if record else "files but no corpus"
            raise UsageError(
                f"--out {out} already holds {what}; choose a new folder or pass --overwrite to replace it"
            )
        wipe = True
    return Decision("new", wipe, drop, clear)
