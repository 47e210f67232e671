"""Whole corpora built in one go (toy world, ingest, mix, refilter): written in a staging folder beside
the output and moved into place at the end, so a failure leaves the output as it was; the counts
checks every writer shares."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from manifests.errors import DppError, UsageError
from manifests.format.layout import (
    CORPUS_FILE,
    config_hash,
    fsync_dir,
)
from manifests.format.record import load_corpus, new_record, summarize, write_corpus_json
from manifests.storage.writer import MAX_SHARD_SIZE, ShardWriter


def check_output(out: Path, config_hash: str, overwrite: bool) -> bool:
    """Decide whether a corpus may be written at `out`. Returns True when `out` already holds this
    exact corpus (same config hash, complete), so there is nothing to do. Refuses anything else that
    is there, unless `overwrite` and it is a corpus (or a lone file), and never touches it here."""
    out = Path(out)
    if not out.exists():
        if not out.parent.exists():
            raise UsageError(f"--out {out}: parent folder {out.parent} does not exist")
        return False
    if out.is_file() or out.is_symlink():
        if overwrite:
            return False
        raise UsageError(f"--out {out} is a file; choose a new folder or pass --overwrite to replace it")
    entries = list(out.iterdir())
    if not entries:
        return False
    if not (out / CORPUS_FILE).exists():
        raise UsageError(
            f"--out {out} holds files but no corpus; choose an empty or new folder "
            "(--overwrite only replaces an existing corpus)"
        )
    try:
        record = load_corpus(out)
    except DppError:
        record = None
    if record and record.get("config_hash") == config_hash and record.get("status") == "complete":
        return True
    if overwrite:
        return False
    other = record.get("corpus_id") if record else "an unreadable corpus"
    raise UsageError(
        f"--out {out} already holds a different corpus ({other}); pass --overwrite to replace it"
    )


@contextmanager
def staged_corpus(out: Path) -> Iterator[Path]:
    """Build a corpus in a hidden folder beside `out`, then swap it in; on failure `out` is untouched."""
    out = Path(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes 0700; a corpus folder gets the usual mode
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.replace(stage, out)
    fsync_dir(out.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


# --- whole corpora ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSample:
    key: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 class indices, 255 = ignore
    meta: dict  # extra KEY.json fields
    row: dict  # extra manifest columns


@dataclass(frozen=True)
class WriteResult:
    out: Path
    record: dict
    already_done: bool  # the output already held this exact corpus; nothing was written


def check_counts(n: int, shard_size: int) -> None:
    if n < 1:
        raise UsageError(f"--n {n} is not allowed; it must be a positive number of samples")
    if not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise UsageError(
            f"--shard-size {shard_size} is not allowed; it must be between 1 and {MAX_SHARD_SIZE}"
        )


def write_shards(
    out: Path,
    n_shards: int,
    fill: Callable[[int, ShardWriter], None],
    classes: list[str],
    config: dict,
    id_prefix: str,
    overwrite: bool = False,
    keep_rejected: bool = False,
    **record_fields,
) -> WriteResult:
    """Write a corpus shard by shard: `fill(index, writer)` puts one shard's samples (kept and rejected) into
    `writer`; the corpus is staged beside `out`, swapped in at the end, corpus.json last. Extra
    `record_fields` (generator, labeler, parents, filter, ...) go into corpus.json."""
    chash = config_hash(config)
    if check_output(out, chash, overwrite):
        return WriteResult(Path(out), load_corpus(out), already_done=True)
    corpus_id = f"{id_prefix}-{chash}"
    metadata = {"corpus_id": corpus_id, "config": config, "config_hash": chash}
    with staged_corpus(out) as stage:
        shards, rows = [], []
        for index in range(n_shards):
            with ShardWriter(stage, index, classes, chash, metadata, keep_rejected) as writer:
                fill(index, writer)
                shards.append(writer.close().as_json())
                rows.extend(writer.rows)
        record = new_record(
            corpus_id, classes, summarize(list(classes), rows), shards, config, chash, record_fields
        )
        write_corpus_json(stage, record)
    return WriteResult(Path(out), record, already_done=False)


def write_corpus(
    out: Path,
    samples: Callable[[], Iterator[CorpusSample]],
    n: int,
    classes: list[str],
    config: dict,
    id_prefix: str,
    shard_size: int,
    overwrite: bool = False,
    quiet: bool = False,
    generator: dict | None = None,
    labeler: dict | None = None,
    parents: list[str] | None = None,
) -> WriteResult:
    """Write `n` samples, all kept, into a corpus at `out`: `shard_size` per shard, in order."""
    stream: Iterator[CorpusSample] | None = None
    bar = None

    def fill(index: int, writer: ShardWriter) -> None:
        nonlocal stream, bar
        if stream is None:
            stream = iter(samples())
            bar = tqdm(total=n, desc=f"writing {Path(out).name}", unit="sample", disable=quiet, leave=False)
        for j in range(min(shard_size, n - index * shard_size)):
            s = next(stream, None)
            if s is None:
                raise ValueError(f"the samples ended before {n}")
            writer.add(s.key, s.image, s.mask, s.meta, index_in_shard=j, **s.row)
            bar.update(1)

    try:
        return write_shards(
            out, -(-n // shard_size), fill, classes, config, id_prefix, overwrite,
            generator=generator, labeler=labeler, parents=parents,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
