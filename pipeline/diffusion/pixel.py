"""The pixel-space Generator and our own denoising loop over a diffusers UNet2DModel and scheduler.

The loop is ours, not the pipeline's `__call__`, so guidance and feature capture can live inside it;
for the same model, scheduler, steps and initial noise it gives the diffusers pipeline's output
(tests/test_generator.py). Every sample's randomness comes from CPU `torch.Generator`s seeded with
that sample's own seed, so an image does not depend on batch size or on its batch neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, UNet2DModel

from manifests.errors import UsageError
from pipeline.diffusion.common import (
    draw_noise,
    make_scheduler,
    seed_generators,
    to_uint8,
)


@dataclass
class Generator:
    """A loaded pixel-space diffusion model, on one device, in one dtype. Unconditional, or
    class-conditional (a UNet2DModel with `num_class_embeds`: label i draws class_names[i], the last
    label draws "no class", so classifier-free guidance needs no second model)."""

    unet: UNet2DModel
    scheduler_config: dict
    id: str  # name@sha256-prefix of the weights: what labelers and manifests record
    source: str  # what the user asked for: "toyworld", a folder, or a hub id
    info: dict = field(default_factory=dict)  # dpp_generator.json: training recipe and lineage
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    text_conditioned: ClassVar[bool] = False  # the model family: TextGenerator says True

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, h, w)

    def scheduler(self, kind: str = "ddim", steps: int = 50, clip_sample: bool | None = None):
        """A fresh scheduler of `kind` with `steps` inference steps (schedulers hold state: one per run).
        `clip_sample` overrides the saved config's clipping of predicted x0 (inversion needs it off)."""
        return make_scheduler(self.scheduler_config, kind, steps, clip_sample)

    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the space the UNet denoises: pixel space, so the images themselves."""
        return x0.to(self.device, self.dtype)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes a class-conditional model draws on request, in label order; () if unconditional."""
        n = self.unet.config.get("num_class_embeds") or 0
        if n < 2:
            return ()
        names = tuple((self.info.get("class_labels") or {}).get("classes", ()))
        return names if len(names) == n - 1 else tuple(f"class{i}" for i in range(n - 1))

    def class_labels(self, names: list[str | None]) -> torch.Tensor:
        """Label indices for class names (None: the "no class" label), on the model's device."""
        classes = self.class_names
        for c in names:
            if c is not None and c not in classes:
                raise UsageError(f"class {c!r} is not one {self.id} draws; allowed: {', '.join(classes)}")
        idx = [len(classes) if c is None else classes.index(c) for c in names]
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    def labels_for(self, classes: list[str | None] | None) -> torch.Tensor | None:
        """The labels that draw `classes` on a class-conditional model; None (sample unconditionally) for
        an unconditional model or no list."""
        return self.class_labels(list(classes)) if classes is not None and self.class_names else None

    def unet_kwargs(self, batch: int) -> dict:
        """Extra UNet arguments for a plain pass (feature capture): the "no class" label for a
        class-conditional model (real and generated images are read alike), none for an unconditional one."""
        return {"class_labels": self.class_labels([None] * batch)} if self.class_names else {}

    def eps(
        self, x: torch.Tensor, t, labels: torch.Tensor | None = None, cfg_scale: float = 1.0
    ) -> torch.Tensor:
        """The UNet's noise prediction. A class-conditional model with `labels` mixes the conditional and
        the unconditional prediction, u + cfg_scale * (c - u) (classifier-free guidance; 1 = conditional
        only); without labels it predicts unconditionally."""
        if not self.class_names:
            return self.unet(x, t).sample
        if labels is None:
            return self.unet(x, t, **self.unet_kwargs(x.shape[0])).sample
        if cfg_scale == 1.0:
            return self.unet(x, t, class_labels=labels).sample
        null = self.class_labels([None] * x.shape[0])
        both = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
        cond, uncond = both.chunk(2)
        return uncond + cfg_scale * (cond - uncond)


def check_image_size(gen: Generator, image: np.ndarray, where: str) -> None:
    """A clear error when an (H, W, 3) image is not the size the generator makes."""
    want = (*gen.image_shape[1:], gen.image_shape[0])
    if image.shape != want:
        raise UsageError(
            f"{where}: images are {image.shape[1]}x{image.shape[0]}, generator {gen.id} makes "
            f"{want[1]}x{want[0]}"
        )


# --- the denoising loop -----------------------------------------------------------------------

StepHook = Callable[[int, int, torch.Tensor], None]  # (step index, timestep, x_t) before the UNet call


