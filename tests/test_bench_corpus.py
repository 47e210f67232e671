"""Benchmarks (make bench): corpus writing against a plain-tarfile baseline measured in the same run."""

import io
import statistics
import tarfile
import time

import pytest

from pipeline import toyworld
from pipeline.seeds import sample_seed
from pipeline.shards import ShardWriter, encode_png

N = 2000
REPEATS = 3


@pytest.mark.bench
def test_bench_shard_writing_vs_plain_tarfile(tmp_path):
    scenes = [toyworld.render_scene(sample_seed(0, 0, i)) for i in range(N)]
    encoded = [(encode_png(s.image), encode_png(s.mask)) for s in scenes]

    def ours(run):
        w = ShardWriter(tmp_path / f"ours{run}", 0, list(toyworld.CLASSES), "bench", {})
        for i, s in enumerate(scenes):
            w.add(f"k{i:06d}", s.image, s.mask, {"origin": "real", "generation": 0}, source="bench")
        w.close()

    def baseline(run):  # bytes already encoded, no manifest, no hashing, no fsync: a lower bound
        with tarfile.open(tmp_path / f"plain{run}.tar", "w") as tar:
            for i, (png, seg) in enumerate(encoded):
                for ext, data in (("png", png), ("seg.png", seg), ("json", b"{}")):
                    ti = tarfile.TarInfo(f"k{i:06d}.{ext}")
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))

    times = {"ours": [], "baseline": []}
    for run in range(REPEATS):
        for name, fn in (("ours", ours), ("baseline", baseline)):
            t0 = time.perf_counter()
            fn(run)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n| what | median s ({REPEATS} runs) | samples/s |")
    print("| --- | --- | --- |")
    print(
        f"| ShardWriter: encode PNGs + tar + sha256 + Parquet + fsync, {N} samples | {med['ours']:.3f} | "
        f"{N / med['ours']:.0f} |"
    )
    print(f"| plain tarfile, pre-encoded bytes | {med['baseline']:.3f} | {N / med['baseline']:.0f} |")
    print(f"| ratio ours / baseline | {med['ours'] / med['baseline']:.1f}x | |")
    with tarfile.open(tmp_path / "ours0/shards/shard-000000.tar") as tar:
        assert len(tar.getmembers()) == 3 * N  # what was timed was a complete shard
