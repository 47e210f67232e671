"""Faults (issue 8): a real `dpp generate` process crashed at named points (DPP_FAULT, manifests/faults.py),
a full disk, a NaN from the model, damaged corpora; `dpp vacuum` and `dpp repair`."""

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from flows.cli import main
from manifests import faults
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.storage import commit as output
from manifests.verify import verify_corpus

from .conftest import tree_bytes
from .test_flow_generate import _api_env, _data, _job_file

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"


def _rows(out: Path) -> list[dict]:
    return [
        r
        for s in load_corpus(out)["shards"]
        for r in read_manifest(manifest_path(out, s["name"])).to_pylist()
    ]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, tiny32_model_dir, labeler_dir):
    """A base corpus (4 kept, 2 shards), its job files, and the base + an uninterrupted append of 6."""
    d = tmp_path_factory.mktemp("faults")
    job = _job_file(d / "base.toml", tiny32_model_dir, labeler_dir, d / "base", job__n=4)
    assert main(["generate", "--config", str(job), "--quiet"]) == 0
    shutil.copytree(d / "base", d / "appended")
    more = _job_file(d / "more.toml", tiny32_model_dir, labeler_dir, d / "appended", job__append=True)
    assert main(["generate", "--config", str(more), "--quiet"]) == 0
    return {
        "dir": d,
        "base": d / "base",
        "base_job": job,
        "appended": d / "appended",
        "model": tiny32_model_dir,
    }


def _copy(corpora, tmp_path, name="o") -> Path:
    out = tmp_path / name
    shutil.copytree(corpora["base"], out)
    return out


@pytest.mark.parametrize(
    "fault,shard_files_after",
    [
        ("shard.sample:kill@3", {"shards/shard-000003.tar": False, "manifest/shard-000003.parquet": False}),
        (
            "shard.tar_renamed:kill@2",
            {"shards/shard-000003.tar": True, "manifest/shard-000003.parquet": False},
        ),
        ("atomic:corpus.json:kill", {"shards/shard-000004.tar": True, "manifest/shard-000004.parquet": True}),
    ],
)
def test_crash_at_each_point_then_rerun_gives_the_uninterrupted_corpus(
    corpora, labeler_dir, tmp_path, capsys, fault, shard_files_after
):
    out = _copy(corpora, tmp_path)
    job = _job_file(tmp_path / "more.toml", corpora["model"], labeler_dir, out, job__append=True)
    before = (out / "corpus.json").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "generate", "--config", str(job), "--quiet"],
        cwd=ROOT,
        env={**_api_env(), faults.ENV: fault},
        capture_output=True,
        timeout=240,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    # the crash left the previous version committed and whole; the interrupted shard has no final file
    assert (out / "corpus.json").read_bytes() == before
    assert verify_corpus(out).ok and load_corpus(out)["version"] == 1
    for rel, exists in shard_files_after.items():
        assert (out / rel).exists() == exists, rel
    # vacuum keeps what the unfinished job committed (and what corpus.json lists), removes the rest
    assert main(["vacuum", str(out)]) == 0
    said = capsys.readouterr().out
    assert "shard-000002" not in said and not list(out.rglob("*.tmp"))
    if fault.startswith("shard.tar_renamed"):  # the orphan tar (no manifest) is not adopted blindly
        assert "removed" in said and not (out / "shards/shard-000003.tar").exists()
    # the rerun finishes the job: the same bytes as a run that never crashed, no key twice, planned count
    assert main(["generate", "--config", str(job), "--quiet"]) == 0
    assert _data(out) == _data(corpora["appended"])
    rows = _rows(out)
    assert len({r["key"] for r in rows}) == len(rows) and sum(r["kept"] for r in rows) == 10
    assert verify_corpus(out).ok and load_corpus(out)["version"] == 2


