"""What every diffusion model of ours shares: devices and dtypes, schedulers, per-sample seeded noise,
uint8 <-> model space, and which weight files load (safetensors; pickle only when allowed)."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from manifests.errors import UsageError
from pipeline.diffusion.samplers import SCHEDULERS

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INFO_FILE = "dpp_generator.json"


def make_scheduler(scheduler_config: dict, kind: str, steps: int, clip_sample: bool | None = None):
    """A DDIM, DDPM or DPM-Solver++ scheduler from a saved scheduler config, set to `steps` steps."""
    if kind not in SCHEDULERS:
        raise UsageError(f"--scheduler {kind!r} is not allowed; allowed: {', '.join(SCHEDULERS)}")
    if not 1 <= steps <= scheduler_config.get("num_train_timesteps", 1000):
        raise UsageError(
            f"--steps {steps} is not allowed; it must be between 1 and "
            f"{scheduler_config.get('num_train_timesteps', 1000)}"
        )
    cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm": DPMSolverMultistepScheduler}[kind]
    config = dict(scheduler_config)
    if clip_sample is not None:
        config["clip_sample"] = clip_sample
    if kind == "dpm":  # DPM-Solver++ has no x0 clipping (clip_sample): give it only the settings it reads
        accepted = set(inspect.signature(cls.__init__).parameters)
        config = {k: v for k, v in config.items() if k in accepted or k.startswith("_")}
    sched = cls.from_config(config)
    sched.set_timesteps(steps)
    return sched


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise UsageError(f"--device {device!r} is not allowed; allowed: {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # torch.save / pickle checkpoints
PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"  # the pickle file diffusers' from_pretrained loads


def _weights_digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def weight_files(
    spec: str, folder: Path, allow_pickle: bool, pickle_name: str | None = PICKLE_WEIGHTS
) -> tuple[list[Path], bool]:
    """The weight files of one model folder and whether they are safetensors. Safetensors always win; a
    pickle checkpoint can run code when unpickled, so it is loaded only with `allow_pickle`
    (--allow-pickle), and, with `pickle_name`, only under that name (the file from_pretrained reads)."""
    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        return safe, True
    pickled = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if not pickled:
        raise UsageError(f"--generator {spec} has no weights in {folder} (no *.safetensors file)")
    named = folder / pickle_name if pickle_name and (folder / pickle_name).is_file() else pickled[0]
    if not allow_pickle:
        raise UsageError(
            f"--generator {spec}: {named} is a pickle checkpoint, which can run code when loaded; "
            "convert it to safetensors, or pass --allow-pickle if you trust the file"
        )
    if pickle_name is None:
        return pickled, False
    if not (folder / pickle_name).is_file():
        raise UsageError(
            f"--generator {spec}: {pickled[0]} is not a diffusers UNet weights file (no {pickle_name}); "
            "save the model with save_pretrained"
        )
    return [folder / pickle_name], False


def seed_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded with the sample's seed."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def draw_noise(
    gens: list[torch.Generator], shape: tuple[int, ...], truncation: float | None = None
) -> torch.Tensor:
    """x_T from each sample's generator, on the CPU in float32. With `truncation` = psi, values beyond
    +-psi are redrawn (from the same sample's generator) until inside: a truncated normal."""
    if truncation is not None and truncation <= 0:
        raise UsageError(f"--truncation {truncation} is not allowed; it must be > 0")
    out = []
    for g in gens:
        x = torch.randn((1, *shape), generator=g)
        if truncation is not None:
            for _ in range(1000):
                bad = x.abs() > truncation
                if not bad.any():
                    break
                x[bad] = torch.randn(int(bad.sum()), generator=g)
        out.append(x)
    return torch.cat(out)


def initial_noise(seeds: list[int], shape: tuple[int, ...], truncation: float | None = None) -> torch.Tensor:
    """x_T for each sample seed (see draw_noise)."""
    return draw_noise(seed_generators(seeds), shape, truncation)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model space [-1, 1] (B, C, H, W) to uint8 images (B, H, W, C), as the diffusers pipelines round."""
    x = (x.float() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 images (B, H, W, C) to model space [-1, 1] (B, C, H, W), float32."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # a read-only decoded buffer: torch warns on it; we copy to float anyway
        images = images.copy()
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
