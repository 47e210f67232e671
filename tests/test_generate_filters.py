"""dpp generate with keep rules, rejected rows with reasons, the attempt cap, refilter, and guidance."""

import torch

from flows.cli import main
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.verify import verify_corpus

from .conftest import tree_bytes


def _gen(model, lab, out, *extra, n="4"):
    """A 2-step DDIM job on a tiny model: the thresholds the filter tests pick come from its candidates."""
    argv = ["generate", "--generator", str(model), "--labeler", str(lab), "--n", n, "--seed", "5"]
    argv += ["--shard-size", "4", "--scheduler", "ddim", "--steps", "2", "--batch-size", "4"]
    argv += ["--filter-block", "4", "--quiet"]
    return main([*argv, "--min-target-pixels", "0", *extra, "--out", str(out)])


def _rows(corpus):
    rows = []
    for s in load_corpus(corpus)["shards"]:
        stem = s["name"].split("/")[-1].removesuffix(".tar")
        rows += read_manifest(manifest_path(corpus, stem)).to_pylist()
    return rows


def test_rejected_candidates_keep_rows_with_reasons(tiny32_model_dir, labeler_dir, tmp_path):
    out = tmp_path / "syn"
    assert _gen(tiny32_model_dir, labeler_dir, out, "--drop-fraction", "0.5", n="6") == 0
    rows = _rows(out)
    kept = [r for r in rows if r["kept"]]
    rejected = [r for r in rows if not r["kept"]]
    assert len(kept) == 6 and load_corpus(out)["counts"] == {
        "real": 0,
        "synthetic": 6,
        "rejected": len(rejected),
    }
    # blocks of 4 with half dropped: 2 per block, the 2 most uncertain of their block
    ranked = [r for r in rejected if r["reject_reason"] == "uncertainty_rank"]
    assert len(ranked) == 2 * (len(rows) // 4)
    for r in ranked:
        block = [
            x
            for x in rows
            if x["shard"] == r["shard"] and x["index_in_shard"] // 4 == r["index_in_shard"] // 4
        ]
        assert sum(x["label_uncertainty"] > r["label_uncertainty"] for x in block) <= 1
    assert all(r["reject_reason"] is None and r["image_sha256"] for r in kept)
    assert all(
        r["reject_reason"] in ("uncertainty_rank", "surplus") and r["image_sha256"] is None for r in rejected
    )
    assert all(r["min_fragment_pixels"] is None or r["min_fragment_pixels"] > 0 for r in rows)
    assert verify_corpus(out).ok


def test_attempt_cap_stops_with_the_rule_that_rejected(tiny32_model_dir, labeler_dir, tmp_path, capsys):
    out = tmp_path / "syn"
    rc = _gen(tiny32_model_dir, labeler_dir, out, "--min-target-pixels", "1025", "--max-attempts", "2")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "shard 0: the filter kept 0 of 8 candidates" in err[0] and "target_missing 8" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".syn*"))


