"""Few-shot pixel head: an ensemble of small MLPs that labels pixels from per-pixel generator features.

Trained on K annotated images with bounded memory: only a class-balanced sample of pixels per image
is kept (never every pixel of every image, which is what makes the reference implementations of
this idea need hundreds of GB). For each image it gives a mask (argmax of the ensemble's mean
prediction), a per-pixel uncertainty (Jensen-Shannon divergence across the ensemble) and an image
uncertainty score (mean of the 10% most uncertain pixels).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

IGNORE = 255


@dataclass(frozen=True)
class PixelHeadConfig:
    n_classes: int  # outputs; mask values 0..n_classes-1 (255 = ignore, never a training target)
    in_channels: int  # feature channels per pixel
    members: int = 10  # ensemble size E
    hidden: tuple[int, ...] = (128, 32)  # MLP hidden widths
    pixels_per_image: int = 2048  # pixels kept per training image (class-balanced sample)
    epochs: int = 8  # passes over the kept pixels, per member
    batch_size: int = 1024  # pixels per optimizer step
    lr: float = 1e-3
    seed: int = 0  # members use seed, seed+1, ...; pixel sampling uses seed
    ignore_threshold: float | None = None  # pixels with JSD above this become 255 (None = off)
    top_fraction: float = 0.1  # image uncertainty = mean JSD of this most uncertain share of pixels


def _mlp(cfg: PixelHeadConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = cfg.in_channels
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.BatchNorm1d(h)]
        width = h
    layers.append(nn.Linear(width, cfg.n_classes))
    return nn.Sequential(*layers)


class PixelHead(nn.Module):
    def __init__(self, cfg: PixelHeadConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(_mlp(cfg) for _ in range(cfg.members))

    @torch.no_grad()
    def probabilities(self, feats: torch.Tensor) -> torch.Tensor:
        """(E, N, K) softmax outputs of every member for pixel features (N, C)."""
        self.eval()
        return torch.stack([F.softmax(m(feats), dim=-1) for m in self.members])


def sample_pixels(feats: torch.Tensor, mask: torch.Tensor, n: int, gen: torch.Generator) -> tuple:
    """Up to `n` labeled pixels of one image, balanced over the classes present (ignore excluded).
    feats (C, H, W), mask (H, W) -> (features (m, C), labels (m,))."""
    flat_f = feats.flatten(1).T  # (H*W, C)
    flat_m = mask.flatten().long()
    classes = [c for c in torch.unique(flat_m).tolist() if c != IGNORE]
    if not classes:
        return flat_f[:0], flat_m[:0]
    per_class = max(1, n // len(classes))
    picks = []
    for c in classes:
        idx = torch.nonzero(flat_m == c).flatten()
        if len(idx) >= per_class:  # without replacement
            picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
        else:  # a small class: with replacement, so every class weighs the same
            picks.append(idx[torch.randint(0, len(idx), (per_class,), generator=gen)])
    sel = torch.cat(picks)
    return flat_f[sel].clone(), flat_m[sel].clone()


def fit(cfg: PixelHeadConfig, batches, progress=None) -> PixelHead:
    """Fit the ensemble. `batches` yields (features (B, C, H, W), masks (B, H, W)) one batch of
    support images at a time, so only the sampled pixels are ever held, not whole feature maps."""
    gen = torch.Generator().manual_seed(cfg.seed)
    xs, ys = [], []
    for feats, masks in batches:
        if feats.shape[1] != cfg.in_channels:
            raise ValueError(f"features have {feats.shape[1]} channels, the head expects {cfg.in_channels}")
        for f, m in zip(feats, masks, strict=True):
            x, y = sample_pixels(f.float().cpu(), m.cpu(), cfg.pixels_per_image, gen)
            xs.append(x)
            ys.append(y)
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    if len(y_all) == 0:
        raise ValueError("the support images hold no labeled pixels (all ignore)")
    if int(y_all.max()) >= cfg.n_classes:
        raise ValueError(f"mask value {int(y_all.max())} is outside 0-{cfg.n_classes - 1}")
    with torch.random.fork_rng(devices=[]):  # the weights come from cfg.seed, not from the caller's RNG
        torch.manual_seed(cfg.seed)
        head = PixelHead(cfg)
    for e, member in enumerate(head.members):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + e)
        opt = torch.optim.Adam(member.parameters(), lr=cfg.lr)
        member.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(y_all), generator=g)
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                loss = F.cross_entropy(member(x_all[idx]), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if progress is not None:
            progress(e + 1)
    return head.eval()


@dataclass(frozen=True)
class Labels:
    mask: torch.Tensor  # (B, H, W) uint8; 255 where the ensemble is unsure (if a threshold is set)
    uncertainty: torch.Tensor  # (B, H, W) float32 Jensen-Shannon divergence across members (nats)
    score: torch.Tensor  # (B,) image uncertainty: mean JSD of the top `top_fraction` pixels


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


@torch.no_grad()
def label(head: PixelHead, feats: torch.Tensor | list[torch.Tensor]) -> Labels:
    """Label images from their features (B, C, H, W), or from several views of them (the same images
    re-noised with different noise): every member's prediction on every view is one vote, so the mask is
    the argmax of the mean over members and views, and the uncertainty their disagreement."""
    cfg = head.cfg
    views = feats if isinstance(feats, list) else [feats]
    b, c, h, w = views[0].shape
    device = next(head.parameters()).device
    probs = torch.cat(
        [head.probabilities(f.float().permute(0, 2, 3, 1).reshape(-1, c).to(device)).cpu() for f in views]
    )  # (E * V, N, K)
    mean = probs.mean(0)
    jsd = (_entropy(mean) - _entropy(probs).mean(0)).clamp_min(0).view(b, h, w)
    mask = mean.argmax(-1).view(b, h, w).to(torch.uint8)
    if cfg.ignore_threshold is not None:
        mask[jsd > cfg.ignore_threshold] = IGNORE
    k = max(1, round(cfg.top_fraction * h * w))
    score = jsd.view(b, -1).topk(k, dim=1).values.mean(1)
    return Labels(mask=mask, uncertainty=jsd, score=score)


def save(head: PixelHead, folder: Path, meta: dict) -> None:
    """Weights as safetensors plus labeler.json (config and whatever `meta` the caller records)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, folder / "head.safetensors")
    cfg = {**asdict(head.cfg), "hidden": list(head.cfg.hidden)}
    (folder / "labeler.json").write_text(json.dumps({"config": cfg, **meta}, indent=2, sort_keys=True) + "\n")


def load(folder: Path) -> tuple[PixelHead, dict]:
    folder = Path(folder)
    info = json.loads((folder / "labeler.json").read_text())
    c = info["config"]
    head = PixelHead(PixelHeadConfig(**{**c, "hidden": tuple(c["hidden"])}))
    head.load_state_dict(load_file(folder / "head.safetensors"))
    return head.eval(), info
