"""`dpp mix`: a new corpus from existing ones with an exact real/synthetic split, or by a data policy.

Policies (how the next generation's training set is built from what exists):
  mix         exactly round(F * N) synthetic and N - round(F * N) real samples, drawn with a seed
  accumulate  every kept sample of every source (real data and all earlier synthetic data stay)
  replace     only the synthetic samples of the deepest generation among the sources (earlier data
              is dropped), all of them or --n drawn with the seed
  fresh       a fixed real share F each generation: exactly n_real = round(F * N) real samples (any
              generation-0 sample of the sources) and N - n_real synthetic samples of the deepest
              generation among the sources, drawn with the seed; round() is to the nearest integer,
              ties to even, on the exact decimal F as given (F = 0.25, N = 10: 2.5 -> 2 real)
Samples are copied into new shards: image and mask bytes unchanged, KEY.json rewritten with the new
key and where the sample came from (source_corpus, source_key, also in the manifest row). Generation,
seed, generator and labeler ids and filter scores travel with each sample.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from manifests.errors import DppError, UsageError
from manifests.format.layout import MANIFEST_DIR, SHARDS_DIR
from manifests.format.record import load_corpus, read_manifest
from manifests.format.validate import escapes
from manifests.storage.reader import tar_members
from manifests.storage.staged import WriteResult, check_counts, write_shards
from manifests.storage.writer import ShardWriter, sha256_bytes

POLICIES = ("mix", "accumulate", "replace", "fresh")
ROW_FIELDS_REDONE = ("key", "shard", "index_in_shard", "kept", "reject_reason", "config_hash")


def fresh_counts(real_fraction: float, n: int) -> tuple[int, int]:
    """(real, synthetic) of a `fresh` mix of n samples: real = F * n rounded to the nearest integer, ties
    to even, computed exactly on F's decimal text (so 0.1 is one tenth, not the nearest binary float)."""
    n_real = round(Fraction(repr(float(real_fraction))) * n)
    return n_real, n - n_real


@dataclass(frozen=True)
class Candidate:
    source: int  # index of the source corpus in the command line
    row: dict  # its manifest row (kept)


def _pool(paths: list[Path]) -> tuple[list[dict], list[Candidate]]:
    records = [load_corpus(p) for p in paths]
    classes = list(records[0]["classes"])
    for p, r in zip(paths, records, strict=True):
        if list(r["classes"]) != classes:
            raise UsageError(
                f"{p} has classes {', '.join(r['classes'])}, {paths[0]} has {', '.join(classes)}; "
                "a mix needs the same classes in every source"
            )
    ids = [r["corpus_id"] for r in records]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        raise UsageError(f"corpus {dup[0]} is given twice; each source may appear once")
    pool = []
    for k, (p, r) in enumerate(zip(paths, records, strict=True)):
        for s in r["shards"]:  # load_corpus checked the names: shards/shard-NNNNNN.tar, nothing else
            stem = Path(s["name"]).stem
            manifest = f"{MANIFEST_DIR}/{stem}.parquet"
            for rel in (s["name"], manifest):
                if escapes(p, Path(p) / rel):
                    raise DppError(
                        f"{p}: {rel} is a symbolic link to {(Path(p) / rel).resolve()}, outside the corpus; "
                        "a mix reads only files inside its sources"
                    )
            rows = read_manifest(Path(p) / manifest, classes).to_pylist()
            stray = next((row for row in rows if row["shard"] != stem), None)
            if stray is not None:
                raise DppError(
                    f"{p}: {manifest} row {stray['key']} names shard {stray['shard']!r}, not {stem}"
                )
            pool += [
                Candidate(k, row) for row in sorted(rows, key=lambda r: r["index_in_shard"]) if row["kept"]
            ]
    return records, pool


def _draw(pool: list[Candidate], n: int, rng: np.random.Generator, balance: bool, classes: list[str]):
    """n candidates from pool: a seeded permutation; with `balance`, greedily the one whose classes are
    least represented so far (ties by the permutation order), among the classes that still have
    candidates left (a class that is absent or used up would otherwise stay the scarcest forever and
    turn the balance off)."""
    order = [pool[i] for i in rng.permutation(len(pool))]
    if not balance:
        return order[:n]
    objects = [c for c in classes if c != "background"] or classes
    counts = Counter({c: 0 for c in objects})
    remaining = Counter(c for cand in order for c in set(cand.row["classes_present"]) if c in counts)
    chosen, left = [], order
    for _ in range(n):
        open_ = [c for c in counts if remaining[c] > 0]
        low = min((counts[c] for c in open_), default=0)
        scarce = {c for c in open_ if counts[c] == low}
        pick = next((i for i, c in enumerate(left) if scarce & set(c.row["classes_present"])), 0)
        cand = left.pop(pick)
        chosen.append(cand)
        for c in set(cand.row["classes_present"]):
            if c in counts:
                counts[c] += 1
                remaining[c] -= 1
    return chosen