def test_refilter_matches_a_fresh_run_with_the_same_rules(tiny32_model_dir, labeler_dir, tmp_path, capsys):
    # a strict run that stores its rejected candidates, then looser rules two ways
    assert (
        _gen(tiny32_model_dir, labeler_dir, tmp_path / "strict", "--drop-fraction", "0.75", "--keep-rejected")
        == 0
    )
    before = tree_bytes(tmp_path / "strict")
    argv = ["refilter", str(tmp_path / "strict"), "--drop-fraction", "0.25", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "re")]) == 0
    assert _gen(tiny32_model_dir, labeler_dir, tmp_path / "fresh", "--drop-fraction", "0.25") == 0
    assert (tmp_path / "re/shards/shard-000000.tar").read_bytes() == (
        tmp_path / "fresh/shards/shard-000000.tar"
    ).read_bytes()
    key = lambda r: r["key"]  # noqa: E731
    re_rows, fresh_rows = sorted(_rows(tmp_path / "re"), key=key), sorted(_rows(tmp_path / "fresh"), key=key)
    fresh_kept = {r["key"] for r in fresh_rows if r["kept"]}
    assert {r["key"] for r in re_rows if r["kept"]} == fresh_kept and len(fresh_kept) == 4
    assert verify_corpus(tmp_path / "re").ok and tree_bytes(tmp_path / "strict") == before
    assert load_corpus(tmp_path / "re")["parents"] == [load_corpus(tmp_path / "strict")["corpus_id"]]
    # tighter than what was rendered: a prefix of what a fresh run keeps, and the summary says short
    capsys.readouterr()
    assert (
        main(["refilter", str(tmp_path / "fresh"), "--drop-fraction", "0.75", "--out", str(tmp_path / "t")])
        == 0
    )
    out = capsys.readouterr().out
    kept = [r["key"] for r in sorted(_rows(tmp_path / "t"), key=key) if r["kept"]]
    strict_kept = {r["key"] for r in _rows(tmp_path / "strict") if r["kept"]}
    assert "short of the plan" in out and 0 < len(kept) < 4 and set(kept) <= fresh_kept & strict_kept
    # without stored rejects, candidates that would now pass are named, not invented
    assert (
        main(["refilter", str(tmp_path / "fresh"), "--drop-fraction", "0", "--out", str(tmp_path / "l")]) == 0
    )
    assert "pass the new rules but their images were not stored" in capsys.readouterr().out
    assert any(r["reject_reason"] == "not_stored" for r in _rows(tmp_path / "l"))


def test_refilter_refuses_a_corpus_not_from_generate(tw_corpus, tmp_path, capsys):
    assert main(["refilter", str(tw_corpus), "--out", str(tmp_path / "x")]) == 2
    assert "not written by dpp generate" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_guidance_raises_the_target_log_probability(tiny32_model_dir):
    """Same seeds, with and without guidance: the classifier believes in the target more with it."""
    from labelers.classifier import ClassifierConfig, NoisyClassifier, confidence
    from pipeline.diffusion.common import from_uint8
    from pipeline.diffusion.load import load_generator
    from pipeline.guidance.classifier import alphas_cumprod
    from pipeline.guidance.guide import Guide, render

    gen = load_generator(str(tiny32_model_dir), "cpu")
    torch.manual_seed(0)
    clf = NoisyClassifier(ClassifierConfig(classes=("disk", "square", "triangle"))).eval()
    seeds, targets = list(range(8)), [("square",)] * 8
    ab = alphas_cumprod(gen)
    plain, _ = render(gen, seeds, "ddim", 5, Guide(clf, clf.cfg.classes, 0.0, ab), targets)
    guided, finite = render(gen, seeds, "ddim", 5, Guide(clf, clf.cfg.classes, 30.0, ab), targets)
    assert finite.all() and (plain != guided).any()
    tm = torch.zeros(8, 3, dtype=torch.bool)
    tm[:, 1] = True
    with torch.no_grad():
        c0 = confidence(clf, from_uint8(plain), tm)
        c1 = confidence(clf, from_uint8(guided), tm)
    assert c1.mean() > c0.mean() and (c1 > c0).float().mean() >= 0.75


def test_verify_checks_the_rejected_tar(tiny32_model_dir, labeler_dir, tmp_path):
    out = tmp_path / "syn"
    assert _gen(tiny32_model_dir, labeler_dir, out, "--drop-fraction", "0.5", "--keep-rejected") == 0
    rec = load_corpus(out)
    rej = rec["shards"][0]["rejected"]
    assert rej["samples"] == rec["counts"]["rejected"] > 0 and verify_corpus(out).ok
    path = out / rej["name"]
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = verify_corpus(out).problems
    assert problems == [f"{rej['name']}: sha256 differs from corpus.json"]


