"""Device and dtype: each shard, job.json and corpus.json record where samples were rendered; a resume or
an append on another device or dtype is refused unless --allow-device-change (then both are recorded).
This machine has no GPU, so a corpus "rendered on a GPU" is one whose record says so."""

import json
from collections import Counter

import pyarrow.parquet as pq

from flows.cli import main
from manifests import faults
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, write_corpus_json
from manifests.storage import commit as output

from .conftest import tree_bytes
from .test_flow_generate import _data, _job_file

CPU = {"device": "cpu", "dtype": "float32"}
GPU = {"device": "cuda", "dtype": "float16"}


def _shard_meta(out, name: str) -> dict:
    return json.loads(pq.read_schema(manifest_path(out, name)).metadata[b"dpp"])


def test_append_on_another_device_is_refused_unless_allowed(tmp_path, tiny32_model_dir, labeler_dir, capsys):
    out = tmp_path / "c"
    job = _job_file(tmp_path / "j.toml", tiny32_model_dir, labeler_dir, out, job__n=2)
    assert main(["generate", "--config", str(job), "--quiet"]) == 0
    rec = load_corpus(out)
    assert rec["rendered_on"] == [CPU] and rec["history"][0]["rendered_on"] == [CPU]
    assert _shard_meta(out, "shard-000000")["rendered_on"] == CPU
    # the same corpus as if a GPU machine had written it
    write_corpus_json(
        out, {**rec, "rendered_on": [GPU], "history": [{**rec["history"][0], "rendered_on": [GPU]}]}
    )
    before = tree_bytes(out)
    assert main(["generate", "--config", str(job), "--append", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "rendered on cuda/float16, this run would render on cpu/float32" in err
    assert "--device cuda --dtype float16" in err and "--allow-device-change" in err
    assert tree_bytes(out) == before  # nothing written
    assert main(["generate", "--config", str(job), "--append", "--allow-device-change", "--quiet"]) == 0
    rec = load_corpus(out)
    assert rec["version"] == 2 and rec["rendered_on"] == [CPU, GPU]
    assert [h["rendered_on"] for h in rec["history"]] == [[GPU], [CPU]]
    # the flag is not part of the recipe: the dry run shows the same config hash without it
    capsys.readouterr()

    def hashed(*flags) -> str:  # the plan line (with the config hash) and the hashed config
        assert main(["generate", "--config", str(job), "--append", "--dry-run", *flags]) == 0
        text = capsys.readouterr().out
        return text[text.index("plan:") :]

    assert hashed() == hashed("--allow-device-change")


def test_resume_on_another_device_is_refused_unless_allowed(
    tmp_path, tiny32_model_dir, labeler_dir, monkeypatch, capsys
):
    out = tmp_path / "o"
    job = _job_file(tmp_path / "j.toml", tiny32_model_dir, labeler_dir, out, job__n=4)
    monkeypatch.setattr(faults, "_hits", Counter())
    monkeypatch.setenv(faults.ENV, "shard.sample:enospc@3+")  # shard 0 committed, shard 1 fails
    assert main(["generate", "--config", str(job), "--quiet"]) == 1
    monkeypatch.delenv(faults.ENV)
    pending = output.read_job(out)
    assert pending["rendered_on"] == [CPU]
    output.write_job(out, {**pending, "rendered_on": [GPU]})  # as if the interrupted run had used a GPU
    before = tree_bytes(out)
    capsys.readouterr()
    assert main(["generate", "--config", str(job), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the interrupted job in --out" in err and "cuda/float16" in err and "--allow-device-change" in err
    assert tree_bytes(out) == before
    assert main(["generate", "--config", str(job), "--allow-device-change", "--quiet"]) == 0
    rec = load_corpus(out)
    assert rec["rendered_on"] == [CPU, GPU] and rec["history"][0]["rendered_on"] == [CPU, GPU]
    # the bytes are this machine's in both cases: the same as an uninterrupted run
    fresh = _job_file(tmp_path / "f.toml", tiny32_model_dir, labeler_dir, tmp_path / "fresh", job__n=4)
    assert main(["generate", "--config", str(fresh), "--quiet"]) == 0
    data, ref = _data(out), _data(tmp_path / "fresh")
    assert {k for k in data if data[k] != ref[k]} == {"corpus.json"}  # only the record of where differs
