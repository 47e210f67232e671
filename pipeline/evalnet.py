"""The fixed evaluation network: a small CNN trained once on the toy world to say which classes an
image contains. Its penultimate features are the space in which generator quality is measured
(k-NN precision/recall, Frechet distance), and its class outputs give the share of samples in
which each class appears. It is trained by a fixed recipe from fixed seeds and shipped beside the
generator (pipeline/models/toyworld-evalnet), so every evaluation uses the same yardstick.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from manifests.errors import UsageError

SHIPPED_EVALNET = Path(__file__).parent / "models" / "toyworld-evalnet"


@dataclass(frozen=True)
class EvalNetConfig:
    classes: tuple[str, ...] = ("disk", "square", "triangle")  # multi-label outputs (background excluded)
    width: int = 32  # channels of the first conv stage; doubled at each of the 3 stages
    feature_dim: int = 128  # size of the feature vector used for the metrics
    steps: int = 3000  # optimizer steps
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


class EvalNet(nn.Module):
    def __init__(self, cfg: EvalNetConfig):
        super().__init__()
        w = cfg.width

        def stage(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
            )

        self.body = nn.Sequential(
            stage(3, w),
            nn.MaxPool2d(2),
            stage(w, 2 * w),
            nn.MaxPool2d(2),
            stage(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.proj = nn.Sequential(nn.Linear(4 * w, cfg.feature_dim), nn.SiLU())
        self.head = nn.Linear(cfg.feature_dim, len(cfg.classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] (B, 3, H, W) -> (features (B, D), logits (B, K))."""
        f = self.proj(self.body(x))
        return f, self.head(f)


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def presence_labels(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, K) float labels: does class k+1 appear in each mask (index 0 is background)."""
    return np.stack([(masks == k + 1).any(axis=(1, 2)) for k in range(n_classes)], axis=1).astype(np.float32)


def train_evalnet(images: np.ndarray, masks: np.ndarray, cfg: EvalNetConfig, progress=None) -> EvalNet:
    torch.manual_seed(cfg.seed)
    net = EvalNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    x_all = _to_input(images)
    y_all = torch.from_numpy(presence_labels(masks, len(cfg.classes)))
    net.train()
    for step in range(cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
        x, y = x_all[idx], y_all[idx]
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        lr = cfg.lr * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = nn.functional.binary_cross_entropy_with_logits(net(x)[1], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    return net.eval()


def save_evalnet(net: EvalNet, cfg: EvalNetConfig, folder: Path, metrics: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors")
    info = {"config": {**asdict(cfg), "classes": list(cfg.classes)}, "metrics": metrics}
    (folder / "evalnet.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def load_evalnet(folder: Path = SHIPPED_EVALNET) -> tuple[EvalNet, EvalNetConfig]:
    folder = Path(folder)
    if not (folder / "evalnet.json").is_file():
        raise UsageError(f"the evaluation network is missing from this install ({folder})")
    info = json.loads((folder / "evalnet.json").read_text())
    c = info["config"]
    cfg = EvalNetConfig(**{**c, "classes": tuple(c["classes"])})
    net = EvalNet(cfg)
    net.load_state_dict(load_file(folder / "model.safetensors"))
    return net.eval().requires_grad_(False), cfg


@torch.no_grad()
def embed(net: EvalNet, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) and class-presence probabilities (N, K) of uint8 images (N, H, W, 3)."""
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f, logits = net(_to_input(images[i : i + batch_size]))
        feats.append(f.numpy().astype(np.float64))
        probs.append(torch.sigmoid(logits).numpy())
    return np.concatenate(feats), np.concatenate(probs)


def presence_accuracy(net: EvalNet, images: np.ndarray, masks: np.ndarray) -> dict:
    _, probs = embed(net, images)
    labels = presence_labels(masks, probs.shape[1])
    pred = probs > 0.5
    return {
        "per_class_accuracy": [float(v) for v in (pred == labels.astype(bool)).mean(axis=0)],
        "exact_match": float((pred == labels.astype(bool)).all(axis=1).mean()),
    }
