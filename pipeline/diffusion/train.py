"""Training recipe for a small pixel-space DDPM (diffusers UNet2DModel) on corpus images.

The recipe is tuned for 32x32 on a CPU: a ~1.1M-parameter UNet with one attention level, a cosine
noise schedule, AdamW with linear warm-up, gradient clipping and EMA weights. With `num_classes` > 0
the UNet is class-conditional (`num_class_embeds`): image i is trained with its label, replaced by
the "no class" label (index `num_classes`) with probability `cond_drop`, so one model gives both the
conditional and the unconditional prediction that classifier-free guidance mixes. Every random draw of
step k comes from a generator seeded by (seed, k), so a run resumed from a checkpoint continues
exactly as an uninterrupted one would. Checkpoints are safetensors plus json (no pickle).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class TrainConfig:
    size: int = 32  # image side in pixels; the corpus images must have it
    steps: int = 20000  # total optimizer steps (a resumed run continues to this number)
    batch_size: int = 32  # images per optimizer step
    lr: float = 6e-4  # peak AdamW learning rate, reached after warm-up
    warmup: int = 500  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    ema_decay: float = 0.999  # EMA of the weights; the EMA weights are what gets saved
    grad_clip: float = 1.0  # max global gradient norm
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # UNet widths per resolution level
    layers_per_block: int = 1  # ResNet blocks per level
    attention_levels: tuple[bool, ...] = (False, False, True)  # self-attention at the 8x8 level only
    num_train_timesteps: int = 1000  # DDPM training timesteps
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule, better than linear at 32x32
    flip: bool = True  # random horizontal flips (the toy world's classes are flip-invariant)
    seed: int = 0  # seeds the model init and every step's random draws
    checkpoint_every: int = 250  # steps between checkpoints
    num_classes: int = 0  # 0: unconditional; K: class-conditional on labels 0..K-1, label K = no class
    cond_drop: float = 0.1  # share of a conditional batch trained with the no-class label (for CFG)
    snr_gamma: float = 0.0  # min-SNR loss weighting min(SNR, gamma)/SNR (Hang et al. 2023); 0 = off
    decay_from: int = 0  # > 0: the learning rate falls linearly from lr at this step to 0 at `steps`


def build_unet(cfg: TrainConfig) -> UNet2DModel:
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DModel(
        sample_size=cfg.size,
        in_channels=3,
        out_channels=3,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=8,
        num_class_embeds=cfg.num_classes + 1 if cfg.num_classes else None,
    )


def build_scheduler(cfg: TrainConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
    )


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Warm-up, then constant, then (with `decay_from`) a linear cool-down to 0 at `steps`: a
    warm-up/stable/decay schedule, so a run can go on at the constant rate and be cooled down when its
    length is known."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    if 0 < cfg.decay_from <= step:
        lr *= max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.decay_from))
    return lr


def _save_checkpoint(
    ckpt: Path, unet, ema: dict, opt, step: int, cfg: TrainConfig, losses: list, seconds: float
) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, tmp / "model.safetensors")
    save_file({k: v.contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
    opt_tensors = {}
    state = opt.state_dict()
    for pid, st in state["state"].items():
        for name, val in st.items():
            opt_tensors[f"{pid}.{name}"] = val.contiguous() if torch.is_tensor(val) else torch.tensor(val)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    meta = {
        "step": step,
        "config": _cfg_json(cfg),
        "param_groups": state["param_groups"],
        "losses": losses,
        "train_seconds": round(seconds, 1),  # wall time of every piece so far
    }
    (tmp / "state.json").write_text(json.dumps(meta))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = ckpt.with_name(ckpt.name + ".old")
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def _cfg_json(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def check_resume(ckpt: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint made with another recipe (other than the step target and the start
    of the cool-down), naming the first field that differs: its weights would not fit, or the run would
    silently change recipe. A cool-down may be added or moved on resume, but not to a step already
    trained at another learning rate."""
    state = json.loads((Path(ckpt) / "state.json").read_text())
    saved, step = state.get("config", {}), int(state.get("step", 0))
    ours = _cfg_json(cfg)
    before, target = int(saved.get("decay_from", 0)), int(saved.get("steps", cfg.steps))
    starts = [x for x in (before, cfg.decay_from) if x > 0]
    moved = cfg.decay_from != before or (before > 0 and cfg.steps != target)
    if moved and starts and min(starts) < step:
        raise ValueError(
            f"the checkpoint in {ckpt} is at step {step} (decay_from = {before}, steps = {target}); "
            f"decay_from = {cfg.decay_from}, steps = {cfg.steps} would change the learning rate of steps "
            f"already trained (start a cool-down at a step >= {step})"
        )
    for key in sorted(ours):
        if key in ("steps", "checkpoint_every", "decay_from"):
            continue
        theirs = saved.get(key, TrainConfig.__dataclass_fields__[key].default)
        theirs = list(theirs) if isinstance(theirs, tuple) else theirs
        if theirs != ours[key]:
            raise ValueError(
                f"the checkpoint in {ckpt} was trained with {key} = {theirs!r}, not {ours[key]!r}"
            )


