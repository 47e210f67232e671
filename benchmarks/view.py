"""`dpp view` on a 100,000-sample corpus: how long until the first grid shows, and how long a far page takes.

Builds (once, cached in --work) a corpus of toy-world scenes written with the project's own ShardWriter:
real samples (generation 0) and synthetic ones (generations 1 and 2) with scores, seeds and rejected
candidates whose images are kept, 1,000 candidates a shard. Then, --repeats times, each time from a
fresh start (the corpus opened again, no shard indexed; the OS file cache is warm):

- open: `open_corpora` (corpus.json, every manifest read and checked column-wise, the key index), the
  part of `dpp view`'s start that depends on the corpus;
- first grid: over HTTP from the app served in a thread, what the page asks for first: the corpora, the
  first page of 60 samples, and the 60 images and 60 masks of that page (the first shard indexed);
- far page: page 1,000 of the selection sorted by uncertainty (descending), with its images: the 60
  samples lie in up to 60 shards, each indexed on first use.

Prints the medians and writes the section between <!-- view:begin --> and <!-- view:end --> of
docs/benchmarks.md.

    python benchmarks/view.py [--n 100000] [--work runs/bench-view] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_section  # noqa: E402
from manifests.format.layout import CORPUS_FILE, config_hash  # noqa: E402
from manifests.format.record import new_record, summarize, write_corpus_json  # noqa: E402
from manifests.storage.writer import ShardWriter  # noqa: E402

DOC = ROOT / "docs/benchmarks.md"
CLASSES = ["background", "disk", "square", "triangle"]
REASONS = ("uncertainty_rank", "label_uncertainty", "fragments")


def write_view_corpus(out: Path, n: int, shard_size: int = 1000, seed: int = 0, scenes: int = 512) -> Path:
    """A corpus of `n` candidates for `dpp view`: every third real (generation 0, a toy-world scene of its
    seed), the rest synthetic of generation 1 or 2 with scores; every fifth synthetic candidate rejected
    (its image kept in rejected/). Images repeat after `scenes` seeds, to write a large corpus fast."""
    from pipeline.realdata.toyworld import render_scene

    out = Path(out)
    config = {"kind": "view-example", "n": n, "seed": seed, "shard_size": shard_size}
    chash = config_hash(config)
    rng = np.random.default_rng(seed)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    shards, rows = [], []
    for s in range(-(-n // shard_size)):
        with ShardWriter(out, s, CLASSES, chash, {"config": config}, keep_rejected=True) as w:
            for j in range(min(shard_size, n - s * shard_size)):
                i = s * shard_size + j
                sample_seed = seed * 1_000_003 + i
                if i % scenes not in cache:
                    scene = render_scene(seed * 100_003 + i % scenes)
                    cache[i % scenes] = (scene.image, scene.mask)
                image, mask = cache[i % scenes]
                gen = i % 3
                if gen == 0:
                    key = f"real-{s:06d}-{j:06d}"
                    meta = {"origin": "real", "generation": 0, "seed": sample_seed}
                    w.add(key, image, mask, meta, index_in_shard=j, source="toyworld", seed=sample_seed)
                    continue
                key = f"syn-{s:06d}-{j:06d}"
                scores = {
                    "label_uncertainty": round(float(rng.random()) * 0.5, 4),
                    "classifier_confidence": round(float(rng.random()), 4),
                    "realism_distance": round(float(rng.random()) * 20, 3),
                    "min_fragment_pixels": int(rng.integers(4, 200)),
                }
                meta = {"origin": "synthetic", "generation": gen, "seed": sample_seed, "scores": scores}
                row = dict(
                    index_in_shard=j, source="generate", seed=sample_seed, generator_id="toyworld-example",
                    labeler_id="fewshot-example", target_classes=[CLASSES[1 + i % 3]], **scores,
                )  # fmt: skip
                if i % 5 == 1:
                    w.reject(key, REASONS[(i // 5) % len(REASONS)], image, mask, meta, **row)
                else:
                    w.add(key, image, mask, meta, **row)
            info = w.close()
            rows += w.rows
        shards.append(info.as_json())
    fields = {
        "generator": {"id": "toyworld-example", "sample_generation": 1, "training_data": []},
        "labeler": {"id": "fewshot-example", "support_corpus": None},
    }
    corpus_id = f"view-example-{chash}"
    record = new_record(corpus_id, CLASSES, summarize(CLASSES, rows), shards, config, chash, fields)
    write_corpus_json(out, record)
    return out


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def _grid(base: str, query: str) -> None:
    import json

    page = json.loads(_get(f"{base}api/corpora/0/samples?{query}"))
    for it in page["items"]:
        if it["stored"]:
            _get(f"{base}api/corpora/0/samples/{it['key']}/image.png")
            _get(f"{base}api/corpora/0/samples/{it['key']}/mask.png")


def measure(corpus: Path) -> dict:
    from manifests.view.app import running
    from manifests.view.index import open_corpora

    t0 = time.perf_counter()
    corpora = open_corpora([corpus])
    t1 = time.perf_counter()
    with running(corpora) as base:
        t2 = time.perf_counter()
        _get(f"{base}api/corpora")
        _grid(base, "offset=0&limit=60")
        t3 = time.perf_counter()
        _grid(base, "offset=60000&limit=60&sort=label_uncertainty&order=desc")
        t4 = time.perf_counter()
        for c in corpora:  # what `dpp view` does in the background once the server is up
            c.warm()
        t5 = time.perf_counter()
        _grid(base, "offset=30000&limit=60&sort=realism_distance&order=asc")
        t6 = time.perf_counter()
    return {
        "open": t1 - t0, "server": t2 - t1, "first_grid": t3 - t2, "far_page": t4 - t3, "warm": t5 - t4,
        "far_page_warm": t6 - t5,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="candidates in the corpus (default 100,000)")
    p.add_argument("--work", type=Path, default=ROOT / "runs/bench-view", help="where the corpus is cached")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    corpus = args.work / f"corpus-{args.n}"
    t = time.perf_counter()
    if not (corpus / CORPUS_FILE).exists():
        print(f"building {corpus} ({args.n} candidates) ...", flush=True)
        write_view_corpus(corpus, args.n)
        print(f"built in {time.perf_counter() - t:.0f} s", flush=True)
    runs = []
    for i in range(args.repeats):
        runs.append(measure(corpus))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.3f} s" for k, v in runs[-1].items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    cmd = "python benchmarks/view.py" + (f" --n {args.n}" if args.n != 100_000 else "")
    cmd += f" --repeats {args.repeats}" if args.repeats != 5 else ""
    text = f"""<!-- view:begin -->
