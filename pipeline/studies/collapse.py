"""`dpp study collapse`: the self-consuming loop at toy scale.

Generation 1 is the given generator (the shipped one was trained on real toy-world data). For each
policy and each generation g = 1..G:
  1. a labeler for generation g's generator (K shots of the real set) and N samples from it
     (unfiltered, unguided: the policy is the only thing that differs between arms);
  2. generation g measured against held-out real images in the fixed evaluation network's space:
     precision, recall, Frechet distance, class coverage (share of samples showing each class) and
     the labeled mask-area distribution (mean pixel share of each class);
  3. the training set of generation g + 1 by policy, with `dpp mix`:
       replace     only generation g's samples
       accumulate  the previous training set plus generation g's samples (real data stays)
       fresh       R new real samples plus generation g's samples
  4. generation g + 1's generator: generation g's weights fine-tuned on that set (short training).
Every corpus is written under OUT (audit them with `dpp audit`), every finished step is kept, so an
interrupted study resumes, and the table goes to OUT/collapse.md and OUT/collapse.json, the plot to
OUT/collapse.png.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from manifests.errors import UsageError
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest

POLICIES = ("replace", "accumulate", "fresh")


@dataclass(frozen=True)
class StudyConfig:
    generations: int = 3  # G: model generations measured per policy
    policies: tuple[str, ...] = ("replace", "accumulate")
    n_real: int = 1000  # R: real training images (and new real images per generation for `fresh`)
    n_synthetic: int = 1000  # N: samples drawn from each generation
    n_eval: int = 500  # held-out real images the generations are measured against
    finetune_steps: int = 300  # optimizer steps from one generation's weights to the next
    lr: float = 2e-4  # fine-tuning peak learning rate
    denoise_steps: int = 25  # DDIM steps per sample
    shots: int = 8  # labeler support images (from the real set)
    seed: int = 0

    def __post_init__(self):
        if self.generations < 1:
            raise UsageError(f"--generations {self.generations} is not allowed; it must be positive")
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise UsageError(
                f"--policies {','.join(bad) or '(none)'} is not allowed; choose from {', '.join(POLICIES)}"
            )
        for name in ("n_real", "n_synthetic", "n_eval", "finetune_steps", "denoise_steps", "shots"):
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} {getattr(self, name)} is not allowed; it must be positive"
                )


def _cached(path: Path, make: Callable[[], dict]) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return value


def _mask_areas(corpus: Path, classes: list[str]) -> dict[str, float]:
    rows = []
    for s in load_corpus(corpus)["shards"]:
        rows += read_manifest(manifest_path(corpus, s["name"])).to_pylist()
    fr = np.array([r["class_pixel_fraction"] for r in rows if r["kept"]])
    return {c: round(float(fr[:, i].mean()), 4) for i, c in enumerate(classes) if c != "background"}


def run_study(cfg: StudyConfig, out: Path, generator: str = "toyworld", device: str = "auto",
              say: Callable[[str], None] = print, allow_pickle: bool = False) -> dict:  # fmt: skip
    from manifests.mix import mix
    from manifests.storage.reader import load_images, single_class_labels
    from pipeline.diffusion.load import load_generator
    from pipeline.diffusion.train import TrainConfig, train, training_provenance
    from pipeline.evaluation.evalnet import load_evalnet
    from pipeline.evaluation.generator_quality import evaluate
    from pipeline.filtering.rules import FilterRules
    from pipeline.generate.run import generate
    from pipeline.labeling.fewshot import train_labeler
    from pipeline.realdata.ingest import write_toyworld

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def log(text: str) -> None:
        say(f"[{time.monotonic() - t0:7.1f}s] {text}")

    real, heldout = out / "real", out / "heldout"
    write_toyworld(real, cfg.n_real, cfg.seed + 2001, quiet=True)
    write_toyworld(heldout, cfg.n_eval, cfg.seed + 2002, quiet=True)
    net, ncfg = load_evalnet()
    held_images = load_images([heldout])
    rules = FilterRules(min_target_pixels=0, drop_fraction=0.0)
    rows = []
    for policy in cfg.policies:
        train_sets = [real]
        gen_spec = generator
        for g in range(1, cfg.generations + 1):
            # generation 1 is the same model for every policy: its folder is shared
            tag = "g1" if g == 1 else f"{policy}/g{g}"
            step = out / tag
            step.mkdir(parents=True, exist_ok=True)
            gen = load_generator(gen_spec, device, allow_pickle=allow_pickle and gen_spec == generator)
            lab = _labeler(gen, real, cfg.shots, step / "labeler", cfg.seed, train_labeler)
            syn = step / "synthetic"
            log(f"{policy} generation {g}: {cfg.n_synthetic} samples from {gen.id}")
            plan = tuple(gen.class_names)  # a class-conditional generator draws balanced classes
            generate(gen, lab, cfg.n_synthetic, cfg.seed + g, syn, shard_size=max(1, cfg.n_synthetic),
                     steps=cfg.denoise_steps, batch_size=16, quiet=True, rules=rules, class_plan=plan)  # fmt: skip
            classes = list(load_corpus(syn)["classes"])

            def measure(syn=syn, gen=gen, classes=classes) -> dict:
                q = evaluate(net, ncfg, held_images, load_images([syn]))
                return {
                    "generator": gen.id,
                    "sample_generation": int(gen.info.get("sample_generation", 1)),
                    "precision": round(q.precision, 4),
                    "recall": round(q.recall, 4),
                    "frechet_distance": round(q.frechet_distance, 4),
                    "class_share": {c: round(v, 4) for c, v in q.class_share_generated.items()},
                    "class_share_real": {c: round(v, 4) for c, v in q.class_share_real.items()},
                    "mask_area": _mask_areas(syn, classes),
                }

            m = _cached(step / "measure.json", measure)
            train_set = load_corpus(train_sets[-1])
            rows.append(
                {
                    "policy": policy,
                    "generation": g,
                    "train_real": train_set["counts"]["real"],
                    "train_synthetic": train_set["counts"]["synthetic"],
                    **m,
                }
            )
            log(
                f"{policy} generation {g}: precision {m['precision']}, recall {m['recall']}, FD {m['frechet_distance']}"
            )
            if g == cfg.generations:
                break
            # the next training set, by policy, and the next generator
            nxt = out / policy / f"train-g{g + 1}"
            nxt.parent.mkdir(parents=True, exist_ok=True)
            if policy == "replace":
                mix([syn], nxt, cfg.seed, policy="replace", overwrite=True)
            elif policy == "accumulate":
                mix([train_sets[-1], syn], nxt, cfg.seed, policy="accumulate", overwrite=True)
            else:
                fresh = out / policy / f"real-g{g + 1}"
                write_toyworld(fresh, cfg.n_real, cfg.seed + 3000 + g, quiet=True)
                n = cfg.n_real + load_corpus(syn)["counts"]["synthetic"]  # every sample of both
                mix([fresh, syn], nxt, cfg.seed, n=n, policy="fresh", real_fraction=cfg.n_real / n,
                    overwrite=True)  # fmt: skip
            train_sets.append(nxt)
            gen_dir = out / policy / f"g{g + 1}" / "generator"
            if not (gen_dir / "dpp_generator.json").is_file():
                log(f"{policy}: fine-tuning generation {g + 1} for {cfg.finetune_steps} steps on {nxt.name}")
                recipe = dict(gen.info.get("recipe") or {})
                known = set(TrainConfig.__dataclass_fields__)
                base = {k: (tuple(v) if isinstance(v, list) else v) for k, v in recipe.items() if k in known}
                # the fine-tune has its own schedule: warm-up, then a constant rate (no cool-down of the base run)
                tcfg = TrainConfig(**{**base, "steps": cfg.finetune_steps, "lr": cfg.lr, "decay_from": 0,
                                      "warmup": max(1, cfg.finetune_steps // 10), "seed": cfg.seed + g})  # fmt: skip
                rec = load_corpus(nxt)
                labels = None
                if tcfg.num_classes:  # class-conditional: each image's one class, from its mask
                    labels = single_class_labels([nxt], rec["classes"])
                provenance = {
                    **training_provenance(
                        [nxt], [rec], labels, list(rec["classes"]) if labels is not None else None
                    ),
                    "finetuned_from": gen.id,
                }
                state = {k: v.detach().cpu() for k, v in gen.unet.state_dict().items()}
                train(load_images([nxt]), gen_dir, tcfg, device=str(gen.device), provenance=provenance,
                      init_state=state, labels=labels)  # fmt: skip
            gen_spec = str(gen_dir)
    result = {"config": asdict(cfg), "generator": generator, "rows": rows}
    (out / "collapse.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "collapse.md").write_text(format_table(result) + "\n")
    plot_study(result, out / "collapse.png")
    return result


def _labeler(gen, real: Path, shots: int, folder: Path, seed: int, train_labeler):
    from pipeline.labeling.fewshot import load_labeler

    if (folder / "labeler.json").is_file():
        return load_labeler(folder, gen)
    return train_labeler(gen, real, shots, folder, seed)


def format_table(result: dict) -> str:
    rows = result["rows"]
    classes = list(rows[0]["class_share"]) if rows else []
    head = ["policy", "gen", "trained on (real + syn)", "precision", "recall", "Fréchet"]
    head += [f"shows {c}" for c in classes] + [f"area {c}" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        trained = "real (shipped)" if r["generation"] == 1 else f"{r['train_real']} + {r['train_synthetic']}"
        cells = [r["policy"], str(r["generation"]), trained, f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                 f"{r['frechet_distance']:.3f}"]  # fmt: skip
        cells += [f"{r['class_share'][c]:.2f}" for c in classes] + [
            f"{r['mask_area'][c]:.3f}" for c in classes
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        real = rows[0]["class_share_real"]
        lines.append("")
        lines.append(
            "Held-out real images under the same network: "
            + ", ".join(f"shows {c} {v:.2f}" for c, v in real.items())
        )
    return "\n".join(lines)


COLOURS = {"replace": (220, 80, 40), "accumulate": (40, 110, 200), "fresh": (60, 160, 80)}


def plot_study(result: dict, out: Path) -> Path:
    """collapse.png: precision, recall and Fréchet distance per generation, one line per policy (Pillow)."""
    import io

    from PIL import Image, ImageDraw

    from manifests.format.layout import write_bytes_atomic

    rows = result["rows"]
    metrics = ("precision", "recall", "frechet_distance")
    gens = sorted({r["generation"] for r in rows})
    pw, ph, pad = 220, 160, 30
    img = Image.new("RGB", (pad + len(metrics) * (pw + pad), ph + 3 * pad + 20), "white")
    d = ImageDraw.Draw(img)
    for m_i, metric in enumerate(metrics):
        x0, y0 = pad + m_i * (pw + pad), pad
        top = max(1.0, max(r[metric] for r in rows)) if metric == "frechet_distance" else 1.0
        d.rectangle([x0, y0, x0 + pw, y0 + ph], outline=(180, 180, 180))
        d.text((x0, y0 - 14), f"{metric.replace('_', ' ')} (0..{top:.2g})", fill=(0, 0, 0))

        def xy(g, v, x0=x0, y0=y0, top=top):
            x = x0 + (pw * (g - gens[0]) / max(1, gens[-1] - gens[0]))
            return x, y0 + ph - ph * min(v, top) / top

        for g in gens:
            d.text((xy(g, 0)[0] - 3, y0 + ph + 4), str(g), fill=(0, 0, 0))
        for policy in dict.fromkeys(r["policy"] for r in rows):
            pts = [xy(r["generation"], r[metric]) for r in rows if r["policy"] == policy]
            colour = COLOURS.get(policy, (0, 0, 0))
            d.line(pts, fill=colour, width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    x = pad
    for policy in dict.fromkeys(r["policy"] for r in rows):
        d.rectangle([x, ph + 2 * pad + 6, x + 10, ph + 2 * pad + 16], fill=COLOURS.get(policy, (0, 0, 0)))
        d.text((x + 14, ph + 2 * pad + 5), f"{policy}   (x: model generation)", fill=(0, 0, 0))
        x += 260
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(Path(out), buf.getvalue())
    return Path(out)