def training_provenance(
    paths: list[Path], records: list[dict], labels: np.ndarray | None = None, classes: list[str] | None = None
) -> dict:
    """What a generator trained on the corpora at `paths` (their corpus.json `records`) records of its
    data: each corpus (id, version, path, samples per generation, config hash) and the model generation
    its samples will be (one deeper than the deepest training sample). With `labels` (class-conditional
    training on the class list `classes`, background first), also the images per label."""
    generations = [int(g) for r in records for g, n in r["per_generation"].items() if n > 0]
    provenance = {
        "training_data": [
            {
                "corpus_id": r["corpus_id"],
                "version": int(r.get("version", 1)),
                "path": str(p),
                "samples": r["counts"]["real"] + r["counts"]["synthetic"],
                "per_generation": r["per_generation"],
                "config_hash": r["config_hash"],
            }
            for p, r in zip(paths, records, strict=True)
        ],
        "sample_generation": 1 + max(generations, default=0),
    }
    if labels is not None:
        counts = np.bincount(labels, minlength=len(classes))
        provenance["class_labels"] = {"classes": classes[1:], "images_per_label": counts.tolist()}
    return provenance


def _load_checkpoint(ckpt: Path, unet, opt) -> tuple[int, dict, list, float]:
    meta = json.loads((ckpt / "state.json").read_text())
    unet.load_state_dict(load_file(ckpt / "model.safetensors"))
    ema = load_file(ckpt / "ema.safetensors")
    flat = load_file(ckpt / "optimizer.safetensors")
    opt_state: dict = {}
    for key, val in flat.items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), ema, meta.get("losses", []), float(meta.get("train_seconds", 0.0))


