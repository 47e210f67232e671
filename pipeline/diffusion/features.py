"""Feature capture: the generator's own per-pixel features, read with forward hooks on UNet blocks.

Only the chosen blocks at the chosen timesteps are kept, each resized once to a working resolution
and concatenated along channels: (B, C, R, R) per batch, never every step of every block. Two modes
give matching features: read along the sampling trajectory (generated images), or re-noise a
finished image x0 to timestep t with seeded noise and run one UNet pass (real annotated images).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from manifests.errors import UsageError
from pipeline.diffusion.common import draw_noise, seed_generators
from pipeline.diffusion.pixel import Generator, denoise


@dataclass(frozen=True)
class FeatureSpec:
    blocks: tuple[str, ...] = ("mid", "up0", "up1")  # "mid", "upK" (decoder block K), "downK"
    timesteps: tuple[int, ...] = (50,)  # diffusion timesteps to read at (training-scale, 0..T-1)
    resolution: int = 32  # every block's map is resized to this side once

    def as_json(self) -> dict:
        return {"blocks": list(self.blocks), "timesteps": list(self.timesteps), "resolution": self.resolution}

    @staticmethod
    def from_json(d: dict) -> FeatureSpec:
        return FeatureSpec(tuple(d["blocks"]), tuple(d["timesteps"]), int(d["resolution"]))


def _module(gen: Generator, name: str) -> torch.nn.Module:
    unet = gen.unet
    if name == "mid":
        return unet.mid_block
    for prefix, blocks in (("up", unet.up_blocks), ("down", unet.down_blocks)):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            k = int(name[len(prefix) :])
            if k < len(blocks):
                return blocks[k]
    allowed = (
        ["mid"]
        + [f"up{i}" for i in range(len(unet.up_blocks))]
        + [f"down{i}" for i in range(len(unet.down_blocks))]
    )
    raise UsageError(f"feature block {name!r} does not exist in this UNet; allowed: {', '.join(allowed)}")


class FeatureCapture:
    """Forward hooks on the spec's blocks; while `active`, each block's output is resized and kept.

    Only forward passes of the thread that made the capture are kept: shards rendered in threads share
    one UNet, and a hook sees every thread's passes."""

    def __init__(self, gen: Generator, spec: FeatureSpec):
        self.spec = spec
        self.active = False
        self._owner = threading.get_ident()
        self.maps: dict[tuple[int, str], torch.Tensor] = {}
        self._t = -1
        self._handles = []
        for name in spec.blocks:
            module = _module(gen, name)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if not self.active or threading.get_ident() != self._owner:
                return
            out = output[0] if isinstance(output, tuple) else output
            r = self.spec.resolution
            if out.shape[-1] != r:
                out = F.interpolate(out.float(), size=(r, r), mode="bilinear", align_corners=False)
            self.maps[(self._t, name)] = out.float()

        return hook

    def at(self, t: int) -> None:
        self._t = t

    def collect(self) -> torch.Tensor:
        """(B, C, R, R): blocks in spec order within each timestep, timesteps in spec order."""
        parts = [
            self.maps[(t, b)]
            for t in sorted({k[0] for k in self.maps}, reverse=True)
            for b in self.spec.blocks
        ]
        self.maps = {}
        return torch.cat(parts, dim=1)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@torch.no_grad()
def renoise_features(gen: Generator, x0: torch.Tensor, seeds: list[int], spec: FeatureSpec) -> torch.Tensor:
    """Features of finished images x0 in [-1, 1] (B, C, H, W): for each spec timestep t, noise x0 to
    x_t with the sample's seeded noise and run one UNet pass. Returns (B, C_feat, R, R) float32.
    A latent model (pipeline/diffusion/text.py) encodes x0 with its VAE first and conditions the pass on
    the empty prompt, so real and generated images are read the same way."""
    alphas = gen.scheduler("ddpm", 1).alphas_cumprod
    z0 = gen.encode(x0)
    gens = seed_generators(seeds)
    noise = draw_noise(gens, tuple(z0.shape[1:])).to(gen.device, gen.dtype)
    kwargs = gen.unet_kwargs(z0.shape[0])
    with FeatureCapture(gen, spec) as cap:
        cap.active = True
        for t in spec.timesteps:
            a = alphas[t].to(gen.device, gen.dtype)
            xt = a.sqrt() * z0 + (1 - a).sqrt() * noise
            cap.at(t)
            gen.unet(xt, torch.full((z0.shape[0],), t, device=gen.device), **kwargs)
        return cap.collect()


def nearest_steps(schedule: list[int], wanted: tuple[int, ...]) -> dict[int, int]:
    """For each wanted timestep, the scheduled timestep closest to it (trajectory mode reads there)."""
    return {w: min(schedule, key=lambda s: (abs(s - w), s)) for w in wanted}


@torch.no_grad()
def trajectory_features(
    gen: Generator,
    latents: torch.Tensor,
    gens: list[torch.Generator],
    spec: FeatureSpec,
    scheduler: str = "ddim",
    steps: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample from `latents` and read features on the way, at the scheduled steps nearest the spec's
    timesteps. Returns (x0 in [-1, 1], features (B, C_feat, R, R))."""
    schedule = [int(t) for t in gen.scheduler(scheduler, steps).timesteps]
    read_at = set(nearest_steps(schedule, spec.timesteps).values())
    with FeatureCapture(gen, spec) as cap:

        def before(_i: int, t: int, _x: torch.Tensor) -> None:
            cap.active = t in read_at
            cap.at(t)

        x0 = denoise(gen, latents, gens, scheduler, steps, before_unet=before)
        return x0, cap.collect()


def feature_bytes_per_image(gen: Generator, spec: FeatureSpec) -> int:
    """Memory of one image's captured features (float32), for the docs and for batch sizing."""
    x = torch.zeros((1, *gen.image_shape), device=gen.device, dtype=gen.dtype)
    return renoise_features(gen, x, [0], spec).numel() * 4
