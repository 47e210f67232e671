"""Safe loading (issue 8, item 3): pickle checkpoints only with --allow-pickle; ingest and mix refuse
paths that escape their folders; corpus.json and manifests are validated, with size limits, before use."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main

from .conftest import tree_bytes


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 1. pickle checkpoints ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pickled_model(tiny32_model_dir, tmp_path_factory) -> Path:
    """The tiny 32x32 model saved again with torch.save (diffusion_pytorch_model.bin), no safetensors."""
    from diffusers import DDPMPipeline

    dst = tmp_path_factory.mktemp("pickled") / "model"
    DDPMPipeline.from_pretrained(tiny32_model_dir).save_pretrained(dst, safe_serialization=False)
    assert (dst / "unet/diffusion_pytorch_model.bin").is_file()
    assert not list(dst.rglob("*.safetensors"))
    return dst


def test_pickle_checkpoint_is_refused_without_allow_pickle(pickled_model, tmp_path, capsys):
    weights = pickled_model / "unet/diffusion_pytorch_model.bin"
    g = ["--generator", str(pickled_model)]
    runs = [
        ["sample", *g, "--n", "1", "--seed", "0", "--out", str(tmp_path / "s.png")],
        ["train-labeler", *g, "--data", "x", "--out", str(tmp_path / "lab")],
        ["generate", *g, "--labeler", "lab", "--n", "2", "--seed", "0", "--out", str(tmp_path / "o")],
    ]
    before = tree_bytes(tmp_path)
    for argv in runs:
        assert main([*argv, "--device", "cpu"]) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert str(weights) in line and "pickle checkpoint" in line and "--allow-pickle" in line, line
    assert tree_bytes(tmp_path) == before  # nothing written


def test_allow_pickle_loads_it_and_generation_works(
    pickled_model, tiny32_model_dir, tw_corpus, tmp_path, capsys
):
    from manifests.verify import verify_corpus
    from pipeline.generator import load_generator

    gen = load_generator(str(pickled_model), device="cpu", allow_pickle=True)
    safe = load_generator(str(tiny32_model_dir), device="cpu")
    assert gen.id != safe.id and gen.id.startswith("model@")  # the digest is of the .bin file it loaded
    base = ["sample", "--n", "2", "--seed", "3", "--steps", "2", "--device", "cpu", "--quiet"]
    assert (
        main([*base, "--generator", str(pickled_model), "--allow-pickle", "--out", str(tmp_path / "p.png")])
        == 0
    )
    assert main([*base, "--generator", str(tiny32_model_dir), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "p.png").read_bytes() == (tmp_path / "s.png").read_bytes()  # the same weights
    lab = tmp_path / "lab"
    argv = ["train-labeler", "--generator", str(pickled_model), "--allow-pickle", "--data", str(tw_corpus)]
    assert (
        main([*argv, "--shots", "2", "--members", "2", "--out", str(lab), "--device", "cpu", "--quiet"]) == 0
    )
    argv = [
        "generate",
        "--generator",
        str(pickled_model),
        "--allow-pickle",
        "--labeler",
        str(lab),
        "--n",
        "2",
    ]
    argv += ["--seed", "0", "--steps", "2", "--min-target-pixels", "0", "--out", str(tmp_path / "g")]
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "pickle" not in captured.err.lower() and "warning" not in captured.err.lower(), captured.err
    assert verify_corpus(tmp_path / "g").ok


def test_no_torch_load_of_user_files():
    root = Path(__file__).resolve().parents[1]
    for pkg in ("flows", "pipeline", "labelers", "manifests"):
        for f in (root / pkg).rglob("*.py"):
            text = f.read_text()
            assert "torch.load(" not in text and "pickle.load" not in text, f
