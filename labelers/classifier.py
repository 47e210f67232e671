"""Noise-aware multi-label classifier: which classes an image holds, read from a *noisy* x_t at timestep t.

Trained on noised real images (x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t uniform) so that its
log-probability has a useful gradient at every step of the denoising loop: classifier guidance
(Dhariwal & Nichol) adds s * grad log p(y | x_t) to the sampler's update. At t = 0 it doubles as
a confidence score for finished images. It knows nothing of generators: the noise schedule is
handed in as `alphas_cumprod`, and the caller records which schedule that was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "classifier.safetensors"
INFO_FILE = "classifier.json"


@dataclass(frozen=True)
class ClassifierConfig:
    classes: tuple[str, ...]  # the classes it predicts (one logit each); foreground classes only
    width: int = 32  # channels of the first stage; the three stages have width, 2*width, 3*width
    time_dim: int = 64  # sinusoidal timestep embedding size (also the time MLP's width)
    steps: int = 1500  # optimizer steps
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # peak learning rate (AdamW, short warmup, cosine decay)
    seed: int = 0  # seeds the init and every draw of the fit (batches, flips, t, noise)
    in_channels: int = 3  # 3: RGB pixels; a latent model's latent channels (4 for Stable Diffusion)
    dense_weight: float = 0.0  # > 0: also learn masks (pixel cross-entropy at 1/4 size) with this weight

    def __post_init__(self):
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {self.classes!r} must be a non-empty tuple of distinct names")
        if self.width < 8 or self.width % 8:
            raise ValueError(f"width {self.width} is not allowed; it must be a multiple of 8")
        if self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(f"time_dim {self.time_dim} is not allowed; it must be even and >= 2")
        for name in ("steps", "batch_size", "in_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} is not allowed; it must be positive")
        if not self.lr > 0:
            raise ValueError(f"lr {self.lr} is not allowed; it must be positive")
        if not self.dense_weight >= 0:
            raise ValueError(f"dense_weight {self.dense_weight} is not allowed; it must be >= 0")

    def as_json(self) -> dict:
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_json(cls, c: dict) -> ClassifierConfig:
        unknown = sorted(set(c) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown classifier config keys: {', '.join(unknown)}")
        return cls(**{**c, "classes": tuple(c["classes"])})


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) sinusoidal embedding (cos half, sin half), as in DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Stage(nn.Module):
    """Stride-2 conv, GroupNorm, FiLM from the time embedding, SiLU; then conv, GroupNorm, SiLU."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.down = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(8, cout)
        self.film = nn.Linear(emb, 2 * cout)
        nn.init.zeros_(self.film.weight)  # starts as the identity: scale 1, shift 0
        nn.init.zeros_(self.film.bias)
        self.conv = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, cout)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(self.down(h)) * (1 + scale) + shift)
        return F.silu(self.norm2(self.conv(h)))


