"""The commit protocol's decision (manifests/storage/commit.py `decide`) as a table: what a job finds at
its output -> what it does. The fault and resume tests (test_faults.py, test_lineage.py) check the acts."""

from pathlib import Path

import pytest

from manifests.errors import Refused, UsageError
from manifests.storage.commit import Decision, Found, decide

OUT = Path("/data/out")
CLASSES = ["background", "disk"]
H, OTHER = "h-this-job", "h-other-job"


def corpus(config_hash=OTHER, status="complete", version=1, history=None, classes=CLASSES, shards=2):
    return {
        "corpus_id": f"synthetic-{config_hash}",
        "config_hash": config_hash,
        "status": status,
        "version": version,
        "history": history or [],
        "classes": classes,
        "shards": [{"name": f"shards/shard-{i:06d}.tar"} for i in range(shards)],
    }


def job(config_hash=H, append=False, first=0, base_version=None):
    return {"config_hash": config_hash, "append": append, "first_shard": first, "base_version": base_version}


APPENDED = corpus(version=2, history=[{"config_hash": OTHER}, {"config_hash": H}])

# (case, found, append, overwrite, expected Decision or (error type, message fragment))
CASES = [
    ("empty folder", Found(None), False, False, Decision("new")),
    ("this job's corpus, complete", Found(corpus(H)), False, False, Decision("done")),
    ("another corpus", Found(corpus(), other_entries=True), False, False, (UsageError, "a different corpus")),
    ("another corpus, --overwrite", Found(corpus(), other_entries=True), False, True, Decision("new", wipe=True)),
    ("files, no corpus", Found(None, other_entries=True), False, False, (UsageError, "files but no corpus")),
    ("files, no corpus, --overwrite", Found(None, other_entries=True), False, True, Decision("new", wipe=True)),
    ("damaged", Found(corpus(H), ("shard-000001.tar: sha256",)), False, False, (Refused, "or pass --overwrite")),
    ("damaged, --overwrite", Found(corpus(H), ("x",), other_entries=True), False, True, Decision("new", wipe=True)),
    ("damaged, --append", Found(corpus(), ("x",)), True, True, (Refused, "dpp repair")),
    ("this job interrupted", Found(None, pending=job(first=0), other_entries=True), False, False,
     Decision("resume", first_shard=0)),
    ("this append interrupted", Found(corpus(), pending=job(append=True, first=2, base_version=1)), True, False,
     Decision("resume", base=corpus(), first_shard=2)),
    ("this append committed, job.json left", Found(APPENDED, pending=job(append=True, first=2, base_version=1)),
     True, False, Decision("done", clear_job=True)),
    ("another job unfinished", Found(None, pending=job(OTHER)), False, False, (UsageError, "another config")),
    ("another job unfinished, --overwrite", Found(None, pending=job(OTHER), other_entries=True), False, True,
     Decision("new", wipe=True, clear_job=True)),
    ("another append unfinished, --overwrite, append", Found(corpus(), pending=job(OTHER, append=True)), True,
     True, Decision("append", drop_pending=True, clear_job=True, base=corpus(), first_shard=2)),
    ("another append unfinished, --overwrite, new", Found(corpus(), pending=job(OTHER, append=True)), False,
     True, Decision("new", wipe=True, drop_pending=True, clear_job=True)),
    ("append to nothing", Found(None), True, False, (UsageError, "holds no corpus to append to")),
    ("append, other classes", Found(corpus(classes=["background", "cat"])), True, False,
     (UsageError, "must use the corpus's classes")),
    ("append", Found(corpus(shards=3)), True, False, Decision("append", base=corpus(shards=3), first_shard=3)),
]  # fmt: skip


@pytest.mark.parametrize("case, found, append, overwrite, want", CASES, ids=[c[0] for c in CASES])
def test_decide(case, found, append, overwrite, want):
    if isinstance(want, Decision):
        assert decide(found, OUT, H, append, overwrite, CLASSES) == want
    else:
        error, fragment = want
        with pytest.raises(error, match=fragment):
            decide(found, OUT, H, append, overwrite, CLASSES)


def test_decide_reads_nothing_on_disk(tmp_path):
    """Pure: the same answer for a folder that does not exist and one that holds files."""
    (tmp_path / "stray.txt").write_text("x")
    for out in (tmp_path, tmp_path / "missing"):
        assert decide(Found(None), out, H, False, False, CLASSES) == Decision("new")
