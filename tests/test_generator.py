"""Generator loading and our denoising loop, on tiny random diffusers models built in-process."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler

from manifests.errors import UsageError
from pipeline.diffusion.common import draw_noise, initial_noise, seed_generators, to_uint8
from pipeline.diffusion.load import load_generator
from pipeline.diffusion.pixel import denoise, sample


@pytest.fixture(scope="module")
def gen(tiny_model_dir):
    return load_generator(str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize("kind", ["ddim", "ddpm", "dpm"])
def test_our_loop_matches_the_diffusers_pipeline(gen, kind):
    seeds = [11, 12, 13]
    if kind == "ddim":
        pipe = DDIMPipeline(unet=gen.unet, scheduler=DDIMScheduler.from_config(gen.scheduler_config))
        ref = pipe(
            batch_size=3, generator=seed_generators(seeds), num_inference_steps=6, eta=0.0, output_type="np"
        ).images
    else:  # DDPMPipeline steps any scheduler: DDPM, or DPM-Solver++ (2M)
        cls = DDPMScheduler if kind == "ddpm" else DPMSolverMultistepScheduler
        pipe = DDPMPipeline(unet=gen.unet, scheduler=cls.from_config(gen.scheduler_config))
        ref = pipe(
            batch_size=3, generator=seed_generators(seeds), num_inference_steps=6, output_type="np"
        ).images
    gens = seed_generators(seeds)
    ours = denoise(gen, draw_noise(gens, gen.image_shape), gens, kind, 6)
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert ours.shape == ref.shape == (3, 16, 16, 3)
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("kind", ["ddim", "ddpm", "dpm"])
def test_a_sample_does_not_depend_on_its_batch(gen, kind):
    seeds = list(range(100, 108))
    x_all = []
    for bs in (1, 8, 3):
        gens_out = []
        for start in range(0, 8, bs):
            gens = seed_generators(seeds[start : start + bs])
            gens_out.append(denoise(gen, draw_noise(gens, gen.image_shape), gens, kind, 4))
        x_all.append(torch.cat(gens_out))
    assert (x_all[0] - x_all[1]).abs().max() < 1e-5
    assert (x_all[0] - x_all[2]).abs().max() < 1e-5
    # and reordering the batch only reorders the outputs
    gens = seed_generators(seeds[::-1])
    rev = denoise(gen, draw_noise(gens, gen.image_shape), gens, kind, 4)
    assert (rev.flip(0) - x_all[1]).abs().max() < 1e-5


def test_sample_is_deterministic_and_uint8(gen):
    a = sample(gen, [1, 2, 3], steps=3, batch_size=2)
    b = sample(gen, [1, 2, 3], steps=3, batch_size=3)
    assert a.dtype == np.uint8 and a.shape == (3, 16, 16, 3)
    assert np.array_equal(a, b)


def test_truncation_bounds_the_noise():
    x = initial_noise([5, 6], (3, 16, 16), truncation=1.0)
    assert x.abs().max() <= 1.0
    assert not torch.equal(x[0], x[1])
    assert torch.equal(initial_noise([5], (3, 16, 16), truncation=1.0)[0], x[0])
    with pytest.raises(UsageError, match="truncation"):
        initial_noise([5], (3, 4, 4), truncation=0)


def test_generator_id_follows_the_weights(tiny_model_dir, tmp_path):
    from .conftest import build_tiny_model

    a = load_generator(str(tiny_model_dir), device="cpu")
    b = load_generator(str(build_tiny_model(tmp_path / "other", seed=1)), device="cpu")
    assert a.id.startswith("model@") and a.id != b.id
    assert load_generator(str(tiny_model_dir), device="cpu").id == a.id


def test_bare_unet_folder_loads(tiny_model_dir):
    g = load_generator(str(tiny_model_dir / "unet"), device="cpu")
    assert g.image_shape == (3, 16, 16)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: p / "missing", "no such folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is not a diffusers model folder"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
        (
            lambda p: (
                (p / "cond").mkdir()
                or (p / "cond/config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
                and p / "cond"
            ),
            "UNet2DConditionModel",
        ),
    ],
)
def test_bad_generator_paths(tmp_path, make, needle):
    with pytest.raises(UsageError, match=needle):
        load_generator(str(make(tmp_path)), device="cpu")


def test_pickle_only_folder_is_refused(tiny_model_dir, tmp_path):
    import shutil

    dst = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, dst)
    w = dst / "unet" / "diffusion_pytorch_model.safetensors"
    w.rename(w.with_suffix(".bin"))
    with pytest.raises(
        UsageError, match="diffusion_pytorch_model.bin is a pickle checkpoint.*--allow-pickle"
    ):
        load_generator(str(dst), device="cpu")


def test_bad_device_dtype_scheduler(tiny_model_dir, gen):
    with pytest.raises(UsageError, match="--device 'tpu'"):
        load_generator(str(tiny_model_dir), device="tpu")
    with pytest.raises(UsageError, match="float16 is not allowed on the CPU"):
        load_generator(str(tiny_model_dir), device="cpu", dtype="float16")
    with pytest.raises(UsageError, match="--scheduler 'euler'"):
        gen.scheduler("euler", 10)
    with pytest.raises(UsageError, match="--steps 0"):
        gen.scheduler("ddim", 0)


def test_to_uint8_rounds_like_the_pipelines():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    assert to_uint8(x)[0, :, :, 0].tolist() == [[0, 128], [255, 255]]


def test_hub_id_without_network_is_one_clear_error(monkeypatch, tmp_path):
    import pipeline.diffusion.load as g

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(g, "_hub_reachable", lambda *a, **k: False)  # the network boundary
    with pytest.raises(UsageError, match="owner-x/model-y: no local folder.*hub is unreachable"):
        load_generator("owner-x/model-y", device="cpu")
