"""`dpp relabel`: a generated corpus labeled again by another head, from its stored images, equals a fresh
`dpp generate` with that head on the same seeds; what it cannot redo (images not stored) it says."""

import json

import pytest

from flows.cli import main
from manifests.format.record import load_corpus, read_manifest
from manifests.storage.reader import iter_samples, tar_members
from manifests.verify import verify_corpus

from .conftest import tree_bytes


def _labeler(model, corpus, out, shots, seed):
    argv = ["train-labeler", "--generator", str(model), "--data", str(corpus), "--shots", shots]
    assert main([*argv, "--seed", seed, "--members", "2", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def heads(tiny_cond_dir, tw_corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("heads")
    return _labeler(tiny_cond_dir, tw_corpus, base / "a", "2", "0"), _labeler(
        tiny_cond_dir, tw_corpus, base / "b", "3", "1"
    )


def _generate(model, lab, out, *extra):
    argv = [
        "generate", "--generator", str(model), "--labeler", str(lab), "--n", "6", "--seed", "2",
        "--shard-size", "4", "--steps", "3", "--batch-size", "4", "--filter-block", "4",
        "--min-target-pixels", "0", "--classes", "balanced", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def _rows(corpus):
    rec = load_corpus(corpus)
    out = {}
    for s in rec["shards"]:
        name = s["name"].split("/")[-1].replace(".tar", ".parquet")
        for r in read_manifest(corpus / "manifest" / name).to_pylist():
            out[r["key"]] = r
    return out


def test_relabel_equals_a_fresh_generate_with_the_new_labeler(tiny_cond_dir, heads, tmp_path, capsys):
    a, b = heads
    # the rank rule drops the most uncertain of every 4 candidates, so both heads reject some; the source
    # keeps its rejected images, so every candidate a fresh run with head b needs is stored
    rules = ["--drop-fraction", "0.25", "--keep-rejected"]
    src = _generate(tiny_cond_dir, a, tmp_path / "by-a", *rules)
    fresh = _generate(tiny_cond_dir, b, tmp_path / "by-b", *rules)
    before = tree_bytes(src)
    capsys.readouterr()
    assert (
        main(["relabel", str(src), "--labeler", str(b), "--out", str(tmp_path / "re"), "--device", "cpu"])
        == 0
    )
    out = capsys.readouterr().out
    assert "relabel: 6 of 12 stored candidates kept (planned 6)" in out and "short" not in out
    re = tmp_path / "re"
    assert tree_bytes(src) == before  # the source is read, never written
    assert verify_corpus(re).ok

    mine, theirs = list(iter_samples(re)), list(iter_samples(fresh))
    assert [s.key for s in mine] == [s.key for s in theirs]
    for x, y in zip(mine, theirs, strict=True):
        assert (x.image == y.image).all() and (x.mask == y.mask).all()
        assert {k: v for k, v in x.meta.items() if k != "relabeled_from"} == y.meta
    lab_a = json.loads((a / "labeler.json").read_text())
    assert mine[0].meta["relabeled_from"].startswith("pixelhead@") and lab_a["support_keys"]
    # kept and rejected alike: the same decisions, reasons and scores as the fresh run
    ignore = {"config_hash", "json_sha256"}
    ra, rb = _rows(re), _rows(fresh)
    assert ra.keys() == rb.keys()
    for k in ra:
        assert {c: v for c, v in ra[k].items() if c not in ignore} == {
            c: v for c, v in rb[k].items() if c not in ignore
        }
    # the images are the source's bytes, copied; the masks are new
    src_members = tar_members(src / "shards/shard-000000.tar")
    for key, m in tar_members(re / "shards/shard-000000.tar").items():
        if key in src_members:
            assert m["png"] == src_members[key]["png"]
    assert any(ra[k]["mask_sha256"] != _rows(src)[k]["mask_sha256"] for k in ra)
    # provenance names both labelers and the source corpus
    rec, srec = load_corpus(re), load_corpus(src)
    assert rec["labeler"]["id"] == ra[next(iter(ra))]["labeler_id"] != srec["labeler"]["id"]
    assert rec["relabeled_from"] == {"corpus_id": srec["corpus_id"], "labeler": srec["labeler"]}
    assert srec["corpus_id"] in rec["parents"] and rec["config"]["kind"] == "relabel"
    # the same command again finds its work done; the result can be refiltered like a generated corpus
    assert main(["relabel", str(src), "--labeler", str(b), "--out", str(re), "--quiet"]) == 0
    assert main(["refilter", str(re), "--out", str(tmp_path / "rf"), "--drop-fraction", "0", "--quiet"]) == 0


def test_relabel_says_what_it_cannot_redo(tiny_cond_dir, heads, tmp_path, capsys):
    a, b = heads
    src = _generate(tiny_cond_dir, a, tmp_path / "by-a", "--drop-fraction", "0.25")  # rejects not stored
    capsys.readouterr()
    # without the rank rule, a fresh run keeps the first candidates, one in four of which the source
    # rejected and did not store: recorded as not_stored, and later candidates take their place
    argv = ["relabel", str(src), "--labeler", str(b), "--out", str(tmp_path / "r1"), "--drop-fraction", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "would be needed but their images were not stored" in out
    rows = _rows(tmp_path / "r1")
    assert any(r["reject_reason"] == "not_stored" for r in rows.values())
    assert sum(r["kept"] for r in rows.values()) == 6
    # rules no candidate passes: every shard short, said so, and the corpus still verifies
    argv = [
        "relabel",
        str(src),
        "--labeler",
        str(b),
        "--out",
        str(tmp_path / "r2"),
        "--min-target-pixels",
        "5000",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6 short of the plan" in out and "target_missing" in out
    assert verify_corpus(tmp_path / "r2").ok
    # other rules into an existing relabeled corpus: refused, unless --overwrite
    argv[-1] = "0"
    assert main(argv) == 2
    assert "already holds a different corpus" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--generator", str(tiny_cond_dir), "--quiet"]) == 0
    assert load_corpus(tmp_path / "r2")["config"]["rules"]["min_target_pixels"] == 0


def test_relabel_refuses_a_labeler_or_generator_that_does_not_fit(
    tiny_cond_dir, tiny32_model_dir, heads, labeler_dir, tmp_path, capsys
):
    a, _ = heads
    src = _generate(tiny_cond_dir, a, tmp_path / "by-a", "--drop-fraction", "0")
    capsys.readouterr()
    # a labeler of another generator
    assert main(["relabel", str(src), "--labeler", str(labeler_dir), "--out", str(tmp_path / "x")]) == 2
    assert "was trained on generator" in capsys.readouterr().err
    # a --generator that is not the one the corpus was drawn by
    argv = ["relabel", str(src), "--labeler", str(a), "--out", str(tmp_path / "x")]
    assert main([*argv, "--generator", str(tiny32_model_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--generator {tiny32_model_dir} holds" in err and "was drawn by" in err
    assert not (tmp_path / "x").exists()
    # an --out holding another corpus is left alone: here, the source itself
    before = tree_bytes(src)
    assert main(["relabel", str(src), "--labeler", str(a), "--out", str(src)]) == 2
    assert "already holds a different corpus" in capsys.readouterr().err
    assert tree_bytes(src) == before
