"""Classifier guidance inside our denoising loop, and the class plan that says what each sample aims for.

At every step, after the UNet predicts eps for x_t (Dhariwal & Nichol, eq. 14 for DDIM):

    eps <- eps - s * sqrt(1 - alpha_bar_t) * grad_{x_t} log p(y | x_t)

where p(y | x_t) is the noise-aware classifier's probability that the sample's target classes y are
present. diffusers' pipelines have no step callback that could change eps, so this lives in our loop
(`pipeline.diffusion.pixel.denoise`'s `adjust_eps`). The classifier is small: one forward and one
backward pass of it per step, no backward pass through the UNet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from labelers import classifier as noisy_classifier
from manifests.errors import UsageError
from pipeline.diffusion.common import draw_noise, seed_generators, to_uint8
from pipeline.diffusion.pixel import Generator, denoise


@dataclass(frozen=True)
class Guide:
    model: torch.nn.Module  # the noise-aware classifier (labelers/classifier.py)
    classes: tuple[str, ...]  # the classifier's outputs, in order
    scale: float
    alphas_cumprod: torch.Tensor  # of the generator's training schedule
    id: str = ""  # the classifier's id, recorded in the corpus
    path: str | None = None  # where it was loaded from (as given), recorded beside the id

    def adjust(self, targets: torch.Tensor) -> Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]:
        """An `adjust_eps(i, t, x_t, eps)` hook for a batch whose targets are `targets` (B, C) bool."""

        def hook(_i: int, t: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            if self.scale == 0 or not targets.any():
                return eps
            with torch.enable_grad():
                xg = x.detach().float().requires_grad_(True)
                tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
                logp = noisy_classifier.log_prob(self.model, xg, tt, targets.to(x.device))
                (grad,) = torch.autograd.grad(logp.sum(), xg)
            sigma = (1 - self.alphas_cumprod[int(t)]).sqrt().to(x.device)
            return eps - (self.scale * sigma * grad).to(eps.dtype)

        return hook


def parse_class_plan(spec: str | None, classes: list[str]) -> tuple[str, ...]:
    """`--classes` to the cycle of target classes, candidate c aiming for plan[c % len(plan)].

    "disk,square" -> (disk, square); "disk=2,square=1" -> (disk, disk, square); "balanced" -> every
    class but background, one each; None or "" -> () (no target)."""
    if not spec:
        return ()
    foreground = [c for c in classes if c != "background"]
    if spec == "balanced":
        return tuple(foreground)
    plan: list[str] = []
    for part in spec.split(","):
        name, _, count = part.strip().partition("=")
        if name not in foreground:
            raise UsageError(
                f"--classes: {name!r} is not a class; allowed: {', '.join(foreground)} or balanced"
            )
        try:
            k = int(count) if count else 1
        except ValueError:
            raise UsageError(f"--classes: count {count!r} of {name} is not a whole number") from None
        if not 1 <= k <= 1000:
            raise UsageError(f"--classes: count {k} of {name} is not allowed; it must be between 1 and 1000")
        plan += [name] * k
    return tuple(plan)


def target_matrix(targets: list[tuple[str, ...]], classes: tuple[str, ...]) -> torch.Tensor:
    """(B, C) bool: which of the classifier's classes each sample aims for."""
    m = torch.zeros((len(targets), len(classes)), dtype=torch.bool)
    for i, ts in enumerate(targets):
        for c in ts:
            m[i, classes.index(c)] = True
    return m


def render(
    gen: Generator,
    seeds: list[int],
    scheduler: str,
    steps: int,
    guide: Guide | None = None,
    targets: list[tuple[str, ...]] | None = None,
    cfg_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One batch: uint8 images (B, H, W, 3) and whether each x_0 was finite. Without a guide this is
    exactly `pipeline.diffusion.pixel.sample` for the batch (same noise, same loop, same bytes). A
    class-conditional generator draws each sample's (first) target class, with classifier-free guidance
    `cfg_scale`."""
    gens = seed_generators(seeds)
    hook = None
    if guide is not None and guide.scale and targets:
        hook = guide.adjust(target_matrix(targets, guide.classes))
    labels = gen.labels_for([t[0] if t else None for t in targets] if targets else None)
    x0 = denoise(
        gen,
        draw_noise(gens, gen.image_shape, None),
        gens,
        scheduler,
        steps,
        adjust_eps=hook,
        labels=labels,
        cfg_scale=cfg_scale,
    )
    finite = torch.isfinite(x0).flatten(1).all(1).cpu().numpy()
    return to_uint8(torch.nan_to_num(x0)), finite