def select(
    paths: list[Path],
    policy: str,
    n: int | None,
    synthetic_fraction: float | None,
    seed: int,
    balance_classes: bool,
    real_fraction: float | None = None,
) -> tuple[list[dict], list[Candidate], dict]:
    """The sources' records, the chosen samples in output order, and the policy record."""
    if policy not in POLICIES:
        raise UsageError(f"--policy {policy!r} is not allowed; choose one of {', '.join(POLICIES)}")
    if real_fraction is not None and policy != "fresh":
        raise UsageError(f"--real-fraction is for --policy fresh, not {policy}")
    records, pool = _pool(paths)
    classes = list(records[0]["classes"])
    rng = np.random.default_rng(seed)
    real = [c for c in pool if c.row["origin"] == "real"]
    syn = [c for c in pool if c.row["origin"] == "synthetic"]

    def holdings(cands: list[Candidate]) -> str:
        per = Counter(c.source for c in cands)
        return ", ".join(f"{paths[k]}: {per.get(k, 0)}" for k in range(len(paths)))

    if policy == "mix":
        if n is None or synthetic_fraction is None:
            raise UsageError("--policy mix needs --n and --synthetic-fraction")
        n_syn = round(synthetic_fraction * n)
        n_real = n - n_syn
        if n_syn > len(syn) or n_real > len(real):
            raise UsageError(
                f"--synthetic-fraction {synthetic_fraction} of --n {n} needs {n_syn} synthetic and {n_real} "
                f"real samples; the sources hold {len(syn)} synthetic ({holdings(syn)}) and {len(real)} real "
                f"({holdings(real)})"
            )
        chosen = _draw(syn, n_syn, rng, balance_classes, classes) + _draw(
            real, n_real, rng, balance_classes, classes
        )
    else:
        if synthetic_fraction is not None:
            raise UsageError(f"--synthetic-fraction is for --policy mix, not {policy}")
        if policy == "fresh":
            chosen = _fresh(real, syn, n, real_fraction, rng, balance_classes, classes, holdings)
        elif policy == "accumulate":
            chosen = pool if n is None else None
            if n is not None:
                if n > len(pool):
                    raise UsageError(f"--n {n}: the sources hold {len(pool)} samples ({holdings(pool)})")
                chosen = _draw(pool, n, rng, balance_classes, classes)
        else:  # replace
            if not syn:
                raise UsageError(
                    f"--policy replace needs synthetic samples; the sources hold none ({holdings(pool)})"
                )
            deepest = max(c.row["generation"] for c in syn)
            newest = [c for c in syn if c.row["generation"] == deepest]
            if n is not None and n > len(newest):
                raise UsageError(
                    f"--n {n}: the sources hold {len(newest)} synthetic samples of generation {deepest} "
                    f"({holdings(newest)})"
                )
            chosen = newest if n is None else _draw(newest, n, rng, balance_classes, classes)
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]  # mixed across shards
    n_syn = sum(c.row["origin"] == "synthetic" for c in chosen)
    record = {
        "name": policy,
        "n": len(chosen),
        "synthetic": n_syn,
        "real": len(chosen) - n_syn,
        "synthetic_fraction_requested": synthetic_fraction,
        "seed": seed,
        "balance_classes": balance_classes,
        "sources": [
            {"corpus_id": r["corpus_id"], "version": int(r.get("version", 1)), "path": str(p), "taken": t}
            for p, r, t in zip(
                paths, records, [sum(c.source == k for c in chosen) for k in range(len(paths))], strict=True
            )
        ],
    }
    if policy == "fresh":
        record["real_fraction"] = real_fraction
        record["rounding"] = "real = round(real_fraction * n), to the nearest integer, ties to even"
    return records, chosen, record


