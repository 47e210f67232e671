"""benchmarks/label_efficiency.py: the flat-world label-efficiency table, at toy settings."""

import json

import torch

from .conftest import load_script


def test_script_writes_the_table_section_and_resumes(tmp_path):
    from manifests.format.record import load_corpus
    from manifests.storage.reader import iter_samples

    le = load_script("label_efficiency")
    out = tmp_path / "results.md"
    out.write_text("# Results\n\nnotes of another issue\n")
    argv = [
        "--work", str(tmp_path / "w"), "--out", str(out), "--n", "12", "--n-test", "10",
        "--shots", "1,2", "--main-shots", "2", "--steps", "4", "--render-steps", "2", "--device", "cpu",
        "--ignore-above", "0.05", "--other-guidance", "1",
    ]  # fmt: skip
    assert le.main(argv) == 0
    text = out.read_text()
    assert "(no GPU, 1 torch thread)" in text and torch.get_num_threads() == 1
    assert "notes of another issue" in text and text.count(le.BEGIN) == 1
    for row in (
        "K = 2 real annotated only",
        "self-training on 12 unlabeled real with class tags",
        "N = 12 synthetic, labeled by the head",
        "K real + N synthetic",
        "after the default keep rules",
        "upper bound",
        "| 1 | ",
        "(JSD > 0.05) ignored",
        "N = 12 synthetic rendered without guidance (class-conditional only)",
        "--class-cfg-scale 1.0",
    ):
        assert row in text
    # the guidance row: the same seeds and classes rendered with class CFG 1 instead of the default 3
    unguided = tmp_path / "w/syn-2-dpm2-cfg1.0"
    assert load_corpus(unguided)["config"]["cfg_scale"] == 1.0
    assert load_corpus(tmp_path / "w/syn-2-dpm2")["config"]["cfg_scale"] == 3.0
    pairs = list(zip(iter_samples(tmp_path / "w/syn-2-dpm2"), iter_samples(unguided), strict=True))
    assert [a.meta["target_classes"] for a, _ in pairs] == [b.meta["target_classes"] for _, b in pairs]
    assert any((a.image != b.image).any() for a, b in pairs)
    seg = json.loads((tmp_path / "w/results/seg-syn-2-dpm2-4-test10.json").read_text())
    assert seg["train_images"] == 12 and seg["test_images"] == 10 and f"**{seg['miou']:.3f}**" in text
    st = json.loads((tmp_path / "w/results/seg-shots-2+self-12-p0.9-tags-4-test10.json").read_text())
    assert st["tags"] and st["unlabeled_images"] == 12 and st["train_images"] == 14
    # rendered once: the other K's corpus is the main one relabeled (same images, its own head)
    syn1, syn2 = tmp_path / "w/syn-1-dpm2", tmp_path / "w/syn-2-dpm2"
    assert load_corpus(syn1)["config"]["kind"] == "relabel"
    for a, b in zip(iter_samples(syn1), iter_samples(syn2), strict=True):
        assert (a.image == b.image).all() and a.meta["labeler"] != b.meta["labeler"]
    # the ignore row: the same head with the disagreement threshold, so the same masks where not ignored
    ignored = tmp_path / "w/syn-2-dpm2-ignore0.05"
    n_ignored = 0
    for a, b in zip(iter_samples(syn2), iter_samples(ignored), strict=True):
        keep = b.mask != 255
        n_ignored += int((~keep).sum())
        assert (a.image == b.image).all() and (a.mask[keep] == b.mask[keep]).all()
    assert n_ignored > 0
    # a rerun reuses stored results (a doctored one shows through) and replaces the section in place
    seg["miou"] = 0.987
    (tmp_path / "w/results/seg-syn-2-dpm2-4-test10.json").write_text(json.dumps(seg))
    assert le.main(argv) == 0
    text = out.read_text()
    assert "**0.987**" in text and text.count(le.BEGIN) == 1 and "notes of another issue" in text


def test_two_jobs_write_the_same_table_as_one(tmp_path):
    """`--jobs 2` (a second process sharing --work under per-step locks) changes the wall time, not a digit:
    every step is computed once, by one of the two processes, with the same seeds and one torch thread."""
    le = load_script("label_efficiency")
    argv = [
        "--n", "12", "--n-test", "10", "--shots", "1,2", "--main-shots", "2", "--steps", "4",
        "--render-steps", "2", "--device", "cpu", "--ignore-above", "0.05",
    ]  # fmt: skip
    tables = []
    for jobs in ("1", "2"):
        out = tmp_path / f"results-{jobs}.md"
        assert le.main([*argv, "--work", str(tmp_path / f"w{jobs}"), "--out", str(out), "--jobs", jobs]) == 0
        text = out.read_text()
        tables.append(text[text.index("| training data") :])
    assert "(two processes, one torch thread each)" in text
    assert tables[0] == tables[1]
    # every step of the one-process run has its result in the two-process one
    done = sorted(p.name for p in (tmp_path / "w2/results").glob("*.json"))
    assert done == sorted(p.name for p in (tmp_path / "w1/results").glob("*.json"))