@torch.no_grad()
def denoise(
    gen: Generator,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    scheduler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    before_unet: StepHook | None = None,
    clip_sample: bool | None = None,
    adjust_eps: Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    labels: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
) -> torch.Tensor:
    """Run the reverse process on one batch from x_T = `latents`; returns x_0 in [-1, 1] on the device.
    A class-conditional generator draws the classes `labels` (gen.class_labels) with classifier-free
    guidance `cfg_scale`; without labels, or for an unconditional generator, it samples unconditionally.

    `generators` are the samples' own CPU generators (one each), which drew `latents` and go on to
    draw any step noise (DDPM, or DDIM with eta > 0), exactly as the diffusers pipelines use theirs.
    1. build the scheduler  2. for each timestep: let `before_unet` see x_t (feature capture,
    guidance), predict eps, let `adjust_eps(i, t, x_t, eps)` change it (classifier guidance), step.
    """
    if len(generators) != latents.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {latents.shape[0]}")
    sched = gen.scheduler(scheduler, steps, clip_sample)
    gens = generators
    x = latents.to(gen.device, gen.dtype)
    kwargs = {"eta": eta} if scheduler == "ddim" else {}
    for i, t in enumerate(sched.timesteps):
        if before_unet is not None:
            before_unet(i, int(t), x)
        eps = gen.eps(x, t, labels, cfg_scale)
        if adjust_eps is not None:
            eps = adjust_eps(i, int(t), x, eps)
        x = sched.step(eps, t, x, generator=gens, **kwargs).prev_sample
    return x


def sample(
    gen: Generator,
    seeds: list[int],
    scheduler: str = "ddim",
    steps: int = 50,
    batch_size: int = 16,
    truncation: float | None = None,
    progress: Callable[[int], None] | None = None,
    classes: list[str | None] | None = None,
    cfg_scale: float = 1.0,
) -> np.ndarray:
    """Images (N, H, W, 3) uint8 for the given sample seeds, rendered in batches of `batch_size`.
    A class-conditional generator draws `classes[i]` for sample i (None or no list: unconditional)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is not allowed; it must be positive")
    out = []
    for start in range(0, len(seeds), batch_size):
        gens = seed_generators(seeds[start : start + batch_size])
        labels = gen.labels_for(None if classes is None else classes[start : start + batch_size])
        x0 = denoise(
            gen,
            draw_noise(gens, gen.image_shape, truncation),
            gens,
            scheduler,
            steps,
            labels=labels,
            cfg_scale=cfg_scale,
        )
        out.append(to_uint8(x0))
        if progress is not None:
            progress(len(gens))
    return np.concatenate(out) if out else np.zeros((0, *gen.image_shape[1:], 3), np.uint8)


def render_latents(
    gen: Generator,
    latents: torch.Tensor,
    seeds: list[int],
    scheduler: str = "ddim",
    steps: int = 50,
    batch_size: int = 16,
    clip_sample: bool | None = None,
    classes: list[str | None] | None = None,
    cfg_scale: float = 1.0,
) -> np.ndarray:
    """Images (N, H, W, 3) uint8 from given latents (interpolations, views); `seeds` seed any step noise.
    Latents from `ddim_invert` regenerate their image only with `clip_sample=False`. A class-conditional
    generator draws `classes[i]` for latent i (None or no list: unconditional)."""
    out = []
    for start in range(0, latents.shape[0], batch_size):
        gens = seed_generators(seeds[start : start + batch_size])
        x = latents[start : start + batch_size]
        labels = gen.labels_for(None if classes is None else classes[start : start + batch_size])
        x0 = denoise(
            gen, x, gens, scheduler, steps, clip_sample=clip_sample, labels=labels, cfg_scale=cfg_scale
        )
        out.append(to_uint8(x0))
    return np.concatenate(out)


@torch.no_grad()
def ddim_invert(gen: Generator, x0: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """G^-1: run DDIM backwards from a clean image x0 in [-1, 1] to its latent x_T (deterministic).
    Clipping of predicted x0 is off: it is not invertible (round-trip RMSE 31 with it, 9 without, on
    the shipped model at 1,250 steps), so regenerate with `clip_sample=False` too."""
    inv = DDIMInverseScheduler.from_config({**gen.scheduler_config, "clip_sample": False})
    inv.set_timesteps(steps)
    x = x0.to(gen.device, gen.dtype)
    for t in inv.timesteps:
        eps = gen.eps(x, t)
        x = inv.step(eps, t, x).prev_sample
    return x
