"""Latent operators: Gaussian sampling (optionally truncated), spherical interpolation, DDIM inversion
of a real image (G^-1), and latent views in a small angular ball around an inverted image.

Latents are the generator's x_T: (B, C, H, W) float32 tensors on the CPU. Everything random is
drawn from per-sample CPU generators seeded with that sample's seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from manifests.errors import UsageError
from pipeline.diffusion.common import from_uint8, initial_noise, seed_generators
from pipeline.diffusion.pixel import Generator, ddim_invert

OPS = ("gaussian", "interp", "views")


def gaussian(seeds: list[int], shape: tuple[int, ...], truncation: float | None = None) -> torch.Tensor:
    return initial_noise(seeds, shape, truncation)


def slerp(a: torch.Tensor, b: torch.Tensor, alphas: list[float]) -> torch.Tensor:
    """Spherical interpolation between two latents (each (C, H, W)), one output per alpha in [0, 1]."""
    fa, fb = a.flatten().double(), b.flatten().double()
    cos = torch.clamp(fa @ fb / (fa.norm() * fb.norm()), -1.0, 1.0)
    omega = torch.arccos(cos)
    out = []
    for t in alphas:
        if not 0.0 <= t <= 1.0:
            raise UsageError(f"interpolation weight {t} is outside [0, 1]")
        if omega.abs() < 1e-6:  # (anti)parallel: fall back to a straight line
            v = (1 - t) * fa + t * fb
        else:
            v = (torch.sin((1 - t) * omega) * fa + torch.sin(t * omega) * fb) / torch.sin(omega)
        out.append(v.view_as(a).float())
    return torch.stack(out)


def invert(gen: Generator, images: np.ndarray, steps: int = 50) -> torch.Tensor:
    """G^-1 of uint8 images (B, H, W, 3): their DDIM latents, on the CPU."""
    if images.shape[1:] != (*gen.image_shape[1:], gen.image_shape[0]):
        raise UsageError(
            f"images of shape {images.shape[1:]} do not fit this generator "
            f"({gen.image_shape[1]}x{gen.image_shape[2]}x{gen.image_shape[0]})"
        )
    return ddim_invert(gen, from_uint8(images), steps).float().cpu()


def views(center: torch.Tensor, seeds: list[int], radius: float) -> torch.Tensor:
    """Latents at angle `radius` (radians) from `center` (C, H, W), in random directions (one per seed),
    with the centre's norm: a small ball on the sphere around an inverted real image."""
    if not 0 < radius < math.pi / 2:
        raise UsageError(f"--radius {radius} is not allowed; it must be between 0 and pi/2 radians")
    c = center.flatten().double()
    c_unit = c / c.norm()
    out = []
    for g in seed_generators(seeds):
        u = torch.randn(c.shape, generator=g, dtype=torch.float64)
        u = u - (u @ c_unit) * c_unit  # orthogonal to the centre
        u = u / u.norm()
        v = (math.cos(radius) * c_unit + math.sin(radius) * u) * c.norm()
        out.append(v.view_as(center).float())
    return torch.stack(out)
