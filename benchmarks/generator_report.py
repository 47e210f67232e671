"""The generator tables of docs/generator.md: recipe pilots and the shipped model, judged alike.

Each row is `dpp eval-generator` (the library call behind it) on one generator against the same held-out
real images (`dpp toyworld --n N --seed 1`, flat style), with the same seeds, sampler and steps; its
result is kept as runs/generator-report/<name>.json, so rows are measured once and the table is rewritten
from all of them. A row names its generator folder, its training steps and wall time (from the folder's
dpp_generator.json).

    python benchmarks/generator_report.py --name shipped --generator toyworld --n 1000
    python benchmarks/generator_report.py --name real-vs-real --real-seed 2 --n 1000   # the ceiling row
    python benchmarks/generator_report.py --table-only      # rewrite the table from the stored rows
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_section  # noqa: E402
from manifests.format.layout import write_bytes_atomic  # noqa: E402
from manifests.storage.reader import iter_samples  # noqa: E402
from pipeline.diffusion.load import load_generator  # noqa: E402
from pipeline.diffusion.pixel import sample  # noqa: E402
from pipeline.diffusion.sampling import DEFAULT_CFG_SCALE, SampleRequest, sample_classes  # noqa: E402
from pipeline.evaluation.evalnet import load_evalnet  # noqa: E402
from pipeline.evaluation.generator_quality import evaluate  # noqa: E402
from pipeline.realdata.ingest import write_toyworld  # noqa: E402
from pipeline.seeds import sample_seed  # noqa: E402

BEGIN, END = "<!-- generator-report:begin -->", "<!-- generator-report:end -->"
REAL_SEED, SAMPLE_SEED = 1, 0


def export_checkpoint(ckpt: Path, out: Path, classes: list[str]) -> Path:
    """A diffusers folder from a training checkpoint's EMA weights (ema.safetensors + state.json), so a
    pilot can be judged at any saved step without touching the run."""
    from safetensors.torch import load_file

    from pipeline.diffusion.train import TrainConfig, export

    meta = json.loads((ckpt / "state.json").read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    cfg = TrainConfig(**{k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__})
    info = {"sample_generation": 1}
    if cfg.num_classes:
        info["class_labels"] = {"classes": classes}
    if "train_seconds" in meta:
        info["train_minutes"] = round(meta["train_seconds"] / 60, 1)
    export(out, load_file(ckpt / "ema.safetensors"), cfg, int(meta["step"]), meta.get("losses", []), info)
    return out


def measure_real(args: argparse.Namespace) -> dict:
    """The ceiling row: a second draw of real images (`dpp toyworld --seed REAL`) judged as if generated."""
    t0 = time.monotonic()
    work = Path(args.work)
    real_dir, other_dir = work / f"real-{args.n}", work / f"real-{args.n}-seed{args.real_seed}"
    write_toyworld(real_dir, args.n, REAL_SEED, quiet=True)
    write_toyworld(other_dir, args.n, args.real_seed, quiet=True)
    real = np.stack([s.image for s in iter_samples(real_dir)])
    other = np.stack([s.image for s in iter_samples(other_dir)])
    net, cfg = load_evalnet()
    q = evaluate(net, cfg, real, other)
    return {
        "name": args.name,
        "generator": f"real images, dpp toyworld --seed {args.real_seed}",
        "source": "real",
        "trained_steps": None,
        "train_minutes": None,
        "recipe_note": args.note
        or "real images against the held-out real images: the ceiling of each figure",
        "conditional": False,
        "cfg_scale": None,
        "n": args.n,
        "ddim_steps": None,
        "eval_seconds": round(time.monotonic() - t0),
        "command": shlex.join(sys.argv[1:]),
        **q.as_json(),
    }


def measure(args: argparse.Namespace) -> dict:
    if args.real_seed is not None:
        return measure_real(args)
    t0 = time.monotonic()
    work = Path(args.work)
    if args.checkpoint:
        folder = export_checkpoint(
            Path(args.checkpoint), work / "models" / args.name, ["disk", "square", "triangle"]
        )
        args.generator = str(folder)
    real_dir = work / f"real-{args.n}"
    write_toyworld(real_dir, args.n, REAL_SEED, quiet=True)
    real = np.stack([s.image for s in iter_samples(real_dir)])
    gen = load_generator(args.generator, args.device)
    net, cfg = load_evalnet()
    seeds = [sample_seed(SAMPLE_SEED, 0, i) for i in range(args.n)]
    asked = sample_classes(gen, SampleRequest(n=args.n, seed=SAMPLE_SEED, cfg_scale=args.cfg_scale))
    scale = DEFAULT_CFG_SCALE if args.cfg_scale is None else args.cfg_scale
    fake = sample(gen, seeds, args.scheduler, args.steps, 32, classes=asked, cfg_scale=scale)
    q = evaluate(net, cfg, real, fake, asked=asked)
    info = dict(gen.info)
    if args.minutes is not None:
        info["train_minutes"] = args.minutes
    return {
        "name": args.name,
        "generator": gen.id,
        "source": args.generator,
        "trained_steps": info.get("trained_steps"),
        "train_minutes": info.get("train_minutes"),
        "recipe_note": args.note,
        "conditional": bool(gen.class_names),
        "cfg_scale": scale if gen.class_names else None,
        "n": args.n,
        "ddim_steps": args.steps,
        "scheduler": args.scheduler,
        "eval_seconds": round(time.monotonic() - t0),
        "command": shlex.join(sys.argv[1:]),
        **q.as_json(),
    }


def _sampler(r: dict) -> str:
    if not r["ddim_steps"]:
        return "—"
    kind = r.get("scheduler", "ddim")
    return str(r["ddim_steps"]) if kind == "ddim" else f"{kind} {r['ddim_steps']}"


def table(rows: list[dict]) -> str:
    lines = [
        BEGIN,
        f"Written by `python benchmarks/generator_report.py` ({time.strftime('%Y-%m-%d')}, Python "
        f"{platform.python_version()}); each row's own command is listed below the table. Real images: "
        f"`dpp toyworld --n N --seed {REAL_SEED}` (flat); generated: seeds of job seed {SAMPLE_SEED}, DDIM "
        "unless the sampler column names another (dpm: DPM-Solver++ 2M), "
        "classes balanced for a class-conditional model; judge: the shipped evaluation network.",
        "",
        "| row | steps | train min | N | sampler steps | cfg | precision | recall | Fréchet | drawn as asked | "
        "purity (real) | shows disk / square / triangle (real) | objects disk / square / triangle (real) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        shares = " / ".join(f"{v:.2f}" for v in r["class_share_generated"].values())
        shares_real = " / ".join(f"{v:.2f}" for v in r["class_share_real"].values())
        objs = " / ".join(f"{v:.2f}" for v in r["object_share_generated"].values())
        objs_real = " / ".join(f"{v:.2f}" for v in r["object_share_real"].values())
        asked = "—" if r["drawn_as_asked"] is None else f"{r['drawn_as_asked']:.3f}"
        minutes = "—" if r.get("train_minutes") is None else f"{r['train_minutes']:.0f}"
        lines.append(
            f"| {r['name']} | {r['trained_steps'] or '—'} | {minutes} | {r['n']} | {_sampler(r)} | "
            f"{r['cfg_scale'] if r['cfg_scale'] is not None else '—'} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['frechet_distance']:.3f} | {asked} | {r['shape_purity_generated']:.3f} "
            f"({r['shape_purity_real']:.3f}) | {shares} ({shares_real}) | {objs} ({objs_real}) |"
        )
    lines += ["", "Rows (generator id, what it is, the command that measured it):", ""]
    for r in rows:
        lines.append(f"- **{r['name']}** `{r['generator']}`: {r['recipe_note']}")
        lines.append(f"  `python benchmarks/generator_report.py {r['command']}` ({r['eval_seconds']} s)")
    lines.append(END)
    return "\n".join(lines) + "\n"


def _num(text: str):
    text = text.strip()
    return None if text == "—" else float(text)


def _three(text: str, names: tuple[str, ...]) -> tuple[dict, dict]:
    """'0.33 / 0.34 / 0.32 (0.35 / 0.32 / 0.33)' -> (generated, real) per class."""
    gen, real = text.split("(")
    g = [float(v) for v in gen.split("/")]
    r = [float(v) for v in real.rstrip(") ").split("/")]
    return dict(zip(names, g, strict=True)), dict(zip(names, r, strict=True))


def rows_from_section(text: str) -> list[dict]:
    """The rows a written table shows, read back (figures at the table's 3 decimals): for rows whose stored
    JSON is lost, so that adding a row never drops the others."""
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    table = [
        ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith(("| row", "| ---"))
    ]
    notes = re.findall(r"^- \*\*(.+?)\*\* `(.+?)`: (.*)\n  `python benchmarks/generator_report.py (.*)` \((\d+) s\)$",
                       section, flags=re.M)  # fmt: skip
    names = ("disk", "square", "triangle")
    rows = []
    for line, (name, gen_id, note, command, seconds) in zip(table, notes, strict=True):
        c = [v.strip() for v in line.strip("|").split("|")]
        if c[0] != name:
            raise ValueError(f"table row {c[0]!r} and listed row {name!r} differ")
        sampler = c[4].split()
        shares, shares_real = _three(c[11], names)
        objects, objects_real = _three(c[12], names)
        purity, purity_real = c[10].split("(")
        rows.append({
            "name": name, "generator": gen_id, "recipe_note": note, "command": command,
            "eval_seconds": int(seconds), "source": "real" if gen_id.startswith("real images") else "recovered",
            "trained_steps": None if c[1] == "—" else int(c[1]), "train_minutes": _num(c[2]), "n": int(c[3]),
            "ddim_steps": None if c[4] == "—" else int(sampler[-1]),
            "scheduler": sampler[0] if len(sampler) == 2 else "ddim", "cfg_scale": _num(c[5]),
            "precision": float(c[6]), "recall": float(c[7]), "frechet_distance": float(c[8]),
            "drawn_as_asked": _num(c[9]), "shape_purity_generated": float(purity),
            "shape_purity_real": float(purity_real.rstrip(") ")),
            "class_share_generated": shares, "class_share_real": shares_real,
            "object_share_generated": objects, "object_share_real": objects_real,
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs/generator-report"), help="folder for rows and corpora")
    p.add_argument("--out", default=str(ROOT / "docs/generator.md"), help="markdown file to write into")
    p.add_argument("--name", help="row name (its result is stored as WORK/NAME.json)")
    p.add_argument("--generator", help="toyworld or a diffusers folder")
    p.add_argument("--checkpoint", help="or a training checkpoint folder (its EMA weights are judged)")
    p.add_argument("--real-seed", type=int, help="or a second draw of real images (the ceiling row)")
    p.add_argument(
        "--minutes", type=float, default=None, help="training wall time, where the folder lacks it"
    )
    p.add_argument("--note", default="", help="what the row is (recipe, pilot)")
    p.add_argument("--n", type=int, default=1000, help="generated and real images")
    p.add_argument("--steps", type=int, default=50, help="sampler steps")
    p.add_argument(
        "--scheduler", default="ddim", choices=("ddim", "dpm"), help="sampler (dpm: DPM-Solver++ 2M)"
    )
    p.add_argument("--cfg-scale", type=float, default=None, help="class-conditional: CFG scale (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--table-only", action="store_true", help="only rewrite the table from stored rows")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if not (args.name and (args.generator or args.checkpoint or args.real_seed is not None)):
            p.error("--name and --generator (or --checkpoint, or --real-seed) are needed to measure a row")
        row = measure(args)
        write_bytes_atomic(
            work / f"{args.name}.json", (json.dumps(row, indent=2, sort_keys=True) + "\n").encode()
        )
        print(json.dumps(row, indent=2, sort_keys=True))
    rows = [json.loads(f.read_text()) for f in sorted(work.glob("*.json"))]
    out = Path(args.out)
    if out.exists() and BEGIN in out.read_text():  # rows already in the table but not under --work stay
        have = {r["name"] for r in rows}
        rows += [r for r in rows_from_section(out.read_text()) if r["name"] not in have]
    rows.sort(
        key=lambda r: (r["source"] == "real", r["name"] == "shipped", r.get("train_minutes") or 0, r["name"])
    )
    write_section(Path(args.out), table(rows), BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