## `dpp view`: time to the first grid (`benchmarks/view.py`)

Produced by `{cmd}` (`make bench`) on {platform.machine()}, {os.cpu_count()} CPU cores, Python \
{platform.python_version()}. A corpus of {args.n:,} candidates (toy-world scenes, 32×32, 1,000 a shard; \
real, generation 1 and 2, a fifth of the synthetic ones rejected with their images kept). Medians of \
{args.repeats} fresh starts (corpus opened again, no shard indexed; the OS file cache warm).

| step | median s |
|---|---:|
| open: corpus.json, every manifest read and checked, the key index | {med["open"]:.3f} |
| server start (uvicorn in a thread) | {med["server"]:.3f} |
| first grid over HTTP: corpora, page 1 (60 samples), their 60 images and 60 masks | {med["first_grid"]:.3f} |
| **time to first grid** (open + first grid, server start excluded) | **{med["open"] + med["first_grid"]:.3f}** |
| a far page: 60 samples at offset 60,000 sorted by uncertainty, with images (up to 60 shards indexed) | \
{med["far_page"]:.3f} |
| index every shard (`dpp view` does this in a background thread once the server is up) | {med["warm"]:.3f} |
| another far page after that (offset 30,000 sorted by realism distance, with images) | \
{med["far_page_warm"]:.3f} |
<!-- view:end -->
"""
    print(text)
    if not args.no_write:
        write_section(DOC, text, "<!-- view:begin -->", "<!-- view:end -->")
        print(f"wrote the view section of {DOC}")


if __name__ == "__main__":
    main()