def test_realism_and_classifier_scores_reach_rows_and_rules(
    tiny32_model_dir, labeler_dir, tw_corpus, tmp_path
):
    clf = tmp_path / "clf"
    argv = ["train-classifier", "--generator", str(tiny32_model_dir), "--data", str(tw_corpus)]
    assert main([*argv, "--steps", "3", "--out", str(clf), "--quiet"]) == 0
    out = tmp_path / "syn"
    extra = [
        "--classes",
        "disk=2,square",
        "--classifier",
        str(clf),
        "--guidance-scale",
        "1",
        "--real",
        str(tw_corpus),
    ]
    assert _gen(tiny32_model_dir, labeler_dir, out, *extra, "--drop-fraction", "0") == 0
    rows = _rows(out)
    rec = load_corpus(out)
    ref = rec["filter"]["realism_reference"]
    assert ref["corpus_id"] == load_corpus(tw_corpus)["corpus_id"] and ref["images"] == 40
    assert 0 < ref["real_to_real_distance"]["p50"] <= ref["real_to_real_distance"]["p99"]
    assert rec["classifier"]["scale"] == 1.0 and rec["config"]["class_plan"] == ["disk", "disk", "square"]
    by_index = {r["index_in_shard"]: r for r in rows}
    assert [by_index[i]["target_classes"] for i in range(3)] == [["disk"], ["disk"], ["square"]]
    assert all(0 <= r["classifier_confidence"] <= 1 and r["realism_distance"] > 0 for r in rows)
    # the same job with thresholds between the scores it got: those rules now reject, by name
    conf = sorted(r["classifier_confidence"] for r in rows)
    real = sorted(r["realism_distance"] for r in rows)
    for flag, value, reason in (
        ("--min-confidence", (conf[0] + conf[-1]) / 2, "classifier_confidence"),
        ("--max-realism-distance", (real[0] + real[-1]) / 2, "realism"),
    ):
        o = tmp_path / reason
        assert _gen(tiny32_model_dir, labeler_dir, o, *extra, "--drop-fraction", "0", flag, str(value)) == 0
        assert reason in {r["reject_reason"] for r in _rows(o)}


def test_bad_steering_options_are_refused(tiny32_model_dir, labeler_dir, tmp_path, capsys):
    cases = [
        (["--classes", "hexagon"], "'hexagon' is not a class"),
        (["--guidance-scale", "2", "--classes", "disk"], "--guidance-scale needs --classifier"),
        (["--guidance-scale", "-1"], "-1.0 is not allowed"),
        (["--drop-fraction", "1.5"], "1.5 is not allowed"),
        (["--max-realism-distance", "3"], "--max-realism-distance needs --real"),
    ]
    for extra, needle in cases:
        assert _gen(tiny32_model_dir, labeler_dir, tmp_path / "x", *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (extra, err)
        assert not (tmp_path / "x").exists()


def test_rendering_whole_batches_ahead_of_the_blocks_changes_nothing(tiny32_model_dir, labeler_dir, tmp_path):
    """Candidates are rendered a batch at a time (12) and decided a block at a time (4): the same samples,
    scores and decisions as rendering one block at a time (batch 4)."""
    for batch in ("4", "12"):
        argv = ["--drop-fraction", "0.25", "--batch-size", batch]
        assert _gen(tiny32_model_dir, labeler_dir, tmp_path / batch, *argv, n="6") == 0
    a, b = tmp_path / "4", tmp_path / "12"
    assert (a / "shards/shard-000000.tar").read_bytes() == (b / "shards/shard-000000.tar").read_bytes()
    assert (a / "shards/shard-000001.tar").read_bytes() == (b / "shards/shard-000001.tar").read_bytes()
    strip = [{k: v for k, v in r.items() if k != "config_hash"} for r in _rows(a)]
    assert strip == [{k: v for k, v in r.items() if k != "config_hash"} for r in _rows(b)]
    assert any(not r["kept"] for r in strip)  # the rank rule did reject, so blocks were decided as blocks
