"""GPU throughput (issue 9 item 6), run by benchmarks/gpu.sh: our generation job vs the bare diffusers
DDIMPipeline with the same UNet, steps and batch, for the shipped 32x32 model and a random-weight
256x256 UNet of about 100M parameters; per dtype and batch size, with channels_last and (optionally)
torch.compile; GPU utilization sampled with nvidia-smi while each run goes. Prints a markdown table.

    python benchmarks/gpu.py [--device cuda] [--budget-s 420] [--compile]
    python benchmarks/gpu.py --device cpu --smoke      # the same code at toy sizes, to check it runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelers import pixel_head  # noqa: E402
from pipeline.diffusion.features import FeatureSpec  # noqa: E402
from pipeline.diffusion.load import load_generator  # noqa: E402
from pipeline.filtering.rules import FilterRules  # noqa: E402
from pipeline.generate.run import generate  # noqa: E402
from pipeline.labeling.fewshot import load_labeler, train_labeler  # noqa: E402
from pipeline.realdata.ingest import write_toyworld  # noqa: E402
from pipeline.seeds import sample_seed  # noqa: E402

KEEP_ALL = FilterRules(min_target_pixels=0, drop_fraction=0.0)


class GpuUtil:
    """Mean GPU utilization (%) from `nvidia-smi` sampled every 200 ms while in the `with` block."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _poll(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True, text=True, timeout=5,
                ).stdout  # fmt: skip
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            time.sleep(0.2)

    def __enter__(self):
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def big_unet_folder(folder: Path, size: int, widths: tuple[int, ...]) -> int:
    """A random-weight UNet2DModel (safetensors) + DDPM scheduler folder; returns its parameter count."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=widths,
        layers_per_block=2,
        down_block_types=("DownBlock2D",) * (len(widths) - 2) + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * (len(widths) - 2),
    )
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return sum(p.numel() for p in unet.parameters())


def random_labeler(gen, folder: Path, spec: FeatureSpec, classes: int = 4) -> Path:
    """A pixel-head ensemble with random weights but the real shape: costs what a trained one costs."""
    import numpy as np

    from pipeline.labeling.fewshot import _features

    channels = _features(gen, np.zeros((1, *gen.image_shape[1:], 3), np.uint8), [0], spec).shape[1]
    torch.manual_seed(0)
    head = pixel_head.PixelHead(pixel_head.PixelHeadConfig(n_classes=classes, in_channels=channels))
    meta = {
        "classes": ["background"] + [f"c{i}" for i in range(1, classes)],
        "feature_spec": spec.as_json(),
        "generator_id": gen.id,
        "support_corpus": "random-weights",
        "support_keys": [],
        "seed": 0,
        "featurize": "renoise",
    }
    pixel_head.save(head, folder, meta)
    return folder


def run_case(gen, lab, n: int, batch: int, steps: int, work: Path, repeats: int) -> dict:
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = DDIMPipeline(unet=gen.unet, scheduler=DDIMScheduler.from_config(gen.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if gen.device.type == "cuda" else (lambda: None)
    res: dict[str, list[float]] = {"bare": [], "ours": []}
    util: dict[str, list[float]] = {"bare": [], "ours": []}
    for r in range(repeats):
        with GpuUtil() as u:
            sync()
            t = time.perf_counter()
            for b in range(0, n, batch):
                gens = [
                    torch.Generator().manual_seed(sample_seed(7, r, i)) for i in range(b, min(n, b + batch))
                ]
                pipe(batch_size=len(gens), generator=gens, num_inference_steps=steps, output_type="np")
            sync()
            res["bare"].append(time.perf_counter() - t)
        if u.mean is not None:
            util["bare"].append(u.mean)
        out = work / f"ours-{r}"
        shutil.rmtree(out, ignore_errors=True)
        with GpuUtil() as u:
            t = time.perf_counter()
            generate(
                gen,
                lab,
                n,
                7 + r,
                out,
                shard_size=n,
                steps=steps,
                batch_size=batch,
                quiet=True,
                rules=KEEP_ALL,
            )
            sync()
            res["ours"].append(time.perf_counter() - t)
        if u.mean is not None:
            util["ours"].append(u.mean)
        shutil.rmtree(out)
    bare, ours = statistics.median(res["bare"]), statistics.median(res["ours"])
    return {
        "bare_sps": n / bare,
        "ours_sps": n / ours,
        "ratio": bare / ours,
        "util_bare": statistics.mean(util["bare"]) if util["bare"] else None,
        "util_ours": statistics.mean(util["ours"]) if util["ours"] else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new cases after this")
    p.add_argument("--compile", action="store_true", help="also try torch.compile on the UNet")
    p.add_argument("--smoke", action="store_true", help="toy sizes (checks the script on a CPU)")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dpp-gpu-"))
    dtypes = ["float32"] + ([] if args.device == "cpu" else ["bfloat16", "float16"])
    if args.smoke:
        plans = [("toyworld", None, [8], 2, 8, 1), ("random-64", (32, 32, 64, 64), [4], 2, 4, 1)]
    else:
        plans = [
            ("toyworld", None, [64, 256], 50, 512, 2),
            ("random-256", (128, 256, 512, 512), [16, 32], 25, 64, 2),
        ]
    rows = []
    try:
        shots = work / "shots"
        write_toyworld(shots, 8, 1003, quiet=True)
        for name, widths, batches, steps, n, repeats in plans:
            if widths is None:
                spec, folder, params = FeatureSpec(), "toyworld", None
            else:
                size = 64 if args.smoke else 256
                folder = work / name
                params = big_unet_folder(folder, size, widths)
                spec = FeatureSpec(resolution=size)  # masks come out at the image size
            for dtype in dtypes:
                for channels_last in (False, True):
                    for compiled in (False, True) if args.compile else (False,):
                        if time.monotonic() - t0 > args.budget_s:
                            print(f"budget reached: skipping {name} {dtype} channels_last={channels_last}")
                            continue
                        gen = load_generator(str(folder), args.device, dtype)
                        if channels_last:
                            gen.unet.to(memory_format=torch.channels_last)
                        if compiled:
                            gen.unet.forward = torch.compile(gen.unet.forward)
                        lab_dir = work / f"lab-{name}-{dtype}-{int(channels_last)}-{int(compiled)}"
                        if widths is None:
                            lab = train_labeler(gen, shots, 8, lab_dir, 0, spec)
                        else:
                            lab = load_labeler(random_labeler(gen, lab_dir, spec), gen)
                        for batch in batches:
                            r = run_case(gen, lab, n, batch, steps, work, repeats)
                            row = {"model": name, "params": params, "dtype": dtype, "channels_last": channels_last,
                                   "compile": compiled, "batch": batch, "steps": steps, "n": n, **r}  # fmt: skip
                            rows.append(row)
                            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"\n{name}, torch {torch.__version__}, {time.monotonic() - t0:.0f} s\n")
    print(
        "| model | dtype | channels_last | compile | batch | steps | bare samples/s | ours samples/s | ours / bare | GPU util bare | GPU util ours |"
    )  # noqa: E501
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ub = "–" if r["util_bare"] is None else f"{r['util_bare']:.0f}%"
        uo = "–" if r["util_ours"] is None else f"{r['util_ours']:.0f}%"
        model = r["model"] + (f" ({r['params'] / 1e6:.0f}M params)" if r["params"] else "")
        print(f"| {model} | {r['dtype']} | {r['channels_last']} | {r['compile']} | {r['batch']} | {r['steps']} | "
              f"{r['bare_sps']:.1f} | {r['ours_sps']:.1f} | {r['ratio']:.2f} | {ub} | {uo} |")  # fmt: skip


if __name__ == "__main__":
    main()