class NoisyClassifier(nn.Module):
    """Logits (B, C) of a noisy image x_t (B, 3, H, W) in [-1, 1] (or noisy latents (B, in_channels, h, w))
    at timesteps t (B,). Any H, W >= 8."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w, d = cfg.width, cfg.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU())
        self.stem = nn.Conv2d(cfg.in_channels, w, 3, padding=1)
        self.stages = nn.ModuleList([_Stage(w, w, d), _Stage(w, 2 * w, d), _Stage(2 * w, 3 * w, d)])
        self.head = nn.Linear(3 * w, len(cfg.classes))
        if cfg.dense_weight > 0:  # per-pixel logits (background + classes) from the last two stages
            self.dense = nn.Conv2d(2 * w + 3 * w, len(cfg.classes) + 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.head(self._stages(x, t)[-1].mean(dim=(2, 3)))

    def dense_logits(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(presence logits (B, C), pixel logits (B, C + 1, H/4, W/4)): one pass for the dense loss."""
        *_, mid, last = self._stages(x, t)
        up = F.interpolate(last, size=mid.shape[-2:], mode="nearest")
        return self.head(last.mean(dim=(2, 3))), self.dense(torch.cat([mid, up], dim=1))

    def _stages(self, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.cfg.in_channels}, H, W)")
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t has shape {tuple(t.shape)}; expected ({x.shape[0]},), one timestep per image"
            )
        emb = self.time_mlp(timestep_embedding(t, self.cfg.time_dim))
        h = self.stem(x)
        outs = []
        for stage in self.stages:
            h = stage(h, emb)
            outs.append(h)
        return outs


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]; a tensor (latents) is taken as it is."""
    if isinstance(images, torch.Tensor):
        return images.float().clone()
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _check_data(cfg: ClassifierConfig, images, presence: np.ndarray, ab: torch.Tensor) -> None:
    if isinstance(images, torch.Tensor):  # latents of a latent model
        if images.ndim != 4 or images.shape[1] != cfg.in_channels or len(images) == 0:
            raise ValueError(
                f"latents must be a non-empty (N, {cfg.in_channels}, h, w) tensor, not {tuple(images.shape)}"
            )
    elif images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty uint8 (N, H, W, 3) array, not {images.dtype} {images.shape}"
        )
    if presence.shape != (len(images), len(cfg.classes)):
        raise ValueError(
            f"presence has shape {presence.shape}; expected ({len(images)}, {len(cfg.classes)}) "
            "(one row per image, one column per class)"
        )
    if ab.ndim != 1 or len(ab) < 1 or not bool(((ab > 0) & (ab <= 1)).all()):
        raise ValueError("alphas_cumprod must be a 1-D tensor of values in (0, 1]")


def noise(x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (the DDPM forward process)."""
    ab = alphas_cumprod.to(x0.device, torch.float32)[t.to(x0.device)][:, None, None, None]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def fit(
    cfg: ClassifierConfig,
    images: np.ndarray | torch.Tensor,
    presence: np.ndarray,
    alphas_cumprod: torch.Tensor,
    progress: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
    masks: np.ndarray | None = None,
) -> NoisyClassifier:
    """Fit on uint8 images (N, H, W, 3) (or a latent model's latents, a float tensor (N, C, h, w)) with
    per-class presence (N, C) bool, noised by `alphas_cumprod`.

    With cfg.dense_weight > 0, `masks` (N, H, W) uint8 (0 background, k + 1 for class k, 255 ignore) add a
    pixel cross-entropy on the classifier's 1/4-size maps: the masks teach the shared layers shapes that
    image-level labels alone teach slowly; presence is still read from the image-level head.

    Every draw comes from one CPU `torch.Generator` seeded with cfg.seed (the global RNG is neither
    used nor changed), so the weights are a function of the inputs and the config on a given device.
    """
    # 1. check inputs
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32).cpu()
    _check_data(cfg, images, presence, alphas_cumprod)
    device = torch.device(device)
    # 2. build the model from the seed without touching the caller's global RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = NoisyClassifier(cfg)
    model.to(device).train()
    # 3. data, optimizer
    x_all = _to_input(images)
    y_all = torch.from_numpy(np.asarray(presence, dtype=np.float32))
    m_all = None
    if cfg.dense_weight > 0:
        if masks is None or len(masks) != len(x_all):
            raise ValueError("dense_weight > 0 needs one mask per image")
        m_all = torch.from_numpy(np.asarray(masks, dtype=np.int64))
        m_all[m_all == 255] = -100  # ignored by the loss
    n, n_t = len(x_all), len(alphas_cumprod)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warmup = min(100, max(1, cfg.steps // 10))
    # 4. training loop
    for step in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
        x0, y = x_all[idx], y_all[idx]
        flip_h = torch.rand(cfg.batch_size, generator=g) < 0.5  # presence does not change under flips
        flip_v = torch.rand(cfg.batch_size, generator=g) < 0.5
        x0[flip_h] = x0[flip_h].flip(-1)
        x0[flip_v] = x0[flip_v].flip(-2)
        if m_all is not None:
            m = m_all[idx]
            m[flip_h] = m[flip_h].flip(-1)
            m[flip_v] = m[flip_v].flip(-2)
        t = torch.randint(0, n_t, (cfg.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x_t = noise(x0, t, alphas_cumprod, eps).to(device)
        lr = cfg.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        if m_all is None:
            loss = F.binary_cross_entropy_with_logits(model(x_t, t.to(device)), y.to(device))
        else:
            logits, pixels = model.dense_logits(x_t, t.to(device))
            s = m.shape[-1] // pixels.shape[-1]  # masks sampled at the centres of the map's cells
            target = m[:, s // 2 :: s, s // 2 :: s][:, : pixels.shape[-2], : pixels.shape[-1]].to(device)
            loss = F.binary_cross_entropy_with_logits(logits, y.to(device))
            loss = loss + cfg.dense_weight * F.cross_entropy(pixels, target, ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    return model.eval()


def log_prob(
    model: NoisyClassifier, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """(B,) sum over the target classes of log sigmoid(logit): log p(all targets present | x_t), taking
    the classes as independent. Differentiable in x_t (guidance takes its gradient). target (B, C) bool."""
    logits = model(x_t, t)
    mask = target.to(logits.device, torch.bool).expand_as(logits)
    return torch.where(mask, F.logsigmoid(logits), torch.zeros_like(logits)).sum(dim=1)


@torch.no_grad()
def confidence(model: NoisyClassifier, x0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) at t = 0, the smallest sigmoid(logit) over each image's target classes (1.0 with no target).
    x0 (B, 3, H, W) in [-1, 1]; target (B, C) bool."""
    x0 = x0.to(_device(model), torch.float32)
    probs = torch.sigmoid(model(x0, torch.zeros(len(x0), dtype=torch.long, device=x0.device)))
    mask = target.to(probs.device, torch.bool).expand_as(probs)
    return torch.where(mask, probs, torch.ones_like(probs)).min(dim=1).values


@torch.no_grad()
def accuracy(
    model: NoisyClassifier,
    images: np.ndarray | torch.Tensor,
    presence: np.ndarray,
    alphas_cumprod: torch.Tensor,
    t: int,
    seed: int,
    batch_size: int = 256,
) -> dict:
    """Share of correct present/absent calls (logit > 0) per class and their mean, with every image
    noised at timestep `t` (t = 0: clean) by noise drawn from `seed`."""
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32).cpu()
    _check_data(model.cfg, images, presence, alphas_cumprod)
    if not 0 <= t < len(alphas_cumprod):
        raise ValueError(f"t {t} is not allowed; it must be between 0 and {len(alphas_cumprod) - 1}")
    model.eval()
    dev = _device(model)
    g = torch.Generator().manual_seed(seed)
    correct = torch.zeros(len(model.cfg.classes))
    for i in range(0, len(images), batch_size):
        x0 = _to_input(images[i : i + batch_size])
        tt = torch.full((len(x0),), t, dtype=torch.long)
        x_t = x0 if t == 0 else noise(x0, tt, alphas_cumprod, torch.randn(x0.shape, generator=g))
        pred = model(x_t.to(dev), tt.to(dev)).cpu() > 0
        correct += (pred == torch.from_numpy(np.asarray(presence[i : i + batch_size], bool))).sum(0)
    per_class = {c: float(correct[k] / len(images)) for k, c in enumerate(model.cfg.classes)}
    return {
        "t": t,
        "images": len(images),
        "per_class": per_class,
        "mean": float(correct.mean() / len(images)),
    }


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def classifier_id(folder: Path) -> str:
    """classifier@<first 12 hex digits of the sha256 of the weights file>."""
    return f"classifier@{hashlib.sha256((Path(folder) / WEIGHTS_FILE).read_bytes()).hexdigest()[:12]}"


def save(model: NoisyClassifier, folder: Path, meta: dict) -> str:
    """Weights as classifier.safetensors, then classifier.json (config + `meta`), each written whole
    (temp file + rename); the json comes last and marks the folder complete. Returns the id."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _replace_atomically(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    text = json.dumps({"config": model.cfg.as_json(), **meta}, indent=2, sort_keys=True) + "\n"
    _replace_atomically(folder / INFO_FILE, lambda p: p.write_text(text))
    return classifier_id(folder)


def load(folder: Path) -> tuple[NoisyClassifier, dict]:
    """(model on the CPU in eval mode, the classifier.json record). ValueError for a bad config."""
    folder = Path(folder)
    info = json.loads((folder / INFO_FILE).read_text())
    model = NoisyClassifier(ClassifierConfig.from_json(info["config"]))
    model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    return model.eval(), info
