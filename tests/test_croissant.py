"""dpp export croissant: a Croissant 1.1 document that mlcroissant validates and can read records from."""

import json
import os
import subprocess
import sys

from flows.cli import main
from manifests.format.record import load_corpus

from .test_mix import constructed


def test_croissant_export_validates_and_reads(tmp_path, capsys):
    real = constructed(tmp_path / "real", 6, "real", 0, "real")
    syn = constructed(tmp_path / "syn", 4, "synthetic", 1, "syn", cls=2)
    argv = ["mix", str(real), str(syn), "--synthetic-fraction", "0.5", "--n", "6", "--seed", "0"]
    assert main([*argv, "--out", str(tmp_path / "m"), "--quiet"]) == 0
    assert main(["export", "croissant", str(tmp_path / "m")]) == 0
    path = tmp_path / "m/croissant.json"
    doc = json.loads(path.read_text())
    rec = load_corpus(tmp_path / "m")
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    files = {d["contentUrl"]: d["sha256"] for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    assert {s["name"]: s["sha256"] for s in rec["shards"]}.items() <= files.items()
    assert [p["@id"] for p in doc["prov:wasDerivedFrom"]] == [f"corpus:{p}" for p in rec["parents"]]
    assert rec["config_hash"] in doc["prov:wasGeneratedBy"]["name"]
    assert (
        "3 synthetic samples" in doc["rai:dataCollection"] and "mix policy 'mix'" in doc["rai:dataCollection"]
    )
    # mlcroissant runs in its own process: importing it installs absl logging on the test process's
    # streams; its cache is private, as it keys extracted archives by URL (shards/shard-000000.tar)
    check = f"""
import itertools, json, sys
import mlcroissant as mlc
ds = mlc.Dataset(jsonld={str(path)!r})  # raises on a document that does not validate
labels = [r["labels/origin"].decode() for r in ds.records("labels")]
mask = next(iter(ds.records("masks")))["masks/mask"]
print(json.dumps({{"origins": sorted(labels), "mask_size": list(mask.size)}}))
"""
    env = {**os.environ, "CROISSANT_CACHE": str(tmp_path / "croissant-cache")}
    res = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"origins": ["real"] * 3 + ["synthetic"] * 3, "mask_size": [8, 8]}
    # an existing file is kept unless --overwrite
    capsys.readouterr()
    assert main(["export", "croissant", str(tmp_path / "m"), "--out", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err


def _validate(path) -> None:
    """mlcroissant reads the document (in its own process, as above) or the test fails."""
    check = f"import mlcroissant as mlc; mlc.Dataset(jsonld={str(path)!r}); print('ok')"
    env = {**os.environ, "CROISSANT_CACHE": str(path.parent / "croissant-cache")}
    res = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def _generated(out, n: int, generation: int, generator: str, labeler: str):
    """A constructed synthetic corpus whose rows name their generator and labeler."""
    import numpy as np

    from manifests.storage.staged import CorpusSample, write_corpus

    def samples():
        for i in range(n):
            image, mask = np.full((8, 8, 3), 40 + i, np.uint8), np.zeros((8, 8), np.uint8)
            meta = {"origin": "synthetic", "generation": generation, "source": "generate"}
            row = {"source": "generate", "seed": i, "generator_id": generator, "labeler_id": labeler}
            yield CorpusSample(f"g{generation}-{i:04d}", image, mask, meta, row)

    classes = ["background", "disk", "square", "triangle"]
    write_corpus(out, samples, n, classes, {"kind": "constructed", "g": generation}, "syn", shard_size=16,
                 quiet=True)  # fmt: skip
    return out


def test_rai_synthetic_data_fields(tmp_path, capsys):
    real = constructed(tmp_path / "real", 6, "real", 0, "real")
    assert main(["export", "croissant", str(real), "--quiet"]) == 0
    doc = json.loads((real / "croissant.json").read_text())
    assert doc["rai:hasSyntheticData"] is False
    assert (
        doc["rai:syntheticDataExplanation"]
        == "No sample is synthetic: all 6 samples are real (generation 0)."
    )
    _validate(real / "croissant.json")
    g1 = _generated(tmp_path / "g1", 4, 1, "toyworld@aaaa", "pixelhead@bbbb")
    g2 = _generated(tmp_path / "g2", 6, 2, "toyworld@cccc", "pixelhead@dddd")
    argv = ["mix", str(real), str(g1), str(g2), "--policy", "accumulate", "--seed", "0"]
    assert main([*argv, "--out", str(tmp_path / "m"), "--quiet"]) == 0
    out = tmp_path / "m.croissant.json"
    assert main(["export", "croissant", str(tmp_path / "m"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rai:hasSyntheticData"] is True
    text = doc["rai:syntheticDataExplanation"]
    assert text.startswith("10 of 16 samples (62.5%, synthetic share 0.6250) are synthetic")
    assert "generation 1: 4, generation 2: 6" in text
    assert "Generators (samples): toyworld@aaaa (4), toyworld@cccc (6)." in text
    assert "Labelers (samples): pixelhead@bbbb (4), pixelhead@dddd (6)." in text
    assert "The other 6 samples are real (generation 0)." in text and "policy 'accumulate'" in text
    _validate(out)