def test_disk_full_mid_shard_is_a_clean_error(corpora, labeler_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    job = _job_file(tmp_path / "j.toml", corpora["model"], labeler_dir, out)
    monkeypatch.setattr(faults, "_hits", Counter())
    monkeypatch.setenv(faults.ENV, "shard.sample:enospc@3+")  # the disk fills during shard 1, and stays full
    assert main(["generate", "--config", str(job), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"dpp generate: error: No space left on device while writing {out}"
    assert len(err) == 2 and "1 committed shard(s) are kept" in err[1] and "rerun the same job" in err[1]
    assert not list(out.rglob("*.tmp")) and not (out / "corpus.json").exists()
    assert not (out / "shards/shard-000001.tar").exists()
    chash = output.read_job(out)["config_hash"]
    assert output.committed_shard(out, "shard-000000", chash) is not None  # the earlier shard is intact
    monkeypatch.delenv(faults.ENV)
    assert main(["generate", "--config", str(job), "--quiet"]) == 0  # space again: the job continues
    fresh = _job_file(tmp_path / "f.toml", corpora["model"], labeler_dir, tmp_path / "fresh")
    assert main(["generate", "--config", str(fresh), "--quiet"]) == 0
    assert _data(out) == _data(tmp_path / "fresh")


def test_non_finite_model_output_is_rejected_and_the_job_goes_on(tiny32_model_dir, labeler_dir, tmp_path):
    from pipeline.diffusion.load import load_generator
    from pipeline.filtering.rules import FilterRules
    from pipeline.generate.run import generate
    from pipeline.labeling.fewshot import load_labeler

    gen = load_generator(str(tiny32_model_dir), "cpu")
    lab = load_labeler(labeler_dir, gen)

    calls = []

    def one_sample_goes_nan(module, inputs, out):  # the first batch's 2 steps: its candidate 1 goes NaN
        calls.append(1)
        if len(calls) <= 2:
            sample = out.sample if hasattr(out, "sample") else out[0]
            sample[1] = float("nan")

    hook = gen.unet.register_forward_hook(one_sample_goes_nan)
    try:
        rules = FilterRules(min_target_pixels=0, drop_fraction=0.0, block=4)
        generate(gen, lab, 6, 5, tmp_path / "o", shard_size=3, steps=2, batch_size=4, rules=rules, quiet=True)
    finally:
        hook.remove()
    rows = _rows(tmp_path / "o")
    rejected = [r for r in rows if not r["kept"]]
    assert sum(r["kept"] for r in rows) == 6
    assert [(r["shard"], r["index_in_shard"], r["reject_reason"]) for r in rejected] == [
        ("shard-000000", 1, "non_finite")
    ]  # exactly the candidate that went NaN; the next candidate took its place
    assert verify_corpus(tmp_path / "o").ok


def _damage(out: Path, how: str) -> str:
    if how == "flipped byte":
        p = out / "shards/shard-000001.tar"
        data = bytearray(p.read_bytes())
        data[len(data) // 3] ^= 0xFF
        p.write_bytes(bytes(data))
    elif how == "truncated manifest":
        p = out / "manifest/shard-000001.parquet"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:  # corpus.json lists a shard that is gone
        (out / "shards/shard-000001.tar").unlink()
    return "shard-000001"


@pytest.mark.parametrize("how", ["flipped byte", "truncated manifest", "missing shard"])
def test_damaged_corpus_is_named_refused_and_repaired(corpora, labeler_dir, tmp_path, capsys, how):
    out = _copy(corpora, tmp_path)
    name = _damage(out, how)
    damaged = tree_bytes(out)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert name in capsys.readouterr().out
    assert main(["audit", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is damaged" in err.splitlines()[0] and name in err and "Traceback" not in err
    job = corpora["base_job"]
    for extra in ([], ["--set", "job.append=true"]):  # neither called done nor built upon
        argv = ["generate", "--config", str(job), "--set", f'job.out="{out}"', "--quiet", *extra]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "is damaged" in err and f"dpp repair {out}" in err and len(err.strip().splitlines()) == 1
    assert tree_bytes(out) == damaged  # refusing changed nothing
    assert main(["repair", str(out), "--dry-run"]) == 1 and tree_bytes(out) == damaged
    assert main(["repair", str(out)]) == 0
    said = capsys.readouterr().out
    assert "version 2" in said and "2 samples" in said
    rec = load_corpus(out)
    assert [s["name"] for s in rec["shards"]] == ["shards/shard-000000.tar"]
    assert rec["counts"]["synthetic"] == 2 and verify_corpus(out).ok
    assert (out / "versions/corpus.v1.json").read_bytes() == damaged["corpus.json"]
    quarantined = {
        str(p.relative_to(q)): p.read_bytes()
        for q in (out / "quarantine").iterdir()
        for p in q.rglob("*")
        if p.is_file()
    }
    assert quarantined == {k: v for k, v in damaged.items() if name in k}  # moved, byte for byte, not lost
    assert main(["audit", str(out)]) == 0 and "repair: damaged shards set aside" in capsys.readouterr().out
    assert (
        main(["generate", "--config", str(job), "--set", f'job.out="{out}"', "--set", "job.append=true"]) == 0
    )
    assert verify_corpus(out).ok and load_corpus(out)["counts"]["synthetic"] == 6


def test_overwrite_replaces_a_damaged_corpus(corpora, tmp_path):
    out = _copy(corpora, tmp_path)
    _damage(out, "flipped byte")
    argv = ["generate", "--config", str(corpora["base_job"]), "--set", f'job.out="{out}"', "--quiet"]
    assert main([*argv, "--overwrite"]) == 0
    assert _data(out) == _data(corpora["base"])


def test_vacuum_removes_orphans_and_temp_files_only(corpora, tmp_path, capsys):
    out = _copy(corpora, tmp_path)
    whole = tree_bytes(out)
    stray = [
        "shards/shard-000009.tar",
        "shards/shard-000001.tar.tmp",
        "manifest/shard-000009.parquet",
        "corpus.json.tmp",
        "versions/corpus.v1.json.tmp",
    ]
    for rel in stray:
        (out / rel).parent.mkdir(exist_ok=True)
        (out / rel).write_bytes(b"left over")
    assert main(["vacuum", str(out), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert all(rel in said for rel in stray) and "would remove 5 file(s)" in said
    assert all((out / rel).exists() for rel in stray)
    assert main(["vacuum", str(out)]) == 0
    assert "removed 5 file(s)" in capsys.readouterr().out
    assert tree_bytes(out) == whole  # the corpus's own files untouched
    assert verify_corpus(out).ok and not verify_corpus(out).notes
    assert main(["vacuum", str(out)]) == 0 and "nothing to remove" in capsys.readouterr().out
    with output.output_lock(out):  # a running job holds the lock: vacuum waits its turn
        assert main(["vacuum", str(out)]) == 2
    assert "being written by another dpp job" in capsys.readouterr().err
