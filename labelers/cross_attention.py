"""Zero-shot masks from a text-to-image UNet's own attention: no annotated image needed.

For each sample, the cross-attention maps of its class word's tokens (averaged over heads, layers and
denoising steps while the image was rendered: pipeline/diffusion/text.py records them) say where the
model drew that word. As in the published attention-based dataset generators (DiffuMask, Dataset
Diffusion), each class map is then
1. refined with self-attention: m <- S^tau m, where S[i, j] is how much latent pixel i attends to j
   (it spreads a map along the object the model itself groups together);
2. normalised to [0, 1] per map and upsampled to the image;
3. thresholded with an ignore band: a pixel is its best class where that class's map is >= `high`,
   background where every map is < `low`, and 255 (ignore) in between.
The image's uncertainty score is the share of pixels in the band.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from labelers.pixel_head import IGNORE, Labels

NAME = "cross-attention"


@dataclass(frozen=True)
class AttentionLabelerConfig:
    low: float = 0.35  # below this on every class map: background
    high: float = 0.6  # at or above this: the best class; between low and high: ignore (255)
    refine: int = 1  # tau, how many times self-attention is applied (0 = off)

    def __post_init__(self):
        if not 0 <= self.low <= self.high <= 1:
            raise ValueError(
                f"attention thresholds low {self.low} and high {self.high} are not allowed; "
                "they need 0 <= low <= high <= 1"
            )
        if not 0 <= self.refine <= 8:
            raise ValueError(f"attention refine {self.refine} is not allowed; it must be between 0 and 8")


@dataclass(frozen=True)
class CrossAttentionLabeler:
    """The labeler a job uses with `--labeler cross-attention`: its classes (background first) and rules."""

    classes: list[str]
    config: AttentionLabelerConfig = AttentionLabelerConfig()

    @property
    def id(self) -> str:
        text = json.dumps({"classes": self.classes, **asdict(self.config)}, sort_keys=True)
        return f"{NAME}@{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    @property
    def path(self) -> None:
        return None

    @property
    def info(self) -> dict:
        return {"kind": NAME, "support_corpus": None, "support_keys": [], **asdict(self.config)}


def class_maps(
    cross: torch.Tensor, self_attn: torch.Tensor, tokens: list[list[int]], refine: int
) -> torch.Tensor:
    """One image: (K, R, R) maps in [0, 1], one per entry of `tokens` (the token positions of a class word).
    cross (L, R, R) averaged cross-attention per token; self_attn (R*R, R*R), rows summing to 1."""
    _, r, _ = cross.shape
    m = torch.stack([cross[t].mean(0) if t else torch.zeros(r, r) for t in tokens]).reshape(len(tokens), -1)
    for _ in range(refine):
        m = m @ self_attn.T  # refined[i] = sum_j S[i, j] m[j]
    lo = m.min(dim=1, keepdim=True).values
    hi = m.max(dim=1, keepdim=True).values
    m = (m - lo) / (hi - lo).clamp_min(1e-12)
    return m.reshape(len(tokens), r, r)


def label(
    cross: torch.Tensor,
    self_attn: torch.Tensor,
    tokens: list[dict[int, list[int]]],
    size: tuple[int, int],
    config: AttentionLabelerConfig,
) -> Labels:
    """Masks for a batch. cross (B, L, R, R), self_attn (B, R*R, R*R); tokens[b] maps a class index (> 0)
    to the positions of its word in sample b's prompt. Returns masks (B, H, W) uint8 (class indices,
    255 in the ignore band) and each image's share of ignored pixels as its score."""
    masks, scores = [], []
    for b in range(cross.shape[0]):
        classes = sorted(k for k, t in tokens[b].items() if t)
        if not classes:  # nothing named: all ignore, the filter's target rule will reject it
            masks.append(torch.full(size, IGNORE, dtype=torch.uint8))
            scores.append(1.0)
            continue
        m = class_maps(cross[b], self_attn[b], [tokens[b][k] for k in classes], config.refine)
        m = F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
        best, arg = m.max(dim=0)
        ids = torch.tensor(classes, dtype=torch.uint8)[arg]
        mask = torch.where(best >= config.high, ids, torch.full_like(ids, IGNORE))
        mask = torch.where(best < config.low, torch.zeros_like(ids), mask)
        masks.append(mask)
        scores.append(float((mask == IGNORE).float().mean()))
    mask = torch.stack(masks)
    return Labels(mask=mask, uncertainty=(mask == IGNORE).float(), score=torch.tensor(scores))
