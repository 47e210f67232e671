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
       control     R + N new real samples and no synthetic ones (the size of `fresh`'s set): fine-tuning
                   drift alone, told apart from the effect of training on generated data
  4. generation g + 1's generator: generation g's weights fine-tuned on that set (short training, the
     same steps in every arm).
Per generation also: the mIoU on the held-out real images of the fixed segmenter (`dpp eval-seg`,
`seg_steps` steps) trained on generation g's labeled samples, and the diversity of generation g's
training set (the set its generator was trained on; generation 1: the real set): the Vendi score in the
evaluation network's embedding (pipeline/evaluation/diversity.py) of its first `diversity_images` kept
samples by key, the same number in every arm so the figures compare. Under the table: the Pearson
correlation, over arms, seeds and g, between diversity at generation g and quality (precision, recall,
Fréchet distance, segmenter mIoU) at g + 1.
Seeds: each seed is a full repeat of every arm (its own real and held-out draws, samples and
fine-tunes); seed 0 lives in OUT itself (as before seeds existed), seed S in OUT/seed-S. The table shows
the mean over seeds and, with more than one seed, the range (min-max).
Every corpus is written under OUT (audit them with `dpp audit`), every finished step is kept, so an
interrupted study resumes, and the table goes to OUT/collapse.md and OUT/collapse.json, the plot to
OUT/collapse.png.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from manifests.errors import UsageError
from manifests.format.layout import manifest_path, write_bytes_atomic
from manifests.format.record import load_corpus, read_manifest

POLICIES = ("replace", "accumulate", "fresh", "control")


@dataclass(frozen=True)
class StudyConfig:
    generations: int = 3  # G: model generations measured per policy
    policies: tuple[str, ...] = ("replace", "accumulate")
    n_real: int = 1000  # R: real training images (and new real images per generation for `fresh`)
    n_synthetic: int = 1000  # N: samples drawn from each generation
    n_eval: int = 500  # held-out real images the generations are measured against
    finetune_steps: int = 300  # optimizer steps from one generation's weights to the next
    lr: float = 2e-4  # fine-tuning peak learning rate
    denoise_steps: int = 20  # steps of the default sampler (DPM-Solver++) per sample
    shots: int = 8  # labeler support images (from the real set)
    seeds: tuple[int, ...] = (0,)  # each a full repeat of every arm
    seg_steps: int = 2000  # optimizer steps of the segmenter trained on each generation's samples

    def __post_init__(self):
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            shown = ",".join(map(str, self.seeds)) or "(none)"
            raise UsageError(f"--seeds {shown} is not allowed; give non-negative integers, comma-separated")
        dup = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if dup:
            raise UsageError(
                f"--seeds {','.join(map(str, self.seeds))} is not allowed; seed {dup[0]} is repeated"
            )
        if self.generations < 1:
            raise UsageError(f"--generations {self.generations} is not allowed; it must be positive")
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise UsageError(
                f"--policies {','.join(bad) or '(none)'} is not allowed; choose from {', '.join(POLICIES)}"
            )
        names = ("n_real", "n_synthetic", "n_eval", "finetune_steps", "denoise_steps", "shots", "seg_steps")
        for name in names:
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} {getattr(self, name)} is not allowed; it must be positive"
                )

    @property
    def diversity_images(self) -> int:
        """Images of each training set the diversity is computed on: as many as the smallest set holds."""
        from pipeline.evaluation.diversity import MAX_IMAGES

        return min(self.n_real, self.n_synthetic, MAX_IMAGES)


def parse_seeds(text: str) -> tuple[int, ...]:
    """`--seeds 0,1`: non-negative integers, comma-separated, each once."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not (p.isascii() and p.isdigit()) for p in parts):
        raise UsageError(f"--seeds {text} is not allowed; give non-negative integers, comma-separated (0,1)")
    return tuple(int(p) for p in parts)


def config_from_flags(args, seeds: tuple[int, ...]) -> StudyConfig:
    """The study's settings from its command-line flags (`dpp study collapse`, benchmarks/collapse_study.py)."""
    return StudyConfig(
        generations=args.generations,
        policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
        n_real=args.n_real,
        n_synthetic=args.n_synthetic,
        n_eval=args.n_eval,
        finetune_steps=args.finetune_steps,
        denoise_steps=args.steps,
        shots=args.shots,
        seeds=seeds,
        seg_steps=args.seg_steps,
    )


def _write_json(path: Path, value: dict) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def _cached(path: Path, make: Callable[[], dict]) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    _write_json(path, value)
    return value


