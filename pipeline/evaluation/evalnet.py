"""The fixed evaluation network: a small CNN segmenter trained once on the toy world's exact masks.

The mean of its deepest feature map is the space in which generator quality is measured (k-NN
precision/recall, Frechet distance), and its per-pixel predictions give the share of samples in
which each class appears. It is trained by a fixed recipe from fixed seeds and shipped beside the
generator (pipeline/models/toyworld-evalnet), so every evaluation uses the same yardstick.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from manifests.errors import UsageError
from manifests.format.schema import IGNORE
from pipeline.diffusion.common import from_uint8
from pipeline.evaluation.metrics import iou_report

# SHIPPED_EVALNET: the judge of flat-world figures; TEXTURED_EVALNET: the first one, trained on the
# textured world, the judge of docs/results.md's tables
from pipeline.models import SHIPPED_EVALNET  # noqa: E402


@dataclass(frozen=True)
class EvalNetConfig:
    classes: tuple[str, ...] = ("background", "disk", "square", "triangle")  # per-pixel outputs
    width: int = 16  # channels of the first stage; doubled at each of the 3 stages
    min_pixels: int = 30  # a class counts as present from this many predicted pixels (at 32x32)
    steps: int = 2000  # optimizer steps
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class EvalNet(nn.Module):
    """A small segmenter (dense supervision learns shape far faster than image-level labels).
    Features for the metrics: the mean over pixels of its deepest (8x8) stage, 4*width values."""

    def __init__(self, cfg: EvalNetConfig):
        super().__init__()
        w = cfg.width
        self.s1, self.s2, self.s3 = _stage(3, w), _stage(w, 2 * w), _stage(2 * w, 4 * w)
        self.fuse = nn.Sequential(
            nn.Conv2d(w + 4 * w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU()
        )
        self.out = nn.Conv2d(2 * w, len(cfg.classes), 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] (B, 3, H, W) -> (features (B, D), per-pixel logits (B, K, H, W))."""
        h1 = self.s1(x)
        h3 = self.s3(F.max_pool2d(self.s2(F.max_pool2d(h1, 2)), 2))
        up = F.interpolate(h3, size=h1.shape[-2:], mode="bilinear", align_corners=False)
        return h3.mean(dim=(2, 3)), self.out(self.fuse(torch.cat([h1, up], dim=1)))


def presence(masks: np.ndarray, n_classes: int, min_pixels: int) -> np.ndarray:
    """(N, K-1) bool: does object class k (1..K-1) cover at least `min_pixels` pixels of each mask."""
    return np.stack([(masks == k).sum(axis=(1, 2)) >= min_pixels for k in range(1, n_classes)], axis=1)


def train_evalnet(images: np.ndarray, masks: np.ndarray, cfg: EvalNetConfig, progress=None) -> EvalNet:
    torch.manual_seed(cfg.seed)
    net = EvalNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    x_all = from_uint8(images)
    y_all = torch.from_numpy(masks.astype(np.int64))
    net.train()
    for step in range(cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
        x, y = x_all[idx], y_all[idx]
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        lr = cfg.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(net(x)[1], y, ignore_index=IGNORE)
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
def embed(
    net: EvalNet, cfg: EvalNetConfig, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) and predicted masks (N, H, W) of uint8 images (N, H, W, 3)."""
    feats, masks = [], []
    for i in range(0, len(images), batch_size):
        f, logits = net(from_uint8(images[i : i + batch_size]))
        feats.append(f.numpy().astype(np.float64))
        masks.append(logits.argmax(1).numpy().astype(np.uint8))
    return np.concatenate(feats), np.concatenate(masks)


def predicted_presence(net: EvalNet, cfg: EvalNetConfig, images: np.ndarray) -> np.ndarray:
    min_px = max(1, round(cfg.min_pixels * images.shape[1] * images.shape[2] / 1024))
    return presence(embed(net, cfg, images)[1], len(cfg.classes), min_px)


def heldout_metrics(net: EvalNet, cfg: EvalNetConfig, images: np.ndarray, masks: np.ndarray) -> dict:
    """Pixel mIoU and per-class presence accuracy on labeled images (what docs/generator.md reports)."""
    _, pred = embed(net, cfg, images)
    ious = iou_report(pred, masks, cfg.classes)  # pipeline/evaluation/metrics.py: the one definition
    truth = presence(masks, len(cfg.classes), 1)  # any pixel of a visible object
    got = presence(pred, len(cfg.classes), cfg.min_pixels)
    return {
        "pixel_iou": ious["iou"],
        "miou": ious["miou"],
        "presence_accuracy": dict(zip(cfg.classes[1:], (got == truth).mean(axis=0).tolist(), strict=True)),
    }


def rebuild_shipped(workdir: Path, out: Path) -> dict:
    """The recipe of the shipped evaluation network: `python -m pipeline.evaluation.evalnet WORKDIR OUT`.

    Trains on the flat toy world n=10000 seed=101 and reports held-out metrics on toy world n=2000
    seed=102 (seeds apart from the generator's training data, seed 0). About 10 minutes on one core.
    """
    import time

    from manifests.storage.reader import iter_samples
    from pipeline.realdata.ingest import write_toyworld

    torch.set_num_threads(1)
    workdir = Path(workdir)
    for name, n, seed in (("ev-train", 10000, 101), ("ev-test", 2000, 102)):
        write_toyworld(workdir / name, n=n, seed=seed, quiet=True)

    def load(p):
        s = list(iter_samples(p))
        return np.stack([x.image for x in s]), np.stack([x.mask for x in s])

    (xi, xm), (ti, tm) = load(workdir / "ev-train"), load(workdir / "ev-test")
    cfg = EvalNetConfig()
    t0 = time.time()
    net = train_evalnet(xi, xm, cfg)
    metrics = {
        "heldout": heldout_metrics(net, cfg, ti, tm),
        "train_corpus": "toyworld --style flat n=10000 seed=101",
        "heldout_corpus": "toyworld --style flat n=2000 seed=102",
        "train_seconds": round(time.time() - t0),
    }
    save_evalnet(net, cfg, out, metrics)
    return metrics


if __name__ == "__main__":
    import sys

    print(rebuild_shipped(Path(sys.argv[1]), Path(sys.argv[2])))
