"""Shared fixtures: small real corpora written once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.prefect_env import quiet_prefect_env
from pipeline.realdata.ingest import write_toyworld

quiet_prefect_env()  # before prefect is imported anywhere: warnings only, no analytics


@pytest.fixture(scope="session", autouse=True)
def prefect_backend(tmp_path_factory):
    """One Prefect test backend (a temporary server and database) for the whole run: flows in tests
    never touch the user's Prefect home or a network."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tw_corpus(tmp_path_factory) -> Path:
    """A 40-sample toy-world corpus in 3 shards (16, 16, 8). Tests must not modify it: copy it first."""
    out = tmp_path_factory.mktemp("tw") / "corpus"
    write_toyworld(out, n=40, seed=7, shard_size=16, quiet=True)
    return out


@pytest.fixture
def tw_copy(tw_corpus, tmp_path) -> Path:
    """A private copy of the session corpus that a test may damage."""
    dst = tmp_path / "corpus"
    shutil.copytree(tw_corpus, dst)
    return dst


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes, to show that a refused command changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def build_tiny_model(folder: Path, seed: int = 0, size: int = 16, classes: tuple[str, ...] = ()) -> Path:
    """A tiny random diffusers DDPM pipeline folder (unet/ + scheduler/), built in-process; with `classes`,
    class-conditional (labels 0..K-1 and K = no class), its class names in dpp_generator.json."""
    import json

    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=len(classes) + 1 if classes else None,
    )
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder, safe_serialization=True)
    if classes:
        info = {"class_labels": {"classes": list(classes)}, "sample_generation": 1}
        (Path(folder) / "dpp_generator.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny32_model_dir(tmp_path_factory) -> Path:
    """A tiny random model at the toy world's 32x32, for the labeler tests."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny32") / "model", size=32)


@pytest.fixture(scope="session")
def tiny_cond_dir(tmp_path_factory) -> Path:
    """A tiny random class-conditional model at 32x32 drawing disk, square, triangle."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tinycond") / "model", size=32, classes=("disk", "square", "triangle")
    )


@pytest.fixture(scope="session")
def labeler_dir(tiny32_model_dir, tw_corpus, tmp_path_factory) -> Path:
    """A small labeler (2 shots, 2 members) on the tiny 32x32 model, trained once per run."""
    from flows.cli import main

    out = tmp_path_factory.mktemp("lab") / "lab"
    argv = ["train-labeler", "--generator", str(tiny32_model_dir), "--data", str(tw_corpus), "--shots", "2"]
    assert main([*argv, "--members", "2", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion folder (conditional UNet, VAE, CLIP text model, a character-level
    tokenizer from a vocabulary written in code), 32x32 images, built in-process: nothing downloaded."""
    from pipeline.diffusion.text import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tinysd") / "sd")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The results scripts pin torch to one thread (benchmarks/common.py); give the next test its own."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def load_script(name: str):
    """benchmarks/NAME.py as a module: the results scripts are scripts, not a package."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def view_corpus(tmp_path_factory) -> Path:
    """A 30-candidate corpus for `dpp view` in 2 shards (16, 14), written by benchmarks/view.py's
    write_view_corpus: 10 real (generation 0), 10 synthetic of generation 1 and 10 of generation 2; 4 of
    the synthetic ones rejected (candidates 1, 11, 16 and 26), their images kept in rejected/. Tests must
    not modify it: copy it first."""
    out = tmp_path_factory.mktemp("view") / "mixed"
    return load_script("view").write_view_corpus(out, n=30, shard_size=16, scenes=30)