def train(
    images: np.ndarray,
    out: Path,
    cfg: TrainConfig,
    resume: bool = False,
    device: str = "cpu",
    progress=None,
    time_limit_s: float | None = None,
    provenance: dict | None = None,
    init_state: dict | None = None,
    labels: np.ndarray | None = None,
) -> int:
    """Train on uint8 images (N, H, W, 3); checkpoint under out/checkpoint; export EMA weights at the end.
    A class-conditional recipe (`cfg.num_classes` > 0) needs `labels` (N,): each image's class in
    0..K-1, or K where an image has no single class (it then trains the unconditional prediction only).
    `init_state` (a UNet state dict of the same architecture) starts from those weights instead of a
    random init: fine-tuning, as the collapse study does from one model generation to the next.

    Returns the step reached. With `time_limit_s`, stops (after a checkpoint) once that much wall time
    has passed, so a long training can be run in pieces. `provenance` (training corpora, lineage) is
    saved in dpp_generator.json beside the weights.
    """
    out = Path(out)
    if not 0 <= cfg.decay_from < cfg.steps:
        raise ValueError(f"decay_from must be 0 (no cool-down) or a step below steps = {cfg.steps}")
    if images.ndim != 4 or images.shape[1:] != (cfg.size, cfg.size, 3):
        raise ValueError(f"training images must be (N, {cfg.size}, {cfg.size}, 3), got {images.shape}")
    if cfg.num_classes and (labels is None or labels.shape != (images.shape[0],)):
        raise ValueError("a class-conditional recipe needs one label per training image")
    if cfg.num_classes and not ((labels >= 0) & (labels <= cfg.num_classes)).all():
        raise ValueError(f"training labels must be in 0..{cfg.num_classes}")
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg)
    if init_state is not None:
        unet.load_state_dict(init_state)
    unet = unet.to(device)
    sched = build_scheduler(cfg)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ckpt = out / CHECKPOINT_DIR
    step, losses, before = 0, [], 0.0
    if resume and (ckpt / "state.json").exists():
        step, ema, losses, before = _load_checkpoint(ckpt, unet, opt)
        ema = {k: v.to(device) for k, v in ema.items()}
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8, converted per batch
    label_data = torch.from_numpy(labels.astype(np.int64)) if cfg.num_classes else None
    alphas = sched.alphas_cumprod.to(device)
    t0 = time.monotonic()
    unet.train()
    while step < cfg.steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=g)
        x0 = data[idx].float().div(127.5).sub(1.0)
        if cfg.flip:
            flip = torch.rand(cfg.batch_size, generator=g) < 0.5
            x0[flip] = x0[flip].flip(-1)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=g)
        kwargs = {}
        if label_data is not None:  # drawn after the unconditional recipe's draws: its runs are unchanged
            y = label_data[idx].clone()
            y[torch.rand(cfg.batch_size, generator=g) < cfg.cond_drop] = cfg.num_classes
            kwargs["class_labels"] = y.to(device)
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, **kwargs).sample
        if cfg.snr_gamma > 0:  # min-SNR: high-SNR (nearly clean) steps stop dominating the gradient
            snr = (a / (1 - a)).view(-1)
            per_image = (pred - noise).pow(2).mean(dim=(1, 2, 3))
            loss = (per_image * snr.clamp(max=cfg.snr_gamma) / snr).mean()
        else:
            loss = torch.nn.functional.mse_loss(pred, noise)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].lerp_(v, 1 - decay)
                else:
                    ema[k].copy_(v)
        step += 1
        losses.append(round(loss.item(), 5))
        if progress is not None:
            progress(step, losses[-1])
        out_of_time = time_limit_s is not None and time.monotonic() - t0 > time_limit_s
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            _save_checkpoint(ckpt, unet, ema, opt, step, cfg, losses, before + time.monotonic() - t0)
        if out_of_time:
            break
    seconds = before + time.monotonic() - t0
    export(out, ema, cfg, step, losses, {"train_minutes": round(seconds / 60, 1), **(provenance or {})})
    return step


def export(out: Path, ema: dict, cfg: TrainConfig, step: int, losses: list, provenance: dict) -> None:
    """Save the EMA weights as a diffusers DDPM pipeline folder (unet/, scheduler/, model_index.json)."""
    from diffusers import DDPMPipeline

    unet = build_unet(cfg)
    unet.load_state_dict({k: v.cpu() for k, v in ema.items()})
    DDPMPipeline(unet=unet, scheduler=build_scheduler(cfg)).save_pretrained(out, safe_serialization=True)
    info = {
        "trained_steps": step,
        "recipe": _cfg_json(cfg),
        "loss_per_200_steps": [round(v, 4) for v in loss_curve(losses)],
        **provenance,
    }
    (Path(out) / "dpp_generator.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def loss_curve(losses: list[float], window: int = 200) -> list[float]:
    """Moving means of the loss, one per `window` steps (for logs and docs)."""
    return [float(np.mean(losses[i : i + window])) for i in range(0, len(losses), window)]
