"""benchmarks/label_efficiency_textured.py: the textured-world table of docs/results.md, at toy settings."""

import json

from .conftest import load_script


def test_script_writes_the_table_section_and_resumes(tmp_path):
    le = load_script("label_efficiency_textured")
    out = tmp_path / "results.md"
    out.write_text("# Results\n\nnotes of another issue\n")
    argv = [
        "--work", str(tmp_path / "w"), "--out", str(out), "--n", "12", "--n-test", "10",
        "--shots", "1,2", "--main-shots", "2", "--steps", "4", "--render-steps", "3", "--device", "cpu",
        "--classifier", str(tmp_path / "none"),
    ]  # fmt: skip
    assert le.main(argv) == 0
    text = out.read_text()
    assert "notes of another issue" in text and text.count(le.BEGIN) == 1
    rows = (
        "K = 2 real annotated only",
        "N = 12 synthetic",
        "K real + N synthetic",
        "upper bound",
        "default keep rules",
    )
    for row in rows:
        assert row in text
    seg = json.loads((tmp_path / "w/results/seg-syn-2-4.json").read_text())
    assert seg["train_images"] == 12 and seg["test_images"] == 10 and f"**{seg['miou']:.3f}**" in text
    # shots are nested: the first scene of shots-2 is shots-1's
    from manifests.storage.reader import iter_samples

    one, two = list(iter_samples(tmp_path / "w/shots-1")), list(iter_samples(tmp_path / "w/shots-2"))
    assert len(two) == 2 and (one[0].image == two[0].image).all()
    # the curve relabels the same pictures: syn-1 and syn-2 hold the same images
    for a, b in zip(iter_samples(tmp_path / "w/syn-1"), iter_samples(tmp_path / "w/syn-2"), strict=True):
        assert (a.image == b.image).all()
    # a rerun reuses stored results (a doctored one shows through) and replaces the section in place
    seg["miou"] = 0.987
    (tmp_path / "w/results/seg-syn-2-4.json").write_text(json.dumps(seg))
    assert le.main(argv) == 0
    text = out.read_text()
    assert "**0.987**" in text and text.count(le.BEGIN) == 1 and "notes of another issue" in text
