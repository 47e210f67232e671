"""`dpp audit`: real-versus-synthetic accounting of one or more corpora, read from their manifests.

Counts come from the manifest rows (one per candidate sample), not from corpus.json alone, so the
audit can say per class how many images and pixels are real or synthetic, per generation depth
and per source. Several corpora are also summed into one combined view.

Each generation's diversity (a figure of its images, pipeline/evaluation/diversity.py) needs the
evaluation network, so torch: the caller computes it and hands the function in (`diversity`); this
module only places the figures beside the counts and warns below `Thresholds.min_diversity`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from manifests.errors import DppError
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest, summarize
from manifests.verify import shard_problems


def _empty_class() -> dict:
    return {"images": {"real": 0, "synthetic": 0}, "pixels": {"real": 0, "synthetic": 0}}


def _tally(rows: list[dict], classes: list[str]) -> dict:
    out = {
        "total": 0,
        "real": 0,
        "synthetic": 0,
        "rejected": 0,
        "per_generation": {},
        "per_class": {c: _empty_class() for c in classes},
        "per_source": {},
    }
    for r in rows:
        if not r["kept"]:
            out["rejected"] += 1
            continue
        origin = r["origin"]
        out["total"] += 1
        out[origin] += 1
        g = str(r["generation"])
        out["per_generation"][g] = out["per_generation"].get(g, 0) + 1
        src = r["source_corpus"] or r["source"]
        out["per_source"][src] = out["per_source"].get(src, 0) + 1
        area = r["width"] * r["height"]
        for c, frac in zip(classes, r["class_pixel_fraction"], strict=True):
            if frac > 0:
                out["per_class"][c]["images"][origin] += 1
                out["per_class"][c]["pixels"][origin] += round(frac * area)
    out["synthetic_fraction"] = out["synthetic"] / out["total"] if out["total"] else 0.0
    out["per_generation"] = dict(sorted(out["per_generation"].items(), key=lambda kv: int(kv[0])))
    return out


def _merge(into: dict, part: dict) -> None:
    for f in ("total", "real", "synthetic", "rejected"):
        into[f] += part[f]
    for g, n in part["per_generation"].items():
        into["per_generation"][g] = into["per_generation"].get(g, 0) + n
    for s, n in part["per_source"].items():
        into["per_source"][s] = into["per_source"].get(s, 0) + n
    for c, v in part["per_class"].items():
        dst = into["per_class"].setdefault(c, _empty_class())
        for kind in ("images", "pixels"):
            for origin in ("real", "synthetic"):
                dst[kind][origin] += v[kind][origin]


@dataclass(frozen=True)
class Thresholds:
    """When the audit warns (None = never): collapse-study rules of thumb, each configurable."""

    max_synthetic_fraction: float | None = 0.5  # synthetic share of a corpus above this
    max_generation: int | None = 1  # samples deeper than this many model generations
    min_real: int | None = None  # fewer real samples than this
    min_diversity: float | None = None  # a generation's diversity (Vendi score) below this

    def as_json(self) -> dict:
        return asdict(self)


def lineage(record: dict) -> dict:
    """The corpus's lineage as recorded in its corpus.json: where its samples came from (parents, the
    policy's sources), which generator rendered them (and what that generator was trained on, with
    generation counts), which labeler labeled them (and its support set)."""
    gen = record.get("generator") or {}
    lab = record.get("labeler") or {}
    policy = record.get("policy") or {}
    return {
        "corpus_id": record["corpus_id"],
        "version": int(record.get("version", 1)),
        "parents": list(record.get("parents") or []),
        "policy": policy.get("name") or (record.get("config") or {}).get("kind"),
        "policy_sources": [
            {k: s.get(k) for k in ("corpus_id", "version", "taken")} for s in policy.get("sources", [])
        ],
        "generator": None
        if not gen
        else {
            "id": gen.get("id"),
            "sample_generation": gen.get("sample_generation"),
            "trained_on": [
                {k: d.get(k) for k in ("corpus_id", "version", "samples", "per_generation")}
                for d in gen.get("training_data") or []
            ],
        },
        "labeler": None if not lab else {"id": lab.get("id"), "support_corpus": lab.get("support_corpus")},
    }


def _warn(path: Path, part: dict, t: Thresholds) -> list[str]:
    out = []
    frac = part["synthetic_fraction"]
    if t.max_synthetic_fraction is not None and frac > t.max_synthetic_fraction:
        out.append(
            f"{path}: synthetic fraction {frac:.3f} is above {t.max_synthetic_fraction} "
            f"({part['synthetic']} of {part['total']} samples)"
        )
    deep = {g: n for g, n in part["per_generation"].items() if int(g) > (t.max_generation or 0)}
    if t.max_generation is not None and deep:
        depth = max(int(g) for g in deep)
        out.append(
            f"{path}: {sum(deep.values())} samples are {depth} model generation(s) deep (generation >= "
            f"{t.max_generation + 1}: trained on synthetic data); recursive training risks collapse"
        )
    if t.min_real is not None and part["real"] < t.min_real:
        out.append(f"{path}: {part['real']} real samples, below the minimum {t.min_real}")
    div = part.get("diversity")
    if t.min_diversity is not None and div is not None:
        if div["note"]:
            out.append(f"{path}: diversity {div['note']}; the minimum {t.min_diversity} was not checked")
        for g, d in div["per_generation"].items():
            if d["vendi"] < t.min_diversity:
                out.append(
                    f"{path}: generation {g} diversity {d['vendi']:.2f} is below {t.min_diversity} (Vendi "
                    f"score of {d['images']} images); a narrowing training set foreshadows collapse"
                )
    return out


def audit(
    paths: list[Path], thresholds: Thresholds | None = None, diversity: Callable[[Path], dict] | None = None
) -> dict:
    """The audit of the given corpora as one JSON-ready dict: combined totals plus one entry per corpus.

    `diversity(path)`, when given, returns a corpus's figure per generation (pipeline/evaluation/
    diversity.py:corpus_diversity); it is called only on corpora that are whole."""
    thresholds = thresholds or Thresholds()
    combined = {
        "total": 0,
        "real": 0,
        "synthetic": 0,
        "rejected": 0,
        "per_generation": {},
        "per_class": {},
        "per_source": {},
    }
    corpora = []
    warnings = []
    seen: dict[str, Path] = {}
    for path in paths:
        path = Path(path)
        record = load_corpus(path)
        if record["corpus_id"] in seen:
            warnings.append(
                f"{path}: corpus {record['corpus_id']} is also at {seen[record['corpus_id']]}; "
                "its samples are counted twice in the combined view"
            )
        seen.setdefault(record["corpus_id"], path)
        classes = list(record["classes"])
        damaged = [p for entry in record["shards"] for p in shard_problems(path, entry, classes=classes)]
        if damaged:  # counting a damaged corpus would mislead: name what is wrong instead
            raise DppError(
                f"{path} is damaged ({len(damaged)} problem(s)); no audit of a damaged corpus: "
                f"`dpp verify {path}` checks every sample, `dpp repair {path}` sets damaged shards aside",
                details=damaged,
            )
        rows: list[dict] = []
        for entry in record["shards"]:
            mpath = manifest_path(path, entry["name"])
            rows.extend(read_manifest(mpath, classes).to_pylist())
        part = _tally(rows, classes)
        expected = summarize(classes, rows)["counts"]
        if expected != record["counts"]:
            warnings.append(
                f"{path}: corpus.json counts {record['counts']} disagree with its manifests {expected}"
            )
        corpora.append(
            {
                "path": str(path),
                "corpus_id": record["corpus_id"],
                "status": record["status"],
                "parents": record["parents"],
                "classes": classes,
                "version": int(record.get("version", 1)),
                "policy": record.get("policy"),
                "versions": _versions(record),
                "lineage": lineage(record),
                **part,
                "per_generation_fraction": {
                    g: n / part["total"] for g, n in part["per_generation"].items() if part["total"]
                },
                "diversity": None if diversity is None else diversity(path),
            }
        )
        warnings += _warn(path, corpora[-1], thresholds)
        _merge(combined, part)
    combined["synthetic_fraction"] = combined["synthetic"] / combined["total"] if combined["total"] else 0.0
    combined["per_generation"] = dict(sorted(combined["per_generation"].items(), key=lambda kv: int(kv[0])))
    return {**combined, "corpora": corpora, "warnings": warnings, "thresholds": thresholds.as_json()}


def _versions(record: dict) -> list[dict]:
    """How the corpus grew, one entry per corpus.json version (jobs that appended to it)."""
    out = []
    for h in record.get("history") or []:
        out.append(
            {
                "version": int(h["version"]),
                "samples_after": None,
                "added": int(h.get("kept", 0)),
                "shards": list(h.get("shards", [])),
                "config_hash": h.get("config_hash"),
                "synthetic_fraction": float(h["synthetic_fraction"]),
            }
        )
    total = 0
    for v in out:
        total += v["added"]
        v["samples_after"] = total
    return out


def _lineage_lines(lin: dict) -> list[str]:
    """A text tree: corpus <- how it was made <- what that came from."""
    lines = [f"{lin['corpus_id']} (version {lin['version']}, {lin['policy'] or 'unknown'})"]
    for s in lin["policy_sources"]:
        lines.append(f"  <- {s['taken']} samples of {s['corpus_id']} (version {s['version']})")
    gen = lin["generator"]
    if gen:
        lines.append(f"  <- rendered by {gen['id']} (its samples are generation {gen['sample_generation']})")
        for d in gen["trained_on"]:
            per = ", ".join(f"gen {g}: {n}" for g, n in (d.get("per_generation") or {}).items())
            lines.append(f"       <- trained on {d['corpus_id']} ({per})")
    if lin["labeler"]:
        lab = lin["labeler"]
        source = lab["support_corpus"]
        how = f"support set from {source}" if source else "zero-shot: no annotated images"
        lines.append(f"  <- labeled by {lab['id']} ({how})")
    known = {s["corpus_id"] for s in lin["policy_sources"]}
    known |= {d["corpus_id"] for d in (gen or {}).get("trained_on", [])}
    if lin["labeler"]:
        known.add(lin["labeler"]["support_corpus"])
    for p in lin["parents"]:
        if p not in known:
            lines.append(f"  <- {p}")
    return lines


def _div(div: dict | None, g: str) -> str:
    d = (div or {}).get("per_generation", {}).get(g)
    return f"{d['vendi']:.2f}" if d else "-"


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%" if total else "    -"


def format_audit(result: dict) -> str:
    """The human view: one block per corpus when several, then the combined tables."""
    lines = []
    many = len(result["corpora"]) > 1
    lines.append(f"{'corpus':<40} {'total':>8} {'real':>8} {'synth':>8} {'rejected':>8} {'synth %':>8}")
    for c in result["corpora"]:
        lines.append(
            f"{c['corpus_id'][:40]:<40} {c['total']:>8} {c['real']:>8} {c['synthetic']:>8} "
            f"{c['rejected']:>8} {_pct(c['synthetic'], c['total']):>8}"
        )
    if many:
        r = result
        lines.append(
            f"{'combined':<40} {r['total']:>8} {r['real']:>8} {r['synthetic']:>8} {r['rejected']:>8} "
            f"{_pct(r['synthetic'], r['total']):>8}"
        )
    for c in result["corpora"]:
        if len(c["versions"]) > 1:
            lines.append("")
            lines.append(f"versions of {c['corpus_id']} (versions/corpus.vN.json keeps each earlier one)")
            lines.append(f"{'version':<8} {'added':>8} {'samples':>8} {'synth %':>8} {'fraction':>9}  job")
            for v in c["versions"]:
                lines.append(
                    f"{v['version']:<8} {v['added']:>8} {v['samples_after']:>8} "
                    f"{100 * v['synthetic_fraction']:>7.1f}% {v['synthetic_fraction']:>9.3f}  "
                    f"{v['config_hash'] or 'repair: damaged shards set aside'}"
                )
    total = result["total"]
    lines.append("")
    divs = [c["diversity"] for c in result["corpora"]]
    one = divs[0] if len(divs) == 1 else None  # one corpus: its diversity beside its generations
    lines.append(f"{'generation':<12} {'samples':>8} {'share':>7}" + (f" {'diversity':>9}" if one else ""))
    for g, n in result["per_generation"].items():
        cell = f" {_div(one, g):>9}" if one else ""
        lines.append(f"{g:<12} {n:>8} {_pct(n, total):>7}{cell}")
    if len(divs) > 1 and any(divs):
        lines.append("")
        lines.append(f"{'corpus':<40} {'generation':>10} {'samples':>8} {'share':>7} {'diversity':>9}")
        for c in result["corpora"]:
            for g, n in c["per_generation"].items():
                lines.append(
                    f"{c['corpus_id'][:40]:<40} {g:>10} {n:>8} {_pct(n, c['total']):>7} "
                    f"{_div(c['diversity'], g):>9}"
                )
    shown = next((d for d in divs if d), None)
    if shown:
        lines.append(
            f"diversity: Vendi score in the {shown['space']} embedding of each generation's first "
            f"{shown['max_images']} images by key (1 = all alike)"
        )
        for c in result["corpora"]:
            if c["diversity"] and c["diversity"]["note"]:
                lines.append(f"diversity of {c['corpus_id']}: {c['diversity']['note']}")
    lines.append("")
    lines.append(
        f"{'class':<16} {'img real':>9} {'img synth':>9} {'px real':>11} {'px synth':>11} {'img share':>9}"
    )
    for cls, v in result["per_class"].items():
        n_img = v["images"]["real"] + v["images"]["synthetic"]
        lines.append(
            f"{cls[:16]:<16} {v['images']['real']:>9} {v['images']['synthetic']:>9} "
            f"{v['pixels']['real']:>11} {v['pixels']['synthetic']:>11} {_pct(n_img, total):>9}"
        )
    lines.append("")
    lines.append(f"{'source':<40} {'samples':>8}")
    for s, n in sorted(result["per_source"].items()):
        lines.append(f"{s[:40]:<40} {n:>8}")
    lines.append("")
    lines.append("lineage")
    for c in result["corpora"]:
        lines += _lineage_lines(c["lineage"])
    for w in result["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