@contextmanager
def _timed(path: Path, key: str) -> Iterator[None]:
    """Record the block's wall seconds under `key` in the step's timing file, the first time it finishes
    (a cached step costs nothing the next time, so the recorded figures add up to a cold run's cost)."""
    t = time.monotonic()
    yield
    times = json.loads(path.read_text()) if path.is_file() else {}
    if key not in times:
        _write_json(path, {**times, key: round(time.monotonic() - t, 1)})


# The settings a seed folder's finished steps depend on. Generations, policies and seeds only add steps,
# and the segmenter's steps and the diversity's image count are in their own cache names.
RESULT_SETTINGS = ("n_real", "n_synthetic", "n_eval", "finetune_steps", "lr", "denoise_steps", "shots")
SETTINGS_FILE = "study-settings.json"


# how a setting is named in the refusal
SETTING_FLAGS = {
    "generator": "--generator",
    "lr": "the fine-tuning learning rate",
    "denoise_steps": "--steps",
}


def _settings(cfg: StudyConfig, generator: str) -> dict:
    return {"generator": generator, **{k: getattr(cfg, k) for k in RESULT_SETTINGS}}


def check_settings(cfg: StudyConfig, out: Path, generator: str) -> None:
    """Refuse to resume a seed folder whose finished steps were made with other settings: they would be
    reused as if they were this run's."""
    want = _settings(cfg, generator)
    for seed in cfg.seeds:
        path = seed_folder(out, seed) / SETTINGS_FILE
        if not path.is_file():
            continue
        have = json.loads(path.read_text())
        for key, value in want.items():
            if have.get(key) != value:
                flag = SETTING_FLAGS.get(key, "--" + key.replace("_", "-"))
                raise UsageError(
                    f"{flag} {value} is not allowed for --out {out}: its finished steps were made with "
                    f"{have.get(key)}; give that value or another --out"
                )


def _record_settings(cfg: StudyConfig, out: Path, generator: str) -> None:
    if not (out / SETTINGS_FILE).is_file():
        _write_json(out / SETTINGS_FILE, _settings(cfg, generator))


def _mask_areas(corpus: Path, classes: list[str]) -> dict[str, float]:
    rows = []
    for s in load_corpus(corpus)["shards"]:
        rows += read_manifest(manifest_path(corpus, s["name"])).to_pylist()
    fr = np.array([r["class_pixel_fraction"] for r in rows if r["kept"]])
    return {c: round(float(fr[:, i].mean()), 4) for i, c in enumerate(classes) if c != "background"}


def seed_folder(out: Path, seed: int) -> Path:
    """Where one seed's corpora and models live: OUT for seed 0 (the layout before seeds), else OUT/seed-S."""
    return Path(out) if seed == 0 else Path(out) / f"seed-{seed}"


