"""`dpp sample`: render Gaussian samples, an interpolation strip, or latent views of a real image,
to a contact sheet (an --out ending in .png) or to a folder of one PNG per sample, named by key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from manifests.errors import UsageError
from manifests.format.layout import write_bytes_atomic
from manifests.preview import image_grid, save_png
from manifests.storage.reader import iter_samples
from manifests.storage.writer import encode_png
from pipeline.diffusion import latents as L
from pipeline.diffusion.pixel import Generator, render_latents
from pipeline.diffusion.samplers import DEFAULT_SCHEDULER, default_steps
from pipeline.diffusion.text import Prompts, TextGenerator
from pipeline.diffusion.text import render as text_render
from pipeline.seeds import sample_seed


@dataclass(frozen=True)
class SampleRequest:
    n: int  # samples (interp: points on the strip, ends included; views: views around the image)
    seed: int  # job seed; sample i has seed sample_seed(seed, 0, i)
    op: str = "gaussian"  # gaussian | interp | views
    steps: int | None = None  # denoising steps (None: the sampler's default, DEFAULT_STEPS)
    scheduler: str | None = None  # ddim | ddpm | dpm (None: dpm; views: ddim, the inversion's sampler)
    batch_size: int = 16  # samples per UNet batch (does not change any image)
    truncation: float | None = None  # gaussian: redraw latent values beyond +-truncation
    real: Path | None = None  # views: corpus holding the real image to invert
    index: int | None = None  # views: which sample of that corpus (None: 0)
    radius: float | None = None  # views: angular radius in radians (None: 0.15)
    classes: str | None = None  # class-conditional generators: a plan like --classes (default balanced)
    cfg_scale: float | None = None  # class-conditional generators: classifier-free guidance (None: 3.0)


@dataclass(frozen=True)
class SampleResult:
    keys: list[str]
    images: np.ndarray  # (N, H, W, 3) uint8
    classes: list[str] | None = None  # class-conditional generators: the class each sample was drawn as
    reconstruction_error: float | None = None  # views: RMSE (0-255) of invert-then-regenerate


def sample_classes(gen: Generator, req: SampleRequest) -> list[str] | None:
    """The class of each sample of a class-conditional generator: the plan (--classes, default balanced)
    taken in turn; None for an unconditional generator or the views op (inversion is unconditional)."""
    if not gen.class_names and (req.classes is not None or req.cfg_scale is not None):
        flag = "--classes" if req.classes is not None else "--class-cfg-scale"
        raise UsageError(f"{flag} applies to class-conditional generators; {gen.id} is unconditional")
    if not gen.class_names or req.op == "views":
        return None
    from pipeline.guidance.guide import parse_class_plan

    plan = parse_class_plan(req.classes or "balanced", ["background", *gen.class_names])
    return [plan[i % len(plan)] for i in range(req.n)]


DEFAULT_CFG_SCALE = 3.0  # the job field guidance.cfg_scale's default too


def key_for(seed: int, index: int) -> str:
    return f"s{seed}-000000-{index:06d}"


def run(gen: Generator | TextGenerator, req: SampleRequest) -> SampleResult:
    if req.n < 1:
        raise UsageError(f"--n {req.n} is not allowed; it must be positive")
    if req.op not in L.OPS:
        raise UsageError(f"--op {req.op!r} is not allowed; allowed: {', '.join(L.OPS)}")
    _refuse_flags_the_op_ignores(req)
    scheduler = req.scheduler or ("ddim" if req.op == "views" else DEFAULT_SCHEDULER)
    req = replace(req, scheduler=scheduler, steps=default_steps(scheduler, req.steps))
    seeds = [sample_seed(req.seed, 0, i) for i in range(req.n)]
    keys = [key_for(req.seed, i) for i in range(req.n)]
    if gen.text_conditioned:
        return _run_text(gen, req, seeds, keys)
    args = (req.scheduler, req.steps, req.batch_size)
    drawn = sample_classes(gen, req)
    scale = DEFAULT_CFG_SCALE if req.cfg_scale is None else req.cfg_scale
    cond = {"classes": drawn, "cfg_scale": scale} if drawn else {}
    if req.op == "gaussian":
        z = L.gaussian(seeds, gen.image_shape, req.truncation)
        return SampleResult(keys, render_latents(gen, z, seeds, *args, **cond), drawn)
    if req.op == "interp":
        if req.n < 2:
            raise UsageError(f"--n {req.n} is too small for --op interp; it needs at least 2 (the two ends)")
        ends = L.gaussian(seeds[:2], gen.image_shape, req.truncation)
        z = L.slerp(ends[0], ends[1], [i / (req.n - 1) for i in range(req.n)])
        if drawn:  # one strip, one class: the first sample's
            drawn = [drawn[0]] * req.n
            cond["classes"] = drawn
        return SampleResult(keys, render_latents(gen, z, seeds, *args, **cond), drawn)
    # views
    if req.real is None:
        raise UsageError(
            "--op views needs --real CORPUS (and optionally --index K) to pick the image to invert"
        )
    index = req.index or 0
    real = next((s.image for i, s in enumerate(iter_samples(req.real)) if i == index), None)
    if real is None:
        raise UsageError(f"--index {index} is out of range for corpus {req.real}")
    center = L.invert(gen, real[None], req.steps)
    recon = render_latents(gen, center, seeds[:1], "ddim", req.steps, 1, clip_sample=False)[0]
    err = float(np.sqrt(np.mean((recon.astype(np.float64) - real.astype(np.float64)) ** 2)))
    z = L.views(center[0], seeds, 0.15 if req.radius is None else req.radius)
    images = render_latents(gen, z, seeds, *args, clip_sample=False)
    return SampleResult(keys, images, reconstruction_error=err)


def _refuse_flags_the_op_ignores(req: SampleRequest) -> None:
    if req.op == "views" and req.truncation is not None:
        raise UsageError(
            "--truncation applies to --op gaussian and interp; views start from the inverted image"
        )
    if req.op != "views":
        given = [
            f
            for f, v in (("--real", req.real), ("--index", req.index), ("--radius", req.radius))
            if v is not None
        ]
        if given:
            raise UsageError(f"{given[0]} applies to --op views; the op is {req.op}")


def _run_text(gen: TextGenerator, req: SampleRequest, seeds: list[int], keys: list[str]) -> SampleResult:
    """A text-to-image model draws from prompts: sample i's class is the plan's i-th (--classes, names
    required), its prompt the default template's (`a photo of a {class}`), guided at --class-cfg-scale
    (default 7.5). Latent interpolation and inversion are pixel-space operations here: refused."""
    if req.op != "gaussian":
        raise UsageError(
            f"--op {req.op} works on pixel-space generators; {gen.id} is a text-to-image (latent) model: "
            "use --op gaussian"
        )
    if req.truncation is not None:
        raise UsageError(f"--truncation applies to pixel-space generators; {gen.id} is a text-to-image model")
    if not req.classes or req.classes == "balanced":
        raise UsageError(
            f"{gen.id} is a text-to-image model: name the classes its prompts draw, e.g. --classes cat,dog"
        )
    names = [part.strip().partition("=")[0].strip() for part in req.classes.split(",")]
    from pipeline.guidance.guide import parse_class_plan

    plan = parse_class_plan(req.classes, ["background", *dict.fromkeys(names)])
    drawn = [plan[i % len(plan)] for i in range(req.n)]
    spec = Prompts() if req.cfg_scale is None else Prompts(cfg_scale=req.cfg_scale)
    turns: dict[str, int] = {}
    prompts = []
    for c in drawn:
        prompts.append(spec.prompt(c, turns.get(c, 0)))
        turns[c] = turns.get(c, 0) + 1
    images = []
    for b in range(0, req.n, req.batch_size):
        part, _finite = text_render(gen, seeds[b : b + req.batch_size], prompts[b : b + req.batch_size], spec,
                                    req.scheduler, req.steps)  # fmt: skip
        images.append(part)
    return SampleResult(keys, np.concatenate(images), drawn)


def write(result: SampleResult, out: Path, op: str, overwrite: bool = False) -> str:
    """A sheet (out ends in .png; interp: one strip) or a folder of KEY.png files. Returns what it wrote."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: folder {out.parent} does not exist")
        columns = len(result.images) if op == "interp" else 8
        changed = save_png(image_grid(result.images, columns=columns), out, overwrite)
        return f"{out} ({len(result.images)} samples{'' if changed else '; the file already held them'})"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder or a path ending in .png")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; give a new or empty folder, or pass --overwrite")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    for key, image in zip(result.keys, result.images, strict=True):
        write_bytes_atomic(out / f"{key}.png", encode_png(image))
    return f"{out}/ ({len(result.images)} PNG files)"