def _fresh(real, syn, n, real_fraction, rng, balance_classes, classes, holdings) -> list[Candidate]:
    """A fixed real share: round(F * n) real samples and the rest from the deepest synthetic generation."""
    if n is None or real_fraction is None:
        raise UsageError("--policy fresh needs --n and --real-fraction")
    n_real, n_syn = fresh_counts(real_fraction, n)
    if n_syn and not syn:
        raise UsageError(f"--policy fresh needs synthetic samples; the sources hold none ({holdings(real)})")
    deepest = max((c.row["generation"] for c in syn), default=0)
    newest = [c for c in syn if c.row["generation"] == deepest]
    if n_real > len(real) or n_syn > len(newest):
        raise UsageError(
            f"--real-fraction {real_fraction} of --n {n} needs {n_real} real and {n_syn} synthetic samples "
            f"of generation {deepest}; the sources hold {len(real)} real ({holdings(real)}) and "
            f"{len(newest)} of generation {deepest} ({holdings(newest)})"
        )
    return _draw(real, n_real, rng, balance_classes, classes) + _draw(
        newest, n_syn, rng, balance_classes, classes
    )


def mix(
    paths: list[Path],
    out: Path,
    seed: int,
    n: int | None = None,
    synthetic_fraction: float | None = None,
    policy: str = "mix",
    balance_classes: bool = False,
    shard_size: int = 1000,
    overwrite: bool = False,
    real_fraction: float | None = None,
) -> WriteResult:
    """Write the chosen samples into a new corpus at `out` (staged, swapped in whole)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("give at least one source corpus")
    if synthetic_fraction is not None and not 0.0 <= synthetic_fraction <= 1.0:
        raise UsageError(f"--synthetic-fraction {synthetic_fraction} is not allowed; it must be in [0, 1]")
    if real_fraction is not None and not 0.0 < real_fraction < 1.0:
        raise UsageError(f"--real-fraction {real_fraction} is not allowed; it must be in (0, 1)")
    records, chosen, policy_record = select(
        paths, policy, n, synthetic_fraction, seed, balance_classes, real_fraction=real_fraction
    )
    if not chosen:
        raise UsageError("the mix would hold no samples")
    check_counts(len(chosen), shard_size)
    classes = list(records[0]["classes"])
    # the source bytes of every chosen sample, read shard by shard
    wanted: dict[tuple[int, str], set[str]] = {}
    for c in chosen:
        wanted.setdefault((c.source, c.row["shard"]), set()).add(c.row["key"])
    members: dict[tuple[int, str], dict] = {}
    for (k, shard), keys in sorted(wanted.items()):
        tar = paths[k] / SHARDS_DIR / f"{shard}.tar"
        found = tar_members(tar, keys)  # refuses member names that are not KEY.ext
        missing = sorted(keys - set(found))
        if missing:
            raise DppError(
                f"{tar}: sample {missing[0]} is in its manifest but not in the shard "
                f"({len(missing)} missing); run dpp verify {paths[k]}"
            )
        for key, m in found.items():
            members[(k, key)] = m
    config = {
        "kind": "mix",
        "policy": policy,
        "n": n,
        "synthetic_fraction": synthetic_fraction,
        "seed": seed,
        "balance_classes": balance_classes,
        "shard_size": shard_size,
        "sources": [{"corpus_id": r["corpus_id"], "version": int(r.get("version", 1))} for r in records],
    }
    if policy == "fresh":  # only here, so the config hash of every other mix stays what it was
        config["real_fraction"] = real_fraction

    def fill(index: int, writer: ShardWriter) -> None:
        for j, c in enumerate(chosen[index * shard_size : (index + 1) * shard_size]):
            src_id = records[c.source]["corpus_id"]
            key = f"mix-{index:06d}-{j:06d}"
            m = members[(c.source, c.row["key"])]
            meta = json.loads(m["json"])
            meta.update(key=key, source_corpus=src_id, source_key=c.row["key"])
            js = (json.dumps(meta, sort_keys=True) + "\n").encode()
            row = {k: v for k, v in c.row.items() if k not in ROW_FIELDS_REDONE}
            row.update(key=key, index_in_shard=j, source_corpus=src_id, source_key=c.row["key"])
            row["json_sha256"] = sha256_bytes(js)
            writer.add_encoded({"__key__": key, "png": m["png"], "seg.png": m["seg.png"], "json": js}, row)

    generations = sorted({int(g) for r in records for g, v in r["per_generation"].items() if v})
    return write_shards(
        out,
        -(-len(chosen) // shard_size),
        fill,
        classes,
        config,
        "mix",
        overwrite,
        parents=sorted({r["corpus_id"] for r in records}),
        policy=policy_record,
        source_generations=generations,
    )
