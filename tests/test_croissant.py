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
