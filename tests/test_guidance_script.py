"""benchmarks/guidance.py at toy settings: it writes its section, and its cache never mixes recipes."""

import pytest

from .conftest import load_script


def test_guidance_script_writes_its_section_and_keys_its_cache_by_recipe(tmp_path):
    g = load_script("guidance")
    out = tmp_path / "results.md"
    argv = [
        "--work", str(tmp_path / "w"), "--out", str(out), "--n", "6", "--n-train", "12", "--n-ref", "8",
        "--clf-steps", "2", "--steps", "2", "--scales", "0,1", "--device", "cpu",
    ]  # fmt: skip
    assert g.main(argv) == 0
    text = out.read_text()
    assert "<!-- guidance:begin -->" in text and "| 1 |" in text
    results = sorted(p.name for p in (tmp_path / "w/results").iterdir())
    assert "classifier-dense0.0-n12-steps2.json" in results
    assert "scale-1-n6-steps2-dense0.0-n12-steps2.json" in results
    # the same work folder with a classifier of another recipe: refused, never reused
    with pytest.raises(SystemExit, match="another recipe than dense1.0-n12-steps2"):
        g.main([*argv, "--dense-loss", "1.0"])
