"""Performance (issue 9): what dataplusplus adds around the sampler, measured against baselines run side by
side in this same process, and written into docs/benchmarks.md (`make bench`).

    python benchmarks/perf.py [--repeats 3] [--n 128] [--steps 50] [--work runs/bench-perf]

1. overhead   kept samples/s of the generation job (in-process, the code each Prefect task runs:
              render + feature capture + labeling + filter + PNG + tar + Parquet), without and with
              guidance, vs the bare diffusers DDIMPipeline with the same UNet, steps and batch size
              writing nothing; runs alternate, medians of --repeats.
2. labeling   per batch: feature capture + head inference time as a fraction of the denoising time.
3. writing    our ShardWriter vs plain `tarfile` writing the same pre-encoded bytes.
4. scaling    `dpp generate --runner dask --workers 1` vs `--workers 2` (real command line).
5. profile    torch.profiler over one batch of the job: where the time goes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_section  # noqa: E402
from manifests.storage.writer import ShardWriter, encode_png  # noqa: E402
from pipeline.diffusion.load import load_generator  # noqa: E402
from pipeline.filtering.rules import FilterRules  # noqa: E402
from pipeline.generate.run import generate  # noqa: E402
from pipeline.guidance.classifier import alphas_cumprod, load_classifier  # noqa: E402
from pipeline.guidance.guide import Guide, parse_class_plan  # noqa: E402
from pipeline.guidance.guide import render as guided_render  # noqa: E402
from pipeline.labeling.fewshot import _features, load_labeler  # noqa: E402
from pipeline.realdata import toyworld  # noqa: E402
from pipeline.seeds import sample_seed  # noqa: E402

DOC = ROOT / "docs/benchmarks.md"
KEEP_ALL = FilterRules(min_target_pixels=0, drop_fraction=0.0)  # every candidate kept: overhead only


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def dpp(*args: str, env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))", *args],
        cwd=ROOT,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return time.perf_counter() - t


def labeler(work: Path) -> Path:
    shots, lab = work / "shots-8", work / "labeler-8"
    if not (lab / "labeler.json").exists():
        dpp("toyworld", "--n", "8", "--seed", "1003", "--out", str(shots), "--quiet", "--overwrite")
        dpp("train-labeler", "--generator", "toyworld", "--data", str(shots), "--out", str(lab), "--quiet")
    return lab


def bench_overhead(args, gen, lab, work: Path) -> dict:
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = DDIMPipeline(unet=gen.unet, scheduler=DDIMScheduler.from_config(gen.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    clf = load_classifier(Path("toyworld"), gen)
    guide = Guide(clf.model, tuple(clf.classes), 10.0, alphas_cumprod(gen), clf.id)
    plan = parse_class_plan("balanced", lab.classes)
    n, bs = args.n, args.batch_size
    times: dict[str, list[float]] = {"bare": [], "ours": [], "ours_guided": []}
    for r in range(args.repeats):
        t = time.perf_counter()
        for b in range(0, n, bs):
            gens = [torch.Generator().manual_seed(sample_seed(7, r, i)) for i in range(b, min(n, b + bs))]
            pipe(batch_size=len(gens), generator=gens, num_inference_steps=args.steps, output_type="np")
        times["bare"].append(time.perf_counter() - t)
        for name, g in (("ours", None), ("ours_guided", guide)):
            out = work / f"{name}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            generate(
                gen, lab, n, 7 + r, out, shard_size=n, steps=args.steps, batch_size=bs, quiet=True,
                rules=KEEP_ALL, guide=g, class_plan=plan if g else (),
            )  # fmt: skip
            times[name].append(time.perf_counter() - t)
            shutil.rmtree(out)
        print(f"  overhead run {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    return {k: {"median_s": med(v), "runs": v, "samples_per_s": n / med(v)} for k, v in times.items()}


def bench_labeling(args, gen, lab) -> dict:
    from labelers import pixel_head

    render_s, feat_s, head_s = [], [], []
    for r in range(args.repeats):
        seeds = [sample_seed(9, r, i) for i in range(args.batch_size)]
        t = time.perf_counter()
        images, _ = guided_render(gen, seeds, "ddim", args.steps)
        render_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        feats = _features(gen, images, seeds, lab.spec)
        feat_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        pixel_head.label(lab.head, feats)
        head_s.append(time.perf_counter() - t)
    fr = [(f + h) / d for f, h, d in zip(feat_s, head_s, render_s, strict=True)]
    return {
        "render_s": med(render_s),
        "features_s": med(feat_s),
        "head_s": med(head_s),
        "fraction": med(fr),
        "members": lab.head.cfg.members,
        "hidden": list(lab.head.cfg.hidden),
        "channels": lab.head.cfg.in_channels,
    }


def bench_writing(args, work: Path) -> dict:
    n = 2000
    scenes = [toyworld.render_scene(sample_seed(0, 0, i)) for i in range(n)]
    encoded = [(encode_png(s.image), encode_png(s.mask)) for s in scenes]

    def ours(r, threads=0):
        w = ShardWriter(
            work / f"w{r}-{threads}", 0, list(toyworld.CLASSES), "bench", {}, encode_threads=threads
        )
        for i, s in enumerate(scenes):
            w.add(f"k{i:06d}", s.image, s.mask, {"origin": "real", "generation": 0}, source="bench")
        w.close()

    def ours_threads(r):
        ours(r, threads=2)

    def encode_only(r):
        for s in scenes:
            encode_png(s.image), encode_png(s.mask)

    def plain(r):  # bytes already encoded, no manifest, no hashing, no fsync: a lower bound
        with tarfile.open(work / f"plain{r}.tar", "w") as tar:
            for i, (png, seg) in enumerate(encoded):
                for ext, data in (("png", png), ("seg.png", seg), ("json", b"{}")):
                    ti = tarfile.TarInfo(f"k{i:06d}.{ext}")
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))

    times: dict[str, list[float]] = {"ours": [], "ours_threads": [], "encode_only": [], "plain": []}
    for r in range(args.repeats):
        for name, fn in (
            ("ours", ours),
            ("ours_threads", ours_threads),
            ("encode_only", encode_only),
            ("plain", plain),
        ):
            t = time.perf_counter()
            fn(r)
            times[name].append(time.perf_counter() - t)
    with tarfile.open(work / "w0-0/shards/shard-000000.tar") as tar:
        assert len(tar.getmembers()) == 3 * n  # what was timed was a complete shard
    same = (work / "w0-0/shards/shard-000000.tar").read_bytes() == (
        work / "w0-2/shards/shard-000000.tar"
    ).read_bytes()
    assert same  # threads change when PNGs are encoded, not the bytes
    for r in range(args.repeats):
        shutil.rmtree(work / f"w{r}-0")
        shutil.rmtree(work / f"w{r}-2")
        (work / f"plain{r}.tar").unlink()
    return {"n": n, **{k: {"median_s": med(v), "samples_per_s": n / med(v)} for k, v in times.items()}}


def bench_scaling(args, lab: Path, work: Path) -> dict:
    n, steps = 2 * args.batch_size, max(10, args.steps // 2)
    res: dict[str, list[float]] = {"1": [], "2": []}
    for r in range(max(2, args.repeats - 1)):
        for w in ("1", "2"):
            out = work / f"dask-{w}"
            shutil.rmtree(out, ignore_errors=True)
            res[w].append(
                dpp(
                    "generate", "--generator", "toyworld", "--labeler", str(lab), "--n", str(n), "--seed", "7",
                    "--steps", str(steps), "--batch-size", str(args.batch_size), "--shard-size", str(n // 4),
                    "--min-target-pixels", "0", "--drop-fraction", "0", "--runner", "dask", "--workers", w,
                    "--out", str(out), "--quiet", "--device", "cpu",
                )
            )  # fmt: skip
            shutil.rmtree(out)
        print(f"  dask run {r}: 1 worker {res['1'][-1]:.1f} s, 2 workers {res['2'][-1]:.1f} s", flush=True)
    return {"n": n, "steps": steps, "shards": 4, "1": med(res["1"]), "2": med(res["2"]), "runs": res}


def profile(args, gen, lab, work: Path) -> list[tuple[str, float, float]]:
    from torch.profiler import ProfilerActivity, profile

    out = work / "profiled"
    shutil.rmtree(out, ignore_errors=True)
    n = args.batch_size
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(
            gen, lab, n, 3, out, shard_size=n, steps=args.steps, batch_size=n, quiet=True, rules=KEEP_ALL
        )
    shutil.rmtree(out)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return [[e.key, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total] for e in rows]


def vars_of(args) -> dict:
    return {k: v for k, v in vars(args).items() if k in ("repeats", "n", "steps", "batch_size")}


def markdown(args, res: dict, seconds: float) -> str:
    o, lb, w, sc = res["overhead"], res["labeling"], res["writing"], res["scaling"]
    ratio = o["ours"]["samples_per_s"] / o["bare"]["samples_per_s"]
    gratio = o["ours_guided"]["samples_per_s"] / o["bare"]["samples_per_s"]
    lines = [
        "<!-- perf:begin -->",
        "## Throughput, labeling cost, shard writing, scaling (`benchmarks/perf.py`)",
        "",
        f"Produced by `python benchmarks/perf.py --repeats {args.repeats} --n {args.n} --steps {args.steps}` "
        f"(`make bench`) on {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, no GPU, in {seconds / 60:.0f} min. Medians of {args.repeats} runs; "
        "each ratio is against a baseline run alternately with it in the same process.",
        "",
        f"### 1. Pipeline overhead (shipped toy-world generator, {args.steps} DDIM steps, batch {args.batch_size}, "
        f"{args.n} samples per run)",
        "",
        "| what | median s | kept samples/s | ratio to bare diffusers |",
        "|---|---:|---:|---:|",
        f"| bare `DDIMPipeline`, same UNet, writing nothing | {o['bare']['median_s']:.1f} | "
        f"{o['bare']['samples_per_s']:.2f} | 1.00 |",
        f"| our job: render + features + labeling + filter + PNG + tar + Parquet, no guidance | "
        f"{o['ours']['median_s']:.1f} | {o['ours']['samples_per_s']:.2f} | **{ratio:.2f}** |",
        f"| our job with classifier guidance (shipped classifier, s = 10, balanced) | "
        f"{o['ours_guided']['median_s']:.1f} | {o['ours_guided']['samples_per_s']:.2f} | **{gratio:.2f}** |",
        "",
        "Target ≥ 0.85 without guidance. The filter here keeps every candidate (`--min-target-pixels 0 "
        "--drop-fraction 0`), so the ratio measures work, not rejections; with the default rules a job also "
        "renders the candidates it rejects (about 10% more with the default `--drop-fraction 0.1`).",
        "",
        f"### 2. Labeling cost (one batch of {args.batch_size})",
        "",
        "| denoising | feature capture | head inference | (features + head) / denoising |",
        "|---:|---:|---:|---:|",
        f"| {lb['render_s']:.2f} s | {lb['features_s']:.2f} s | {lb['head_s']:.2f} s | **{100 * lb['fraction']:.1f}%** |",
        "",
        f"Target ≤ 10%. The head is an ensemble of {lb['members']} MLPs ({lb['channels']} → "
        f"{' → '.join(map(str, lb['hidden']))} → classes) applied to every pixel.",
        "",
        f"### 3. Shard writing ({w['n']:,} toy-world samples, 32×32, one shard)",
        "",
        "| what | median s | samples/s | ratio to plain tarfile |",
        "|---|---:|---:|---:|",
        f"| ShardWriter: encode 2 PNGs + tar + sha256 + Parquet + fsync | {w['ours']['median_s']:.3f} | "
        f"{w['ours']['samples_per_s']:.0f} | **{w['ours']['samples_per_s'] / w['plain']['samples_per_s']:.2f}** |",
        f"| the same with PNG encoding in 2 threads (`encode_threads=2`, what a GPU job uses) | {w['ours_threads']['median_s']:.3f} | "
        f"{w['ours_threads']['samples_per_s']:.0f} | **{w['ours_threads']['samples_per_s'] / w['plain']['samples_per_s']:.2f}** |",
        f"| PNG encoding alone (2 per sample) | {w['encode_only']['median_s']:.3f} | "
        f"{w['encode_only']['samples_per_s']:.0f} | – |",
        f"| plain `tarfile`, the same bytes pre-encoded | {w['plain']['median_s']:.3f} | "
        f"{w['plain']['samples_per_s']:.0f} | 1.00 |",
        "",
        f"### 4. Scaling: Dask runner, {sc['n']} samples in {sc['shards']} shards, {sc['steps']} steps "
        "(`dpp generate --runner dask`, whole command)",
        "",
        "| workers | median s | speedup |",
        "|---:|---:|---:|",
        f"| 1 | {sc['1']:.1f} | 1.00 |",
        f"| 2 | {sc['2']:.1f} | **{sc['1'] / sc['2']:.2f}** |",
        "",
        f"### 5. Profile (torch.profiler, one job of {args.batch_size} samples, {args.steps} steps)",
        "",
        "| operator | self CPU s | share |",
        "|---|---:|---:|",
        *[f"| `{k}` | {s:.2f} | {100 * f:.1f}% |" for k, s, f in res["profile"]],
        "<!-- perf:end -->",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--work", type=Path, default=ROOT / "runs/bench-perf")
    p.add_argument(
        "--parts",
        default="overhead,labeling,writing,profile,scaling",
        type=lambda v: v.split(","),
        help="parts to (re)run; the others are read from --work when there",
    )
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    gen = load_generator("toyworld", "cpu")
    lab_dir = labeler(args.work)
    lab = load_labeler(lab_dir, gen)
    parts = {
        "overhead": lambda: bench_overhead(args, gen, lab, args.work),
        "labeling": lambda: bench_labeling(args, gen, lab),
        "writing": lambda: bench_writing(args, args.work),
        "profile": lambda: profile(args, gen, lab, args.work),
        "scaling": lambda: bench_scaling(args, lab_dir, args.work),
    }
    res, seconds = {}, 0.0
    for i, (name, fn) in enumerate(parts.items(), 1):
        path = args.work / f"{name}.json"
        if name in args.parts or not path.exists():
            print(f"{i}. {name}", flush=True)
            t = time.monotonic()
            value = fn()
            path.write_text(
                json.dumps({"value": value, "seconds": time.monotonic() - t, **vars_of(args)}) + "\n"
            )
        stored = json.loads(path.read_text())
        res[name], seconds = stored["value"], seconds + stored["seconds"]
    text = markdown(args, res, seconds)
    print(text)
    write_section(DOC, text, "<!-- perf:begin -->", "<!-- perf:end -->")


if __name__ == "__main__":
    main()
