"""Shared fixtures: small real corpora written once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.realdata import write_toyworld


@pytest.fixture(scope="session")
def tw_corpus(tmp_path_factory) -> Path:
    """A 40-sample toy-world corpus in 3 shards (16, 16, 8). Tests must not modify it: copy it first."""
    out = tmp_path_factory.mktemp("tw") / "corpus"
    write_toyworld(out, n=40, seed=7, shard_size=16, quiet=True)
    return out


@pytest.fixture
def tw_copy(tw_corpus, tmp_path) -> Path:
    """A private copy of the session corpus that a test may damage."""
    dst = tmp_path / "corpus"
    shutil.copytree(tw_corpus, dst)
    return dst


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes, to show that a refused command changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}
