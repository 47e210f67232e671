"""dpp study collapse at the smallest size: two policies, two generations, resumable."""

import json

from flows.cli import main
from manifests.format.record import load_corpus


def test_collapse_study_runs_both_policies_and_resumes(tmp_path, capsys):
    argv = ["study", "collapse", "--out", str(tmp_path / "s"), "--generations", "2", "--n-real", "12"]
    argv += ["--n-synthetic", "5", "--n-eval", "8", "--finetune-steps", "2", "--steps", "2", "--shots", "2"]
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "s/collapse.json").read_text())
    rows = {(r["policy"], r["generation"]): r for r in result["rows"]}
    assert set(rows) == {("replace", 1), ("replace", 2), ("accumulate", 1), ("accumulate", 2)}
    assert rows[("replace", 1)]["precision"] == rows[("accumulate", 1)]["precision"]  # one generation 1
    assert (rows[("replace", 2)]["train_real"], rows[("replace", 2)]["train_synthetic"]) == (0, 5)
    assert (rows[("accumulate", 2)]["train_real"], rows[("accumulate", 2)]["train_synthetic"]) == (12, 5)
    assert (
        rows[("replace", 2)]["sample_generation"] == 2 and rows[("accumulate", 2)]["sample_generation"] == 2
    )
    assert load_corpus(tmp_path / "s/replace/g2/synthetic")["per_generation"] == {"2": 5}
    assert "| replace | 2 | 0 + 5 |" in out and (tmp_path / "s/collapse.md").is_file()
    from PIL import Image

    from pipeline.studies.collapse import COLOURS

    colours = {c for _, c in Image.open(tmp_path / "s/collapse.png").convert("RGB").getcolors(1 << 16)}
    assert COLOURS["replace"] in colours and COLOURS["accumulate"] in colours  # one line per policy
    # a rerun finds every step done and gives the same table
    before = (tmp_path / "s/collapse.md").read_text()
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    assert (tmp_path / "s/collapse.md").read_text() == before
    # --policies picks the policies run and tabled (every step is done, so this costs no training)
    capsys.readouterr()
    assert main([*argv, "--policies", "replace", "--device", "cpu", "--quiet"]) == 0
    result = json.loads((tmp_path / "s/collapse.json").read_text())
    assert [(r["policy"], r["generation"]) for r in result["rows"]] == [("replace", 1), ("replace", 2)]
    assert result["config"]["policies"] == ["replace"] and "accumulate" not in capsys.readouterr().out
