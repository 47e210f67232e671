"""The dpp command line: exit codes, one-line errors, and refusing to touch existing data (the table of
bad arguments for every command is tests/test_bad_input.py)."""

import json
import subprocess
import sys
from pathlib import Path

from flows.cli import main

from .conftest import tree_bytes


def test_acceptance_toyworld_1000_verify_audit(tmp_path, capsys):
    out = tmp_path / "X"
    assert main(["toyworld", "--n", "1000", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    assert main(["verify", str(out)]) == 0
    capsys.readouterr()
    assert main(["audit", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 1000 and report["real"] == 1000 and report["synthetic"] == 0
    assert report["synthetic_fraction"] == 0.0
    assert {"per_generation", "per_class", "corpora"} <= set(report)


def test_console_script_runs_and_reports_usage_errors_in_one_line(tmp_path):
    dpp = Path(sys.executable).with_name("dpp")
    r = subprocess.run(
        [str(dpp), "toyworld", "--n", "-3", "--seed", "1", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "-3" in r.stderr and "positive" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_debug_shows_traceback(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nothing"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_refuses_different_corpus_and_leaves_it_byte_identical(tw_copy, capsys):
    before = tree_bytes(tw_copy)
    assert main(["toyworld", "--n", "10", "--seed", "1", "--out", str(tw_copy)]) == 2
    assert "already holds a different corpus" in capsys.readouterr().err
    assert tree_bytes(tw_copy) == before


def test_same_corpus_again_is_a_no_op(tw_copy, capsys):
    before = tree_bytes(tw_copy)
    assert main(["toyworld", "--n", "40", "--seed", "7", "--shard-size", "16", "--out", str(tw_copy)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert tree_bytes(tw_copy) == before


def test_overwrite_replaces_a_corpus(tw_copy):
    assert (
        main(["toyworld", "--n", "10", "--seed", "1", "--out", str(tw_copy), "--overwrite", "--quiet"]) == 0
    )
    rec = json.loads((tw_copy / "corpus.json").read_text())
    assert rec["counts"]["real"] == 10 and len(rec["shards"]) == 1
    assert not (tw_copy / "shards/shard-000002.tar").exists()
    assert main(["verify", str(tw_copy)]) == 0


def test_refuses_a_file_and_a_folder_that_is_not_a_corpus(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert main(["toyworld", "--n", "3", "--seed", "1", "--out", str(f)]) == 2
    assert f.read_text() == "keep me" and "is a file" in capsys.readouterr().err
    d = tmp_path / "stuff"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert main(["toyworld", "--n", "3", "--seed", "1", "--out", str(d), *extra]) == 2
        assert "holds files but no corpus" in capsys.readouterr().err
    assert tree_bytes(d) == {"notes.txt": b"mine"}


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["toyworld", "--n", "3", "--seed", "1", "--out", str(tmp_path / "empty"), "--quiet"]) == 0
    assert (tmp_path / "empty/corpus.json").exists()


def test_verify_exit_code_names_bad_shard(tw_copy, capsys):
    (tw_copy / "shards/shard-000000.tar").write_bytes(b"")
    assert main(["verify", str(tw_copy)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("BAD") and "shards/shard-000000.tar" in out


def test_demo_runs_the_main_job(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n", "24", "--shard-size", "10", "--samples", "6", "--shots", "2"]
    argv += ["--style", "flat"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "[8/8] preview" in text and "OK " in text and "filter: kept 6 of 20 candidates" in text
    assert "rendering 24 labeled flat scenes" in text
    assert json.loads((out / "real/corpus.json").read_text())["config"]["style"] == "flat"
    assert (out / "synthetic/croissant.json").is_file() and (out / "real/croissant.json").is_file()
    assert "guidance scale 10.0" in text and "classifier@" in text
    from pipeline.generate.settings import read_job_file

    job = read_job_file(out / "job.toml")  # the generation step as a job file a user can rerun
    assert job["guidance.classifier"] == "toyworld" and job["job.n"] == 6
    for name in ("preview-real.png", "preview-synthetic.png"):
        assert (out / name).stat().st_size > 1000
    report = json.loads((out / "audit.json").read_text())
    assert report["real"] == 24 and report["synthetic"] == 6
    assert report["per_generation"] == {"0": 24, "1": 6}
    before = (
        (out / "labeler/head.safetensors").stat().st_mtime_ns,
        (out / "synthetic/corpus.json").read_bytes(),
    )
    assert main([*argv, "--quiet"]) == 0  # a rerun on the same folder reuses what is there
    after = (
        (out / "labeler/head.safetensors").stat().st_mtime_ns,
        (out / "synthetic/corpus.json").read_bytes(),
    )
    assert before == after


def test_demo_style_reaches_its_real_corpus(tmp_path, capsys):
    """`dpp demo --style textured` renders the textured world in step 1 (the rest of the demo is the test
    above): the demo's own step on its parsed arguments, which writes what `dpp toyworld` would."""
    from flows.cli import build_parser, demo

    args = build_parser().parse_args(["demo", "--out", str(tmp_path), "--n", "5", "--style", "textured"])
    demo._real_corpus(args, tmp_path / "real")
    assert "rendering 5 labeled textured scenes" in capsys.readouterr().out
    argv = ["toyworld", "--n", "5", "--seed", "0", "--shard-size", "250", "--style", "textured"]
    assert main([*argv, "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    rec = json.loads((tmp_path / "real/corpus.json").read_text())
    assert rec == json.loads((tmp_path / "ref/corpus.json").read_text()) and "style" not in rec["config"]
