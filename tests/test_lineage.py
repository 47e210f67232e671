"""Lineage through two rounds of recursive training (real -> generation 1 -> generation 2) and the
audit's lineage tree and warnings."""

import json

from flows.cli import main
from manifests.audit import Thresholds, audit
from manifests.format.record import load_corpus


def _round(data, gen_dir, lab_dir, syn_dir, support):
    argv = [
        "train-generator",
        "--data",
        str(data),
        "--out",
        str(gen_dir),
        "--steps",
        "2",
        "--batch-size",
        "4",
    ]
    assert main([*argv, "--quiet"]) == 0
    argv = ["train-labeler", "--generator", str(gen_dir), "--data", str(support), "--shots", "2"]
    assert main([*argv, "--members", "2", "--out", str(lab_dir), "--quiet"]) == 0
    argv = ["generate", "--generator", str(gen_dir), "--labeler", str(lab_dir), "--n", "3", "--seed", "1"]
    argv += ["--steps", "2", "--batch-size", "4", "--min-target-pixels", "0", "--filter-block", "4"]
    assert main([*argv, "--out", str(syn_dir), "--quiet"]) == 0


def test_generations_propagate_through_two_rounds(tw_corpus, tmp_path, capsys):
    _round(tw_corpus, tmp_path / "g1", tmp_path / "l1", tmp_path / "s1", tw_corpus)
    _round(tmp_path / "s1", tmp_path / "g2", tmp_path / "l2", tmp_path / "s2", tw_corpus)
    g1 = json.loads((tmp_path / "g1/dpp_generator.json").read_text())
    g2 = json.loads((tmp_path / "g2/dpp_generator.json").read_text())
    s1, s2 = load_corpus(tmp_path / "s1"), load_corpus(tmp_path / "s2")
    tw = load_corpus(tw_corpus)
    assert g1["sample_generation"] == 1 and g2["sample_generation"] == 2
    assert g2["training_data"][0]["corpus_id"] == s1["corpus_id"]
    assert g2["training_data"][0]["per_generation"] == {"1": 3} and g2["training_data"][0]["version"] == 1
    assert s1["per_generation"] == {"1": 3} and s2["per_generation"] == {"2": 3}
    assert tw["corpus_id"] in s1["parents"] and s1["corpus_id"] in s2["parents"]
    res = audit([tw_corpus, tmp_path / "s1", tmp_path / "s2"])
    assert res["per_generation"] == {"0": 40, "1": 3, "2": 3}
    lin = res["corpora"][2]["lineage"]
    assert lin["generator"]["trained_on"][0]["corpus_id"] == s1["corpus_id"]
    assert lin["labeler"]["support_corpus"] == tw["corpus_id"]
    # warnings: each names the corpus and why; thresholds are configurable
    assert any(str(tmp_path / "s2") in w and "2 model generation(s) deep" in w for w in res["warnings"])
    assert any(
        str(tmp_path / "s1") in w and "synthetic fraction 1.000 is above 0.5" in w for w in res["warnings"]
    )
    assert not any(str(tw_corpus) in w for w in res["warnings"])
    quiet = audit([tmp_path / "s2"], Thresholds(max_synthetic_fraction=None, max_generation=2, min_real=1))
    assert quiet["warnings"] == [f"{tmp_path / 's2'}: 0 real samples, below the minimum 1"]
    capsys.readouterr()
    assert (
        main(["audit", str(tmp_path / "s2"), "--max-generation", "-1", "--max-synthetic-fraction", "-1"]) == 0
    )
    text = capsys.readouterr().out
    assert "warning" not in text
    assert f"<- trained on {s1['corpus_id']} (gen 1: 3)" in text and "its samples are generation 2" in text
