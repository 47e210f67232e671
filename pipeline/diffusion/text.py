"""Text-to-image latent diffusion (the Stable Diffusion family): loading, prompts, and our own loop.

A folder in the diffusers layout (unet/ UNet2DConditionModel, vae/ AutoencoderKL, text_encoder/ CLIP
text model, tokenizer/, scheduler/) loads as a `TextGenerator`. Our loop does what diffusers'
StableDiffusionPipeline does for the same seeds (tests/test_text_generator.py): per-sample seeded
latents, the prompt and the negative prompt through the text encoder, classifier-free guidance, the
scheduler's steps, VAE decode. It is ours so that it can also

- capture attention: the cross-attention of each prompt token and the self-attention of the latent
  pixels, averaged over heads, layers and steps, for the zero-shot labeler (labelers/cross_attention.py);
- steer with a noise-aware classifier on the latents (`adjust_eps`, as pipeline/guidance/guide.py does for
  pixel models);
- give the few-shot head its features: `encode` (VAE) and `unet_kwargs` (the empty prompt) let
  pipeline/diffusion/features.py re-noise a finished image and read the conditional UNet's decoder blocks.

Each sample's prompt comes from its target class: `--prompt-template "a photo of a {class}"`, or a list
of prompts per class (`--prompts "disk=a coin|a plate;square=a box"`), taken in turn.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from manifests.errors import UsageError
from pipeline.diffusion.common import (
    DTYPES,
    draw_noise,
    make_scheduler,
    seed_generators,
    to_uint8,
    weight_files,
)

COMPONENTS = ("unet", "vae", "text_encoder")  # folders holding weights


@dataclass
class TextGenerator:
    """A loaded text-conditioned latent diffusion model on one device, in one dtype."""

    unet: torch.nn.Module  # diffusers UNet2DConditionModel
    vae: torch.nn.Module  # diffusers AutoencoderKL
    text_encoder: torch.nn.Module  # transformers CLIPTextModel
    tokenizer: object  # transformers CLIPTokenizer
    scheduler_config: dict
    id: str
    source: str
    info: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    text_conditioned: ClassVar[bool] = True
    class_names: ClassVar[tuple[str, ...]] = ()  # a prompt names the class, not a class label

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, h, w)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, h, w = self.latent_shape
        return (3, h * self.vae_factor, w * self.vae_factor)

    def scheduler(self, kind: str = "ddim", steps: int = 50, clip_sample: bool | None = None):
        return make_scheduler(self.scheduler_config, kind, steps, clip_sample)

    @torch.no_grad()
    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) to scaled VAE latents (the posterior mean: no randomness)."""
        z = self.vae.encode(x0.to(self.device, self.dtype)).latent_dist.mean
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents to images in [-1, 1] (B, 3, H, W), as the diffusers pipeline decodes."""
        return self.vae.decode(z / self.vae.config.scaling_factor).sample

    def unet_kwargs(self, batch: int) -> dict:
        """A plain conditional UNet pass (feature capture) is conditioned on the empty prompt."""
        return {"encoder_hidden_states": encode_prompts(self, [""] * batch)}

    def class_tokens(self, prompt: str, word: str) -> list[int]:
        """Positions of `word`'s tokens in the tokenized `prompt` (its first whole-word occurrence); []
        when the prompt does not contain it."""
        ids = _tokenize(self, [prompt]).input_ids[0].tolist()
        sub = self.tokenizer(word, add_special_tokens=False).input_ids
        toks = self.tokenizer.convert_ids_to_tokens(ids)
        for i in range(1, len(ids) - len(sub) + 1):
            starts_word = i == 1 or str(toks[i - 1]).endswith("</w>")
            if ids[i : i + len(sub)] == sub and starts_word:
                return list(range(i, i + len(sub)))
        return []


# --- loading ----------------------------------------------------------------------------------


def load_text_generator(
    spec: str,
    folder: Path,
    dev: torch.device,
    dtype: str = "float32",
    allow_pickle: bool = False,
    name: str | None = None,
) -> TextGenerator:
    """Load the unet/, vae/, text_encoder/, tokenizer/ and scheduler/ of a Stable Diffusion style folder.
    Its id is `name` (default: the folder's name) @ a digest of the weight and tokenizer files."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # its per-load weight bars are noise in a CLI
    folder = Path(folder)
    missing = [c for c in (*COMPONENTS, "tokenizer") if not (folder / c).is_dir()]
    if missing:
        raise UsageError(
            f"--generator {spec} has a text-conditioned UNet but no {', '.join(m + '/' for m in missing)} "
            "(a Stable Diffusion folder holds unet/, vae/, text_encoder/, tokenizer/ and scheduler/)"
        )
    files, safe = [], True
    for c in COMPONENTS:
        w, s = weight_files(spec, folder / c, allow_pickle, pickle_name=None)
        files += w
        safe = safe and s
    tdtype = DTYPES[dtype]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = UNet2DConditionModel.from_pretrained(
            folder / "unet", use_safetensors=safe, low_cpu_mem_usage=False, torch_dtype=tdtype
        )
        vae = AutoencoderKL.from_pretrained(
            folder / "vae", use_safetensors=safe, low_cpu_mem_usage=False, torch_dtype=tdtype
        )
        text_encoder = CLIPTextModel.from_pretrained(
            folder / "text_encoder", use_safetensors=safe, dtype=tdtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched_config = dict(
        DDPMScheduler.from_config(json.loads(sched_file.read_text())).config
        if sched_file.is_file()
        else DDPMScheduler().config
    )
    h = hashlib.sha256()
    for f in sorted(files) + sorted(p for p in (folder / "tokenizer").iterdir() if p.is_file()):
        h.update(f.read_bytes())
    info_path = folder / "dpp_generator.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    for m in (unet, vae, text_encoder):
        m.to(dev).eval().requires_grad_(False)
    gid = f"{name or folder.name or spec}@{h.hexdigest()[:12]}"
    gen = TextGenerator(unet, vae, text_encoder, tokenizer, sched_config, gid, spec, info, dev, tdtype)
    install_attention_taps(gen)
    return gen


# --- prompts ----------------------------------------------------------------------------------

DEFAULT_TEMPLATE = "a photo of a {class}"


@dataclass(frozen=True)
class Prompts:
    """How a sample's prompt follows from its target class, the negative prompt and the CFG scale."""

    template: str = DEFAULT_TEMPLATE
    per_class: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (class, its prompts): taken in turn
    negative: str = ""
    cfg_scale: float = 7.5

    def __post_init__(self):
        if "{class}" not in self.template:
            raise UsageError(f"--prompt-template {self.template!r} must contain {{class}}")
        if not self.cfg_scale >= 0:
            raise UsageError(f"--cfg-scale {self.cfg_scale} is not allowed; it must be >= 0")

    def prompt(self, cls: str, turn: int) -> str:
        """The prompt for a sample of class `cls`, its `turn`-th among that class's samples."""
        lists = dict(self.per_class)
        if cls in lists:
            options = lists[cls]
            return options[turn % len(options)]
        return self.template.replace("{class}", cls)

    def as_json(self) -> dict:
        return {
            "template": self.template,
            "per_class": {c: list(p) for c, p in self.per_class},
            "negative": self.negative,
            "cfg_scale": self.cfg_scale,
        }


def parse_prompts(spec: str | None, classes: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`--prompts "disk=a coin|a round plate;square=a box"` to ((disk, (a coin, a round plate)), ...)."""
    if not spec:
        return ()
    out = []
    for part in spec.split(";"):
        name, sep, rest = part.partition("=")
        name = name.strip()
        if not sep or name not in classes:
            raise UsageError(
                f"--prompts: {part.strip()!r} is not CLASS=PROMPT|PROMPT; classes: {', '.join(classes)}"
            )
        options = tuple(p.strip() for p in rest.split("|") if p.strip())
        if not options:
            raise UsageError(f"--prompts: class {name} has no prompt")
        out.append((name, options))
    return tuple(out)


def _tokenize(gen: TextGenerator, prompts: list[str]):
    """Token ids (and attention mask) padded to the tokenizer's length, as the diffusers pipeline asks."""
    return gen.tokenizer(
        prompts,
        padding="max_length",
        max_length=gen.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


@torch.no_grad()
def encode_prompts(gen: TextGenerator, prompts: list[str]) -> torch.Tensor:
    """(B, L, D) text-encoder states, as StableDiffusionPipeline.encode_prompt computes them."""
    text = _tokenize(gen, prompts)
    mask = None
    if getattr(gen.text_encoder.config, "use_attention_mask", False):
        mask = text.attention_mask.to(gen.device)
    states = gen.text_encoder(text.input_ids.to(gen.device), attention_mask=mask)[0]
    return states.to(gen.text_encoder.dtype)


# --- attention taps ---------------------------------------------------------------------------

_ACTIVE = threading.local()  # the AttentionMaps a thread is recording into, if any


class _Tap:
    """Wraps an attention processor: the output is the wrapped processor's (bytes unchanged); while the
    calling thread records, the layer's attention probabilities are added to its AttentionMaps."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        maps = getattr(_ACTIVE, "maps", None)
        if maps is not None and maps.recording and hidden_states.ndim == 3:
            maps.add(attn, hidden_states, encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)


def install_attention_taps(gen: TextGenerator) -> None:
    """Wrap every attention processor of the UNet once (idempotent)."""
    procs = gen.unet.attn_processors
    if all(isinstance(p, _Tap) for p in procs.values()):
        return
    gen.unet.set_attn_processor({k: p if isinstance(p, _Tap) else _Tap(p) for k, p in procs.items()})


class AttentionMaps:
    """Running sums of attention probabilities for one batch, conditional half only (with CFG the batch
    is [negative; prompt]), averaged over heads: cross-attention (B, L, R, R) from layers at most
    2R on a side, resized to R; self-attention (B, R*R, R*R) from layers exactly R on a side."""

    def __init__(self, batch: int, side: int):
        self.batch, self.side = batch, side
        self.recording = False
        self.cross: torch.Tensor | None = None
        self.self_: torch.Tensor | None = None
        self.n_cross = self.n_self = 0

    def add(self, attn, hidden: torch.Tensor, context: torch.Tensor | None) -> None:
        n = hidden.shape[1]
        s = int(round(n**0.5))
        if s * s != n or s > 2 * self.side or (context is None and s != self.side):
            return
        hidden = hidden[-self.batch :]
        keys_from = hidden if context is None else context[-self.batch :]
        if attn.norm_cross and context is not None:
            keys_from = attn.norm_encoder_hidden_states(keys_from)
        b, heads = self.batch, attn.heads
        q = attn.to_q(hidden)
        k = attn.to_k(keys_from)
        d = q.shape[-1] // heads
        q = q.view(b, -1, heads, d).transpose(1, 2).float()
        k = k.view(b, -1, heads, d).transpose(1, 2).float()
        probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1).mean(1)  # (B, N, K)
        if context is None:
            self.self_ = probs if self.self_ is None else self.self_ + probs
            self.n_self += 1
            return
        m = probs.transpose(1, 2).reshape(b, -1, s, s)  # (B, L, s, s)
        if s != self.side:
            m = F.interpolate(m, size=(self.side, self.side), mode="bilinear", align_corners=False)
        self.cross = m if self.cross is None else self.cross + m
        self.n_cross += 1

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross (B, L, R, R), self (B, R*R, R*R)) averages, on the CPU."""
        if self.cross is None or self.self_ is None:
            raise RuntimeError(f"no attention layer of side {self.side} was recorded")
        return (self.cross / self.n_cross).cpu(), (self.self_ / self.n_self).cpu()


def attention_side(gen: TextGenerator) -> int:
    """The self-attention resolution the labeler reads: half the latent side (16 px maps for 32-px latents
    of a 256-px model, 32 for SD's 64), never above 32 (memory grows with its fourth power)."""
    _, h, _ = gen.latent_shape
    side = h // 2
    while side > 32:
        side //= 2
    return max(side, 1)


# --- the loop ---------------------------------------------------------------------------------


@torch.no_grad()
def render(
    gen: TextGenerator,
    seeds: list[int],
    prompts: list[str],
    spec: Prompts,
    scheduler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    maps: AttentionMaps | None = None,
    adjust_eps=None,
) -> tuple[np.ndarray, np.ndarray]:
    """One batch: uint8 images (B, H, W, 3) and whether each was finite. With `maps`, every step's
    attention is added to it. `adjust_eps(i, t, z_t, eps)` may change the guided eps (classifier
    guidance on latents)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    gens = seed_generators(seeds)
    sched = gen.scheduler(scheduler, steps)
    z = draw_noise(gens, gen.latent_shape).to(gen.device, gen.dtype) * sched.init_noise_sigma
    cfg = spec.cfg_scale > 1.0
    states = encode_prompts(gen, prompts)
    if cfg:
        states = torch.cat([encode_prompts(gen, [spec.negative] * len(prompts)), states])
    kwargs = {"eta": eta} if scheduler == "ddim" else {}
    _ACTIVE.maps = maps
    try:
        for i, t in enumerate(sched.timesteps):
            if maps is not None:
                maps.recording = True
            inp = torch.cat([z] * 2) if cfg else z
            inp = sched.scale_model_input(inp, t)
            eps = gen.unet(inp, t, encoder_hidden_states=states).sample
            if maps is not None:
                maps.recording = False
            if cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + spec.cfg_scale * (cond - uncond)
            if adjust_eps is not None:
                eps = adjust_eps(i, int(t), z, eps)
            z = sched.step(eps, t, z, generator=gens, **kwargs).prev_sample
    finally:
        _ACTIVE.maps = None
    x0 = gen.decode(z)
    finite = torch.isfinite(x0).flatten(1).all(1).cpu().numpy()
    return to_uint8(torch.nan_to_num(x0)), finite


# --- a tiny random model (offline tests, and trying the path without a checkpoint) -------------


def build_tiny(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny random Stable Diffusion style folder: UNet2DConditionModel, AutoencoderKL (factor 2),
    a 2-layer CLIP text model and a character-level CLIP tokenizer (no merges) written from a vocabulary
    in code. Nothing is downloaded. Its images are noise; it exists to run the code path."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=image_size // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=image_size,
        )
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        for word in (*letters, *(c + "</w>" for c in letters)):
            vocab[word] = len(vocab)
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=32,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)  # the layout of a Stable Diffusion checkpoint, model_index.json included
    return folder
