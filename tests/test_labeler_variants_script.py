"""benchmarks/labeler_variants.py: the labeler-settings table, at toy settings."""

import json

from .conftest import load_script


def test_labeler_variants_script_writes_its_table_and_resumes(tmp_path):
    lv = load_script("labeler_variants")
    out = tmp_path / "results.md"
    argv = [
        "--work",
        str(tmp_path / "w"),
        "--out",
        str(out),
        "--shots",
        "2",
        "--n-test",
        "6",
        "--device",
        "cpu",
    ]
    assert lv.main(argv) == 0
    text = out.read_text()
    assert text.count(lv.BEGIN) == 1 and all(name in text for name in lv.VARIANTS)
    results = sorted((tmp_path / "w/results").glob("*.json"))
    assert len(results) == len(lv.VARIANTS)
    r = json.loads(results[0].read_text())
    assert r["class_given"] and r["images"] == 6 and f"**{r['miou']:.3f}**" in text
    # the 4-view head is the baseline's weights with another label-time setting: another labeler id
    ids = {json.loads(p.read_text())["labeler"] for p in results}
    assert len(ids) == len(lv.VARIANTS)
    # a rerun reuses the stored rows (a doctored one shows through)
    r["miou"] = 0.123
    results[0].write_text(json.dumps(r))
    assert lv.main(argv) == 0
    assert "**0.123**" in out.read_text()
