"""dpp study collapse at the smallest size: two policies, two generations, resumable; the control arm and
seeds."""

import json

from flows.cli import main
from manifests.format.record import load_corpus


def test_collapse_study_runs_both_policies_and_resumes(tmp_path, capsys):
    argv = ["study", "collapse", "--out", str(tmp_path / "s"), "--generations", "2", "--n-real", "12"]
    argv += ["--n-synthetic", "5", "--n-eval", "8", "--finetune-steps", "2", "--steps", "2", "--shots", "2"]
    argv += ["--seg-steps", "2"]
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
    # each step's seconds are recorded once, when first computed (the section's compute time adds them)
    timing = json.loads((tmp_path / "s/replace/g2/timing.json").read_text())
    assert set(timing) == {"labeler", "samples", "measure", "segmenter-2", "diversity-5"}
    assert set(json.loads((tmp_path / "s/g1/timing.json").read_text())) == set(timing) | {"finetune"}
    assert all(v >= 0 for v in timing.values())


def test_collapse_study_refuses_to_resume_with_other_settings(tmp_path, capsys):
    """Finished steps are reused by name, so a rerun with a setting they depend on would mix two
    studies: it is refused, before anything is written."""
    from .conftest import tree_bytes

    argv = ["study", "collapse", "--out", str(tmp_path / "s"), "--generations", "1", "--n-real", "6"]
    argv += ["--n-synthetic", "4", "--n-eval", "6", "--steps", "2", "--shots", "2", "--seg-steps", "2"]
    assert main([*argv, "--policies", "replace", "--device", "cpu", "--quiet"]) == 0
    settings = json.loads((tmp_path / "s/study-settings.json").read_text())
    assert (settings["n_synthetic"], settings["n_real"], settings["generator"]) == (4, 6, "toyworld")
    before = tree_bytes(tmp_path / "s")
    capsys.readouterr()
    argv[argv.index("--n-synthetic") + 1] = "5"
    assert main([*argv, "--policies", "replace", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--n-synthetic 5 is not allowed" in err and "made with 4" in err
    assert tree_bytes(tmp_path / "s") == before
    # more seeds, policies or generations only add steps: allowed
    argv[argv.index("--n-synthetic") + 1] = "4"
    assert main([*argv, "--policies", "replace,fresh", "--device", "cpu", "--quiet"]) == 0


def test_collapse_study_control_arm_and_seeds(tmp_path, capsys):
    import pyarrow.parquet as pq

    from manifests.format.layout import manifest_path

    root = tmp_path / "s"
    argv = ["study", "collapse", "--out", str(root), "--generations", "2", "--n-real", "6"]
    argv += ["--n-synthetic", "4", "--n-eval", "6", "--finetune-steps", "1", "--steps", "2", "--shots", "2"]
    argv += [
        "--policies",
        "fresh,control",
        "--seeds",
        "0,1",
        "--seg-steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads((root / "collapse.json").read_text())
    rows = {(r["policy"], r["seed"], r["generation"]): r for r in result["rows"]}
    assert set(rows) == {(p, s, g) for p in ("fresh", "control") for s in (0, 1) for g in (1, 2)}
    assert result["config"]["seeds"] == [0, 1]
    # each seed is its own repeat: seed 0 in OUT (the layout before seeds), seed 1 in OUT/seed-1
    assert (root / "control/g2/generator").is_dir() and (root / "seed-1/control/g2/generator").is_dir()
    for seed_dir in (root, root / "seed-1"):
        control, fresh = load_corpus(seed_dir / "control/train-g2"), load_corpus(seed_dir / "fresh/train-g2")
        assert (control["counts"]["real"], control["counts"]["synthetic"]) == (10, 0)
        assert (fresh["counts"]["real"], fresh["counts"]["synthetic"]) == (6, 4)  # the same size
        origins = set()
        for s in control["shards"]:
            origins |= set(
                pq.read_table(manifest_path(seed_dir / "control/train-g2", s["name"]))["origin"].to_pylist()
            )
        assert origins == {"real"}
    assert (rows[("control", 0, 2)]["train_real"], rows[("control", 0, 2)]["train_synthetic"]) == (10, 0)
    for r in rows.values():
        assert 0.0 <= r["seg_miou"] <= 1.0
        assert 1.0 <= r["diversity"] <= 4.0  # a Vendi score of 4 images (the smallest training set)
    assert rows[("fresh", 0, 1)]["diversity"] == rows[("control", 0, 1)]["diversity"]  # one generation 1
    # the table: mean and range over the two seeds per (policy, generation), and the correlation under it
    summary = {(e["policy"], e["generation"]): e for e in result["summary"]}
    assert set(summary) == {(p, g) for p in ("fresh", "control") for g in (1, 2)}
    e = summary[("control", 2)]
    recalls = [rows[("control", s, 2)]["recall"] for s in (0, 1)]
    assert e["recall"]["min"] == min(recalls) and e["recall"]["max"] == max(recalls)
    assert "| control | 2 | 10 + 0 |" in out and "range (min–max)" in out
    corr = result["correlation"]
    assert corr["pairs"] == 4  # 2 arms x 2 seeds x (generation 1 -> 2)
    for m in ("precision", "recall", "frechet_distance", "seg_miou"):
        assert corr[f"diversity_vs_next_{m}"] is None or -1.0 <= corr[f"diversity_vs_next_{m}"] <= 1.0
    assert "Pearson r over 4" in out
    # a rerun finds every step done (no model is trained again) and gives the same table
    before = (root / "collapse.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("dpp_generator.json")}
    assert len(stamps) == 4
    assert main(argv) == 0
    assert (root / "collapse.md").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in root.rglob("dpp_generator.json")} == stamps
    # the results section, written by the study itself: every step is done, so this only writes
    from benchmarks.collapse_study import BEGIN, END, compute_seconds
    from benchmarks.collapse_study import main as section_main

    results = tmp_path / "results.md"
    results.write_text(f"# Results\n\nby hand\n\n{BEGIN}\nold\n{END}\n\nreading, by hand\n")
    flags = ["--work", str(root), "--out", str(results), "--plot", str(tmp_path / "collapse.png")]
    flags += ["--generations", "2", "--policies", "fresh,control", "--seeds", "0,1", "--n-real", "6"]
    flags += ["--n-synthetic", "4", "--n-eval", "6", "--finetune-steps", "1", "--steps", "2", "--shots", "2"]
    flags += ["--seg-steps", "2", "--device", "cpu"]
    assert section_main(flags) == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("dpp_generator.json")} == stamps
    text = results.read_text()
    assert text.startswith("# Results\n\nby hand\n\n") and text.endswith("reading, by hand\n")
    section = text.split(BEGIN)[1].split(END)[0]
    assert "old" not in section.split("\n")
    assert f"`python benchmarks/collapse_study.py {' '.join(flags)}` at revision " in section
    assert before.strip() in section  # the study's own table, with its range and correlation
    assert "![" in section and "(collapse.png)" in section
    assert (tmp_path / "collapse.png").read_bytes() == (root / "collapse.png").read_bytes()
    seconds = compute_seconds(root, (0, 1))
    assert set(seconds) == {0, 1} and all(v > 0 for v in seconds.values())
    seed1 = sum(sum(json.loads(p.read_text()).values()) for p in (root / "seed-1").rglob("timing.json"))
    assert seconds[1] == seed1  # seed 1's folder is inside seed 0's, and counted only once


def test_correlation_pairs_generation_g_with_g_plus_1_known_answer():
    """Diversity at g is paired with quality at g + 1 of the same arm and seed; r on constructed rows."""
    from pipeline.studies.collapse import correlations

    def row(policy, seed, g, diversity, recall):
        return {"policy": policy, "seed": seed, "generation": g, "diversity": diversity, "recall": recall,
                "precision": 0.5, "frechet_distance": 0.1 * g, "seg_miou": recall / 2}  # fmt: skip

    # recall at g + 1 = 2 * diversity at g - 4 (an exact line); a pair never crosses arms or seeds
    rows = [row("replace", 0, 1, 2.0, 0.9), row("replace", 0, 2, 2.1, 0.0), row("replace", 0, 3, 2.3, 0.2)]
    rows += [row("fresh", 1, 1, 2.2, 0.9), row("fresh", 1, 2, 2.4, 0.4), row("fresh", 1, 3, 9.9, 0.8)]
    corr = correlations(rows)
    assert corr["pairs"] == 4  # (replace 1->2, 2->3), (fresh 1->2, 2->3); the g = 3 rows lead nowhere
    assert corr["diversity_vs_next_recall"] == 1.0 and corr["diversity_vs_next_seg_miou"] == 1.0
    assert corr["diversity_vs_next_precision"] is None  # a constant has no correlation
    # fewer than 3 pairs: no figure
    assert correlations(rows[:3])["diversity_vs_next_recall"] is None
