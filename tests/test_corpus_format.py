"""The corpus on disk matches DESIGN.md, and reads back with webdataset and with plain tarfile."""

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from manifests.format.layout import sha256_file
from manifests.format.record import REQUIRED_FIELDS, load_corpus
from manifests.format.schema import KEY_RE, MANIFEST_SCHEMA
from manifests.storage.writer import TAR_MODE, TAR_MTIME, TAR_USER
from pipeline.realdata import toyworld
from pipeline.realdata.ingest import write_toyworld


def test_corpus_json_has_every_field(tw_corpus):
    rec = json.loads((tw_corpus / "corpus.json").read_text())
    assert set(REQUIRED_FIELDS) <= set(rec)
    assert rec["counts"] == {"real": 40, "synthetic": 0, "rejected": 0}
    assert rec["synthetic_fraction"] == 0.0
    assert rec["per_generation"] == {"0": 40}
    assert rec["classes"] == list(toyworld.CLASSES)
    assert [s["samples"] for s in rec["shards"]] == [16, 16, 8]
    for s in rec["shards"]:
        path = tw_corpus / s["name"]
        assert sha256_file(path) == s["sha256"] and path.stat().st_size == s["bytes"]
    assert rec["status"] == "complete" and rec["parents"] == [] and rec["generator"] is None
    assert rec["config"]["seed"] == 7 and len(rec["config_hash"]) == 16


def _shards(corpus):
    return [str(corpus / s["name"]) for s in load_corpus(corpus)["shards"]]


def test_read_back_with_webdataset(tw_corpus):
    ds = wds.WebDataset(_shards(tw_corpus), shardshuffle=False, empty_check=False)
    samples = list(ds)
    assert len(samples) == 40
    for s in samples:
        assert KEY_RE.match(s["__key__"])
        image = np.asarray(Image.open(io.BytesIO(s["png"])))
        mask = np.asarray(Image.open(io.BytesIO(s["seg.png"])))
        meta = json.loads(s["json"])
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        assert meta["origin"] == "real" and meta["generation"] == 0
        present = sorted(toyworld.CLASSES[v] for v in np.unique(mask))
        assert sorted(meta["classes_present"]) == present
        # The stored pixels are exactly the toy world's for that sample's seed.
        scene = toyworld.render_scene(meta["seed"])
        assert np.array_equal(scene.image, image) and np.array_equal(scene.mask, mask)


def test_read_back_with_tarfile_fixed_member_metadata(tw_corpus):
    keys = set()
    for path in _shards(tw_corpus):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
        assert len(members) % 3 == 0
        for m in members:
            assert m.mtime == TAR_MTIME and m.uname == TAR_USER and m.gname == TAR_USER and m.mode == TAR_MODE
            key, _, ext = m.name.partition(".")
            assert ext in ("png", "seg.png", "json")
            keys.add(key)
    assert len(keys) == 40


def test_manifest_rows_match_schema_and_shards(tw_corpus):
    rows = []
    for s in load_corpus(tw_corpus)["shards"]:
        table = pq.read_table(tw_corpus / "manifest" / (s["name"].split("/")[-1].replace(".tar", ".parquet")))
        assert table.schema.remove_metadata().equals(MANIFEST_SCHEMA)
        assert json.loads(table.schema.metadata[b"dpp"])["config"]["kind"] == "toyworld"
        rows += table.to_pylist()
    assert len(rows) == 40 and len({r["key"] for r in rows}) == 40
    for r in rows:
        assert r["kept"] and r["origin"] == "real" and r["generation"] == 0 and r["source"] == "toyworld"
        assert abs(sum(r["class_pixel_fraction"]) - 1.0) < 1e-9
        assert r["width"] == r["height"] == 32 and len(r["image_sha256"]) == 64


def test_same_seed_gives_identical_shards_and_other_seed_differs(tmp_path):
    a = write_toyworld(tmp_path / "a", n=30, seed=5, shard_size=10, quiet=True).record
    b = write_toyworld(tmp_path / "b", n=30, seed=5, shard_size=10, quiet=True).record
    c = write_toyworld(tmp_path / "c", n=30, seed=6, shard_size=10, quiet=True).record
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert (tmp_path / "a/corpus.json").read_bytes() == (tmp_path / "b/corpus.json").read_bytes()
    for name in ("manifest/shard-000000.parquet", "shards/shard-000002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["shards"][0]["sha256"] != c["shards"][0]["sha256"]


def test_size_64(tmp_path):
    rec = write_toyworld(tmp_path / "x", n=3, seed=1, size=64, quiet=True).record
    with tarfile.open(tmp_path / "x" / rec["shards"][0]["name"]) as tar:
        png = tar.extractfile(tar.getmembers()[1]).read()
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_no_temp_or_staging_files_left(tmp_path, tw_corpus):
    write_toyworld(tmp_path / "x", n=5, seed=1, quiet=True)
    names = [p.name for p in tmp_path.rglob("*")]
    assert not [n for n in names if n.endswith(".tmp") or "staging" in n]


def test_threaded_png_encoding_writes_the_same_bytes_in_the_same_order(tmp_path):
    from manifests.storage.writer import ShardWriter
    from pipeline.seeds import sample_seed

    scenes = [toyworld.render_scene(sample_seed(0, 0, i)) for i in range(40)]
    for threads in (0, 3):
        w = ShardWriter(tmp_path / f"t{threads}", 0, list(toyworld.CLASSES), "h", {}, True, threads)
        for i, s in enumerate(scenes):  # kept and rejected interleaved: row order must follow the calls
            meta = {"origin": "real", "generation": 0}
            if i % 3:
                w.add(f"k{i:03d}", s.image, s.mask, meta, source="t")
            else:
                w.reject(f"k{i:03d}", "surplus", s.image, s.mask, meta, source="t")
        w.close()
    files = ("shards/shard-000000.tar", "rejected/shard-000000.tar", "manifest/shard-000000.parquet")
    for f in files:
        assert (tmp_path / "t0" / f).read_bytes() == (tmp_path / "t3" / f).read_bytes(), f
    rows = pq.read_table(tmp_path / "t3/manifest/shard-000000.parquet").to_pylist()
    assert [r["key"] for r in rows] == [f"k{i:03d}" for i in range(40)]
    assert [r["kept"] for r in rows] == [bool(i % 3) for i in range(40)]
