"""Feature capture (both modes) and latent operators, on a tiny random diffusers model."""

import math

import numpy as np
import pytest
import torch

from manifests.errors import UsageError
from pipeline.diffusion.common import draw_noise, from_uint8, seed_generators
from pipeline.diffusion.features import (
    FeatureSpec,
    feature_bytes_per_image,
    renoise_features,
    trajectory_features,
)
from pipeline.diffusion.latents import slerp, views
from pipeline.diffusion.load import load_generator
from pipeline.diffusion.pixel import denoise


@pytest.fixture(scope="module")
def gen(tiny_model_dir):
    return load_generator(str(tiny_model_dir), device="cpu")


def _images(n, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_renoise_features_shape_determinism_and_batch_independence(gen):
    spec = FeatureSpec(blocks=("mid", "up0"), timesteps=(50, 200), resolution=16)
    x0 = from_uint8(_images(3))
    f = renoise_features(gen, x0, [1, 2, 3], spec)
    # mid block: 16 channels, up0: 16 channels; two timesteps
    assert f.shape == (3, 2 * (16 + 16), 16, 16)
    assert torch.equal(f, renoise_features(gen, x0, [1, 2, 3], spec))
    single = renoise_features(gen, x0[1:2], [2], spec)
    assert (single[0] - f[1]).abs().max() < 1e-5
    other_noise = renoise_features(gen, x0[1:2], [99], spec)
    assert (other_noise[0] - f[1]).abs().max() > 1e-3  # the seeded noise matters


def test_trajectory_capture_reads_the_nearest_steps_and_leaves_sampling_unchanged(gen):
    spec = FeatureSpec(blocks=("up1",), timesteps=(50,), resolution=8)
    gens = seed_generators([4, 5])
    x0, f = trajectory_features(gen, draw_noise(gens, gen.image_shape), gens, spec, "ddim", 5)
    assert f.shape == (2, 8, 8, 8)  # up1 has 8 channels, resized from 16x16 to 8x8
    gens = seed_generators([4, 5])
    plain = denoise(gen, draw_noise(gens, gen.image_shape), gens, "ddim", 5)
    assert torch.equal(x0, plain)


def test_feature_memory_is_one_map_per_block_and_timestep(gen):
    spec = FeatureSpec(blocks=("mid", "up0", "up1"), timesteps=(50,), resolution=16)
    assert feature_bytes_per_image(gen, spec) == (16 + 16 + 8) * 16 * 16 * 4


def test_unknown_block_is_refused(gen):
    with pytest.raises(UsageError, match="'up7' does not exist.*allowed: mid, up0, up1"):
        renoise_features(gen, from_uint8(_images(1)), [0], FeatureSpec(blocks=("up7",)))


def test_slerp_ends_and_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    path = slerp(a, b, [0.0, 0.5, 1.0])
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[2], b, atol=1e-5)
    # the midpoint keeps a Gaussian-like norm, unlike the straight-line average
    assert abs(path[1].norm() - (a.norm() + b.norm()) / 2) < 0.1 * a.norm()
    assert ((a + b) / 2).norm() < 0.8 * path[1].norm()


def test_views_lie_at_the_requested_angle():
    c = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    v = views(c, [1, 2, 3], radius=0.2)
    assert v.shape == (3, 3, 8, 8)
    for x in v:
        cos = float((x.flatten() @ c.flatten()) / (x.norm() * c.norm()))
        assert math.isclose(math.acos(min(1.0, cos)), 0.2, abs_tol=1e-4)
        assert math.isclose(float(x.norm()), float(c.norm()), rel_tol=1e-5)
    assert not torch.allclose(v[0], v[1])
    with pytest.raises(UsageError, match="--radius"):
        views(c, [1], radius=2.0)