def run_study(cfg: StudyConfig, out: Path, generator: str = "toyworld", device: str = "auto",
              say: Callable[[str], None] = print, allow_pickle: bool = False) -> dict:  # fmt: skip
    from pipeline.evaluation.evalnet import load_evalnet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def log(text: str) -> None:
        say(f"[{time.monotonic() - t0:7.1f}s] {text}")

    check_settings(cfg, out, generator)
    net = load_evalnet()
    rows = []
    for seed in cfg.seeds:
        rows += _run_seed(cfg, seed, seed_folder(out, seed), net, generator, device, log, allow_pickle)
    result = {
        "config": asdict(cfg),
        "generator": generator,
        "rows": rows,
        "summary": summarize(rows),
        "correlation": correlations(rows),
    }
    (out / "collapse.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "collapse.md").write_text(format_table(result) + "\n")
    plot_study(result, out / "collapse.png")
    return result


def _run_seed(cfg: StudyConfig, seed: int, out: Path, evalnet, generator: str, device: str,
              log: Callable[[str], None], allow_pickle: bool) -> list[dict]:  # fmt: skip
    """Every arm of one seed, under `out`; its rows."""
    from manifests.mix import mix
    from manifests.storage.reader import load_images, single_class_labels
    from pipeline.diffusion.load import load_generator
    from pipeline.diffusion.train import TrainConfig, train, training_provenance
    from pipeline.evaluation.generator_quality import evaluate
    from pipeline.evaluation.segmentation import eval_seg
    from pipeline.filtering.rules import FilterRules
    from pipeline.generate.run import generate
    from pipeline.labeling.fewshot import train_labeler
    from pipeline.realdata.ingest import write_toyworld

    net, ncfg = evalnet
    out.mkdir(parents=True, exist_ok=True)
    _record_settings(cfg, out, generator)
    real, heldout = out / "real", out / "heldout"
    write_toyworld(real, cfg.n_real, seed + 2001, quiet=True)
    write_toyworld(heldout, cfg.n_eval, seed + 2002, quiet=True)
    held_images = load_images([heldout])
    rules = FilterRules(min_target_pixels=0, drop_fraction=0.0)
    say = "" if seed == 0 and len(cfg.seeds) == 1 else f"seed {seed} "
    rows = []
    for policy in cfg.policies:
        train_sets = [real]
        gen_spec = generator
        for g in range(1, cfg.generations + 1):
            # generation 1 is the same model for every policy: its folder is shared
            tag = "g1" if g == 1 else f"{policy}/g{g}"
            step = out / tag
            step.mkdir(parents=True, exist_ok=True)
            timing = step / "timing.json"
            gen = load_generator(gen_spec, device, allow_pickle=allow_pickle and gen_spec == generator)
            with _timed(timing, "labeler"):
                lab = _labeler(gen, real, cfg.shots, step / "labeler", seed, train_labeler)
            syn = step / "synthetic"
            log(f"{say}{policy} generation {g}: {cfg.n_synthetic} samples from {gen.id}")
            plan = tuple(gen.class_names)  # a class-conditional generator draws balanced classes
            with _timed(timing, "samples"):
                generate(gen, lab, cfg.n_synthetic, seed + g, syn, shard_size=max(1, cfg.n_synthetic),
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

            def segment(syn=syn, g=g, policy=policy) -> dict:
                log(f"{say}{policy} generation {g}: segmenter, {cfg.seg_steps} steps on its samples")
                r = eval_seg([syn], heldout, steps=cfg.seg_steps, seed=seed)
                return {"seg_miou": round(r["miou"], 4), "seg_steps": cfg.seg_steps}

            def diversity(train_set=train_sets[-1]) -> dict:
                return {
                    "diversity": round(_diversity(train_set, net, ncfg, cfg.diversity_images), 4),
                    "diversity_images": cfg.diversity_images,
                }

            with _timed(timing, "measure"):
                m = _cached(step / "measure.json", measure)
            with _timed(timing, f"segmenter-{cfg.seg_steps}"):
                seg = _cached(step / f"seg-{cfg.seg_steps}.json", segment)
            with _timed(timing, f"diversity-{cfg.diversity_images}"):
                div = _cached(step / f"diversity-{cfg.diversity_images}.json", diversity)
            train_set = load_corpus(train_sets[-1])
            rows.append(
                {
                    "policy": policy,
                    "seed": seed,
                    "generation": g,
                    "train_real": train_set["counts"]["real"],
                    "train_synthetic": train_set["counts"]["synthetic"],
                    **m,
                    "seg_miou": seg["seg_miou"],
                    "diversity": div["diversity"],
                }
            )
            log(
                f"{say}{policy} generation {g}: precision {m['precision']}, recall {m['recall']}, "
                f"FD {m['frechet_distance']}, seg mIoU {seg['seg_miou']}, diversity {div['diversity']}"
            )
            if g == cfg.generations:
                break
            # the next training set, by policy, and the next generator
            nxt = out / policy / f"train-g{g + 1}"
            nxt.parent.mkdir(parents=True, exist_ok=True)
            n_syn = load_corpus(syn)["counts"]["synthetic"]
            if policy == "replace":
                mix([syn], nxt, seed, policy="replace", overwrite=True)
            elif policy == "accumulate":
                mix([train_sets[-1], syn], nxt, seed, policy="accumulate", overwrite=True)
            elif policy == "control":  # as many images as `fresh`'s set, every one real and new
                write_toyworld(nxt, cfg.n_real + n_syn, seed + 4000 + g, quiet=True)
            else:
                fresh = out / policy / f"real-g{g + 1}"
                write_toyworld(fresh, cfg.n_real, seed + 3000 + g, quiet=True)
                n = cfg.n_real + n_syn  # every sample of both
                mix([fresh, syn], nxt, seed, n=n, policy="fresh", real_fraction=cfg.n_real / n,
                    overwrite=True)  # fmt: skip
            train_sets.append(nxt)
            gen_dir = out / policy / f"g{g + 1}" / "generator"
            if not (gen_dir / "dpp_generator.json").is_file():
                log(
                    f"{say}{policy}: fine-tuning generation {g + 1} for {cfg.finetune_steps} steps on {nxt.name}"
                )
                recipe = dict(gen.info.get("recipe") or {})
                known = set(TrainConfig.__dataclass_fields__)
                base = {k: (tuple(v) if isinstance(v, list) else v) for k, v in recipe.items() if k in known}
                # the fine-tune has its own schedule: warm-up, then a constant rate (no cool-down of the base run)
                tcfg = TrainConfig(**{**base, "steps": cfg.finetune_steps, "lr": cfg.lr, "decay_from": 0,
                                      "warmup": max(1, cfg.finetune_steps // 10), "seed": seed + g})  # fmt: skip
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
                with _timed(timing, "finetune"):
                    train(load_images([nxt]), gen_dir, tcfg, device=str(gen.device), provenance=provenance,
                          init_state=state, labels=labels)  # fmt: skip
            gen_spec = str(gen_dir)
    return rows


def _diversity(corpus: Path, net, ncfg, n: int) -> float:
    """The Vendi score of a training set's first `n` kept samples by key, in the evaluation network's space."""
    from pipeline.evaluation.diversity import first_kept_images, vendi_score
    from pipeline.evaluation.evalnet import embed

    features, _ = embed(net, ncfg, first_kept_images(corpus, n))
    return vendi_score(features)


METRICS = ("precision", "recall", "frechet_distance", "seg_miou", "diversity")


def summarize(rows: list[dict]) -> list[dict]:
    """Per (policy, generation): the mean, min and max over seeds of each metric."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["generation"]), []).append(r)
    out = []
    for (policy, g), rs in groups.items():
        entry = {"policy": policy, "generation": g, "seeds": [r["seed"] for r in rs]}
        for m in METRICS:
            v = np.array([r[m] for r in rs], dtype=float)
            entry[m] = {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
                        "max": round(float(v.max()), 4)}  # fmt: skip
        out.append(entry)
    return out


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.std() == 0 or b.std() == 0:  # a constant has no correlation
        return None
    return round(float(np.corrcoef(a, b)[0, 1]), 4)


def correlations(rows: list[dict]) -> dict:
    """Pearson r between a training set's diversity at generation g and quality at g + 1, over every
    (policy, seed, g) with both; None with fewer than 3 pairs (or a constant side)."""
    by = {(r["policy"], r["seed"], r["generation"]): r for r in rows}
    pairs = [(r, by[(p, s, g + 1)]) for (p, s, g), r in by.items() if (p, s, g + 1) in by]
    div = [a["diversity"] for a, _ in pairs]
    out: dict = {"pairs": len(pairs)}
    for m in ("precision", "recall", "frechet_distance", "seg_miou"):
        out[f"diversity_vs_next_{m}"] = _pearson(div, [b[m] for _, b in pairs])
    return out


def _labeler(gen, real: Path, shots: int, folder: Path, seed: int, train_labeler):
    from pipeline.labeling.fewshot import load_labeler

    if (folder / "labeler.json").is_file():
        return load_labeler(folder, gen)
    return train_labeler(gen, real, shots, folder, seed)


def _cell(stat: dict, several: bool) -> str:
    if not several:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ({stat['min']:.3f}–{stat['max']:.3f})"


def format_table(result: dict) -> str:
    rows = result["rows"]
    summary = result.get("summary") or summarize(rows)
    seeds = list(dict.fromkeys(r.get("seed", 0) for r in rows))
    several = len(seeds) > 1
    classes = list(rows[0]["class_share"]) if rows else []
    head = ["policy", "gen", "trained on (real + syn)", "precision", "recall", "Fréchet", "seg mIoU",
            "diversity (Vendi)"]  # fmt: skip
    head += [f"shows {c}" for c in classes] + [f"area {c}" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        rs = [r for r in rows if r["policy"] == e["policy"] and r["generation"] == e["generation"]]
        r = rs[0]
        trained = "real (shipped)" if r["generation"] == 1 else f"{r['train_real']} + {r['train_synthetic']}"
        cells = [e["policy"], str(e["generation"]), trained]
        cells += [_cell(e[m], several) for m in METRICS]
        cells += [f"{np.mean([x['class_share'][c] for x in rs]):.2f}" for c in classes]
        cells += [f"{np.mean([x['mask_area'][c] for x in rs]):.3f}" for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        real = rows[0]["class_share_real"]
        lines.append("")
        if several:
            lines.append(
                f"Mean over seeds {', '.join(map(str, seeds))}, range (min–max) in brackets; shares and "
                "areas are means."
            )
        lines.append(
            "Held-out real images under the same network: "
            + ", ".join(f"shows {c} {v:.2f}" for c, v in real.items())
        )
        corr = result.get("correlation") or correlations(rows)

        def show(v):
            return "n/a" if v is None else f"{v:+.3f}"

        lines.append(
            f"Diversity of generation g's training set vs quality of generation g + 1 (Pearson r over "
            f"{corr['pairs']} arm, seed and generation pairs): precision "
            f"{show(corr.get('diversity_vs_next_precision'))}, recall {show(corr['diversity_vs_next_recall'])}, "
            f"Fréchet {show(corr.get('diversity_vs_next_frechet_distance'))}, seg mIoU "
            f"{show(corr['diversity_vs_next_seg_miou'])}"
        )
    return "\n".join(lines)


COLOURS = {
    "replace": (220, 80, 40),
    "accumulate": (40, 110, 200),
    "fresh": (60, 160, 80),
    "control": (120, 120, 120),
}


def plot_study(result: dict, out: Path) -> Path:
    """collapse.png: precision, recall, Fréchet distance, segmenter mIoU and training-set diversity per
    generation, one line per policy (the mean over seeds, with a bar from the lowest seed to the highest)
    (Pillow)."""
    import io

    from PIL import Image, ImageDraw

    from manifests.format.layout import write_bytes_atomic

    summary = result.get("summary") or summarize(result["rows"])
    rows = [{"policy": e["policy"], "generation": e["generation"], **{m: e[m]["mean"] for m in METRICS},
             "range": {m: (e[m]["min"], e[m]["max"]) for m in METRICS}} for e in summary]  # fmt: skip
    metrics = METRICS
    gens = sorted({r["generation"] for r in rows})
    pw, ph, pad = 220, 160, 30
    img = Image.new("RGB", (pad + len(metrics) * (pw + pad), ph + 3 * pad + 20), "white")
    d = ImageDraw.Draw(img)
    for m_i, metric in enumerate(metrics):
        x0, y0 = pad + m_i * (pw + pad), pad
        # each panel spans its own figures (spread included), with a margin: the differences are the point
        lo = min(r["range"][metric][0] for r in rows)
        hi = max(r["range"][metric][1] for r in rows)
        margin = max(hi - lo, 1e-3 * max(1.0, abs(hi))) * 0.1
        bottom, top = lo - margin, hi + margin
        d.rectangle([x0, y0, x0 + pw, y0 + ph], outline=(180, 180, 180))
        d.text((x0, y0 - 14), metric.replace("_", " ").replace("seg miou", "segmenter mIoU"), fill=(0, 0, 0))
        d.text((x0 + 3, y0 + 2), f"{hi:.3g}", fill=(120, 120, 120))
        d.text((x0 + 3, y0 + ph - 12), f"{lo:.3g}", fill=(120, 120, 120))

        def xy(g, v, x0=x0, y0=y0, bottom=bottom, top=top):
            x = x0 + 20 + ((pw - 30) * (g - gens[0]) / max(1, gens[-1] - gens[0]))
            return x, y0 + ph - ph * (v - bottom) / (top - bottom)

        for g in gens:
            d.text((xy(g, 0)[0] - 3, y0 + ph + 4), str(g), fill=(0, 0, 0))
        for policy in dict.fromkeys(r["policy"] for r in rows):
            pts = [xy(r["generation"], r[metric]) for r in rows if r["policy"] == policy]
            colour = COLOURS.get(policy, (0, 0, 0))
            d.line(pts, fill=colour, width=2)
            for r in rows:  # the spread over seeds: a bar from the lowest to the highest
                lo, hi = r["range"][metric]
                if r["policy"] == policy and hi > lo:
                    (x, y_lo), (_, y_hi) = xy(r["generation"], lo), xy(r["generation"], hi)
                    d.line([(x, y_lo), (x, y_hi)], fill=colour, width=1)
                    d.line([(x - 4, y_lo), (x + 4, y_lo)], fill=colour, width=1)
                    d.line([(x - 4, y_hi), (x + 4, y_hi)], fill=colour, width=1)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    x = pad
    for policy in dict.fromkeys(r["policy"] for r in rows):
        d.rectangle([x, ph + 2 * pad + 6, x + 10, ph + 2 * pad + 16], fill=COLOURS.get(policy, (0, 0, 0)))
        d.text((x + 14, ph + 2 * pad + 5), policy, fill=(0, 0, 0))
        x += 110
    d.text((x + 20, ph + 2 * pad + 5), "x: model generation; a bar: lowest to highest seed", fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(Path(out), buf.getvalue())
    return Path(out)
