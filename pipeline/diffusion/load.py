"""load_generator: a shipped model by name, a local diffusers folder, or a hub id; pixel-space UNets
load as Generator, Stable Diffusion folders as TextGenerator. It imports both model modules; neither
imports it."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from manifests.errors import UsageError
from pipeline.diffusion.common import (
    DTYPES,
    INFO_FILE,
    _weights_digest,
    resolve_device,
    weight_files,
)
from pipeline.diffusion.pixel import Generator
from pipeline.diffusion.text import TextGenerator
from pipeline.models import SHIPPED_GENERATORS as SHIPPED


def load_generator(
    spec: str, device: str = "auto", dtype: str = "float32", allow_pickle: bool = False
) -> Generator | TextGenerator:
    """Load `spec`: "toyworld" (the shipped model), a local diffusers folder, or a hub id (needs a network).

    A folder may hold a pipeline (unet/ + scheduler/) or a bare UNet2DModel (config.json + weights); a
    folder whose unet/ is a UNet2DConditionModel loads as a text-to-image TextGenerator.
    Weights load from safetensors; a folder with only a pickle checkpoint (diffusion_pytorch_model.bin)
    is refused unless `allow_pickle`.
    """
    diffusers_logging.set_verbosity_error()  # its load-time advice is noise in a command-line tool
    dev = resolve_device(device)
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
    if dev.type == "cpu" and dtype != "float32":
        raise UsageError(
            f"--dtype {dtype} is not allowed on the CPU; use float32 (half precision is for GPUs)"
        )
    spec = str(spec)
    if spec in SHIPPED:
        folder = SHIPPED[spec]
        if not (folder / "unet" / "config.json").is_file():
            raise UsageError(f"the shipped generator {spec!r} is missing from this install ({folder})")
        name = spec
    else:
        folder = Path(spec).expanduser()
        name = folder.name or spec
        if not folder.exists():
            looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
            if not looks_like_hub_id:
                raise UsageError(
                    f"--generator {spec}: no such folder (give a diffusers model folder, a hub id "
                    f"like owner/name, or one of: {', '.join(SHIPPED)})"
                )
            return _load_hub(spec, dev, DTYPES[dtype], allow_pickle)
    if not folder.is_dir():
        raise UsageError(f"--generator {spec} is a file; give a diffusers model folder")
    if (folder / "unet" / "config.json").is_file():
        unet_dir, sched_file = folder / "unet", folder / "scheduler" / "scheduler_config.json"
    elif (folder / "config.json").is_file():
        unet_dir, sched_file = folder, folder / "scheduler_config.json"
    else:
        raise UsageError(
            f"--generator {spec} is not a diffusers model folder (no unet/config.json or config.json)"
        )
    config = json.loads((unet_dir / "config.json").read_text())
    if config.get("_class_name") == "UNet2DConditionModel" and unet_dir != folder:
        from pipeline.diffusion.text import load_text_generator  # Stable Diffusion family

        return load_text_generator(spec, folder, dev, dtype, allow_pickle)
    if config.get("_class_name") != "UNet2DModel":
        raise UsageError(
            f"--generator {spec} holds a {config.get('_class_name')!r}; only pixel-space UNet2DModel "
            "generators (unconditional or class-conditional) or Stable Diffusion folders are supported"
        )
    if config.get("class_embed_type") not in (None,):
        raise UsageError(
            f"--generator {spec}: class_embed_type {config['class_embed_type']!r} is not supported; "
            "class-conditional models use num_class_embeds (labels 0..K-1, label K = no class)"
        )
    weights, safe = weight_files(spec, unet_dir, allow_pickle)
    unet = UNet2DModel.from_pretrained(
        unet_dir, use_safetensors=safe, low_cpu_mem_usage=False, torch_dtype=DTYPES[dtype]
    )
    sched_config = (
        dict(DDPMScheduler.from_config(json.loads(sched_file.read_text())).config)
        if sched_file.is_file()
        else dict(DDPMScheduler().config)
    )
    info_path = folder / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    gid = f"{name}@{_weights_digest(weights)}"
    unet = unet.to(dev).eval().requires_grad_(False)
    return Generator(unet, sched_config, gid, spec, info, dev, DTYPES[dtype])


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(spec: str, dev: torch.device, dtype: torch.dtype, allow_pickle: bool = False) -> Generator:
    """A hub id: from the local Hugging Face cache if there, else downloaded (needs a network).
    Safetensors only, unless `allow_pickle` (then diffusers falls back to a pickle checkpoint)."""

    def fetch(local_only: bool):
        with warnings.catch_warnings():  # huggingface_hub's deprecation chatter is not for our users
            warnings.simplefilter("ignore")
            folder = _hub_text_model(spec, local_only, allow_pickle)
            if folder is not None:
                return folder, None
            unet = UNet2DModel.from_pretrained(
                spec,
                subfolder="unet",
                use_safetensors=None if allow_pickle else True,
                torch_dtype=dtype,
                local_files_only=local_only,
            )
            sched = DDPMScheduler.from_pretrained(spec, subfolder="scheduler", local_files_only=local_only)
        return unet, sched

    try:
        unet, sched = fetch(local_only=True)
    except Exception:  # noqa: BLE001 - not in the cache: try the network below
        if not _hub_reachable():
            raise UsageError(
                f"--generator {spec}: no local folder of that name, not in the Hugging Face cache, and the "
                "hub is unreachable (no network)"
            ) from None
        try:
            unet, sched = fetch(local_only=False)
        except Exception as e:  # noqa: BLE001 - unknown id, gated repo, no safetensors: one message
            raise UsageError(f"--generator {spec}: the hub could not provide it ({type(e).__name__})") from e
    if sched is None:  # a Stable Diffusion repository, fetched as a folder
        from pipeline.diffusion.text import load_text_generator

        dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
        return load_text_generator(spec, Path(unet), dev, dtype_name, allow_pickle, name=spec)
    unet = unet.to(dev).eval().requires_grad_(False)
    return Generator(unet, dict(sched.config), f"{spec}@hub", spec, {}, dev, dtype)


def _hub_text_model(spec: str, local_only: bool, allow_pickle: bool) -> Path | None:
    """A hub repository whose unet/ is a UNet2DConditionModel, as a local snapshot folder (configs,
    tokenizer files and weights only); None for any other repository."""
    from huggingface_hub import hf_hub_download, snapshot_download

    config = json.loads(
        Path(hf_hub_download(spec, "unet/config.json", local_files_only=local_only)).read_text()
    )
    if config.get("_class_name") != "UNet2DConditionModel":
        return None
    weights = ["*.safetensors"] + (["*.bin"] if allow_pickle else [])
    patterns = [f"{c}/{w}" for c in ("unet", "vae", "text_encoder") for w in weights]
    patterns += ["*.json", "tokenizer/*", "scheduler/*"]
    return Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=local_only))


# --- noise ------------------------------------------------------------------------------------
