"""`dpp reproduce`: a kept, a rejected (--keep-rejected) and an appended sample come out byte for byte;
changed bytes are named (exit 1); a model that cannot be found is refused in one line (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest, write_manifest
from manifests.storage.reader import decode_png, tar_members
from manifests.storage.writer import ShardWriter, encode_png
from pipeline.filtering.rules import FilterRules
from pipeline.generate import shard as shardmod

from .conftest import build_tiny_model, tree_bytes

# 4 kept of candidates in blocks of 4 with half of each block dropped (so there are rejects), rendered
# in batches of 3 (so batches straddle blocks); guided by a classifier, scored against a real corpus
GEN = ["--n", "4", "--seed", "5", "--shard-size", "4", "--steps", "2", "--batch-size", "3"]
GEN += [
    "--filter-block",
    "4",
    "--min-target-pixels",
    "0",
    "--classes",
    "disk,square",
    "--guidance-scale",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny32_model_dir, labeler_dir, tw_corpus) -> dict:
    """A generated corpus (version 1: shard 0 with rejects kept; version 2, appended: shard 1, no rank
    rule), the classifier and model folder it used, and the batches each shard was rendered in."""
    base = tmp_path_factory.mktemp("repro")
    clf = base / "clf"
    argv = ["train-classifier", "--generator", str(tiny32_model_dir), "--data", str(tw_corpus)]
    assert main([*argv, "--steps", "3", "--out", str(clf), "--quiet"]) == 0
    model = shutil.copytree(tiny32_model_dir, base / "m" / "model")  # same name, so the same id
    syn = base / "syn"
    job = ["generate", "--generator", str(model), "--labeler", str(labeler_dir), "--classifier", str(clf)]
    job += [*GEN, "--real", str(tw_corpus), "--out", str(syn)]
    rendered: dict[int, list[list[int]]] = {}
    render_batch = shardmod.render_batch

    def recording(job_, plan, idx):
        rendered.setdefault(plan.index, []).append(list(idx))
        return render_batch(job_, plan, idx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shardmod, "render_batch", recording)
        assert main([*job, "--drop-fraction", "0.5", "--keep-rejected"]) == 0
        assert main([*job, "--drop-fraction", "0", "--append", "--n", "3"]) == 0
    return {"syn": syn, "clf": clf, "model": model, "tw": tw_corpus, "rendered": rendered}


def _rows(corpus: Path, shard: int) -> list[dict]:
    rows = read_manifest(manifest_path(corpus, f"shard-{shard:06d}")).to_pylist()
    return sorted(rows, key=lambda r: r["index_in_shard"])


def _reproduce(made, corpus, key, *extra, capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = main(["reproduce", str(corpus), key, "--classifier", str(made["clf"]), *extra])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def _part(lines: list[str], name: str) -> str:
    return next(line.split(None, len(name.split()))[-1] for line in lines if line.strip().startswith(name))


def test_the_batch_schedule_replays_from_the_manifest(made):
    """shard_batches, from a shard's kept flags alone, gives the batches render_shard rendered."""
    rec = load_corpus(made["syn"])
    configs = {h["config_hash"]: h["config"] for h in rec["history"] if "config" in h}
    configs[rec["config_hash"]] = rec["config"]  # version 1's
    assert sorted(made["rendered"]) == [0, 1]
    for shard, batches in made["rendered"].items():
        rows = _rows(made["syn"], shard)
        config = configs[rows[0]["config_hash"]]
        kept = [r["kept"] for r in rows]
        replay = shardmod.shard_batches(FilterRules(**config["rules"]), config["batch_size"], sum(kept), kept)
        assert replay == batches
    assert any(len(b) == 3 for b in made["rendered"][0]) and not all(r["kept"] for r in _rows(made["syn"], 0))


def test_kept_rejected_and_appended_samples_reproduce_byte_for_byte(made, tmp_path, capsys):
    syn = made["syn"]
    rows0, rows1 = _rows(syn, 0), _rows(syn, 1)
    kept = next(r["key"] for r in rows0 if r["kept"])
    rejected = next(r["key"] for r in rows0 if not r["kept"] and r["image_sha256"])
    appended = rows1[-1]["key"]
    assert load_corpus(syn)["version"] == 2 and rows1[-1]["kept"]
    before = tree_bytes(syn)
    for key, version, status in ((kept, 1, "kept"), (rejected, 1, "rejected"), (appended, 2, "kept")):
        code, lines, err = _reproduce(made, syn, key, "--real", str(made["tw"]), capsys=capsys)
        assert code == 0, (lines, err)
        assert lines[0].startswith(f"{key} in {syn}: version {version}, {status}")
        for part in ("image", "mask", "KEY.json", "manifest row"):
            assert _part(lines, part).startswith("identical"), lines
        assert lines[-1] == "identical: re-rendered byte for byte"
    # without --real: the reference is found where corpus.json records it
    code, lines, _ = _reproduce(made, syn, kept, capsys=capsys)
    ref = load_corpus(syn)["config"]["realism_reference"]
    assert code == 0 and _part(lines, "realism") == f"reference {ref} from {made['tw']}"
    assert tree_bytes(syn) == before
    # a corpus that records the reference by id only (written before its path was recorded): the rest is
    # still compared, and the output says what was not
    old = _copy(made, tmp_path)
    rec = json.loads((old / "corpus.json").read_text())
    del rec["filter"]["realism_reference"]["path"]
    (old / "corpus.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    syn = old
    out = tmp_path / "look.png"
    code, lines, _ = _reproduce(made, syn, kept, "--out", str(out), capsys=capsys)
    assert code == 0 and _part(lines, "realism").startswith("not compared")
    assert lines[-2].startswith("identical: re-rendered byte for byte; not recomputed: the realism score")
    assert lines[-1] == f"wrote {out}: image and mask (stored, then re-rendered)"
    assert decode_png(out.read_bytes(), "RGB").shape[1] > 4 * 128  # stored and re-rendered, with masks


def _copy(made, tmp_path: Path) -> Path:
    return shutil.copytree(made["syn"], tmp_path / "syn")


def test_changed_image_bytes_are_named(made, tmp_path, capsys):
    """A stored image changed by one pixel (the shard rewritten through the shard writer): exit 1,
    the image named with what differs, the other parts identical."""
    syn = _copy(made, tmp_path)
    rec = load_corpus(syn)
    info = rec["shards"][0]
    path = manifest_path(syn, info["name"])
    meta = json.loads(pq.read_schema(path).metadata[b"dpp"])
    members = {**tar_members(syn / info["name"]), **tar_members(syn / info["rejected"]["name"])}
    key = next(r["key"] for r in _rows(syn, 0) if r["kept"])
    image = decode_png(members[key]["png"], "RGB").copy()
    image[3, 5] ^= 8
    members[key] = {**members[key], "png": encode_png(image)}
    with ShardWriter(syn, 0, rec["classes"], meta["config_hash"], meta, keep_rejected=True) as w:
        for r in _rows(syn, 0):
            row = {k: v for k, v in r.items() if k not in ("shard", "kept", "reject_reason", "config_hash")}
            if r["kept"]:
                w.add_encoded(members[r["key"]], row)
            else:
                w.reject_encoded(members[r["key"]], row, r["reject_reason"])
        w.close()
    code, lines, err = _reproduce(made, syn, key, capsys=capsys)
    assert code == 1 and not err
    assert _part(lines, "image") == "differs: 1 of 1024 pixels, max difference 8 of 255"
    assert [_part(lines, p) for p in ("mask", "KEY.json", "manifest row")] == ["identical"] * 3
    assert lines[-1].startswith("differs: image (device:")


def _edit(corpus: Path, what: str, **fields) -> None:
    rec = json.loads((corpus / "corpus.json").read_text())
    rec[what] = {**rec[what], **fields}
    (corpus / "corpus.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")


def _refused(made, corpus, key, *extra, capsys) -> str:
    code, lines, err = _reproduce(made, corpus, key, *extra, capsys=capsys)
    assert code == 2 and not lines and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_models_that_cannot_be_found_are_refused_in_one_line(made, tmp_path, capsys):
    syn = _copy(made, tmp_path)
    rec = load_corpus(syn)
    gid, lid, cid = rec["generator"]["id"], rec["labeler"]["id"], rec["config"]["classifier"]
    key = _rows(syn, 0)[0]["key"]
    # the classifier: not where corpus.json records it, and not shipped
    _edit(syn, "classifier", path=str(tmp_path / "noclf"))
    capsys.readouterr()
    assert main(["reproduce", str(syn), key]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"classifier {cid} cannot be found" in err and "--classifier" in err
    assert f"{tmp_path / 'noclf'} does not hold it" in err
    assert f"--classifier {made['tw']} is not a classifier folder" in _refused(
        made, syn, key, "--classifier", str(made["tw"]), capsys=capsys
    )
    # the generator: its folder gone, or other weights where it was
    _edit(syn, "generator", source=str(tmp_path / "gone"))
    err = _refused(made, syn, key, capsys=capsys)
    assert f"generator {gid} cannot be found: {tmp_path / 'gone'} does not exist" in err
    other = build_tiny_model(tmp_path / "other", seed=1, size=32)
    err = _refused(made, syn, key, "--generator", str(other), capsys=capsys)
    assert f"generator {gid} cannot be found: {other} now holds other@" in err and "(other weights)" in err
    # the labeler's folder gone
    _edit(syn, "generator", source=str(made["model"]))
    _edit(syn, "labeler", path=str(tmp_path / "nolab"))
    err = _refused(made, syn, key, capsys=capsys)
    assert f"labeler {lid} cannot be found: {tmp_path / 'nolab'} does not exist; pass --labeler" in err


def test_another_recorded_device_is_refused_unless_allowed(made, tmp_path, capsys):
    syn = _copy(made, tmp_path)
    path = manifest_path(syn, "shard-000000")
    meta = json.loads(pq.read_schema(path).metadata[b"dpp"])
    write_manifest(path, read_manifest(path), {**meta, "rendered_on": {"device": "cuda", "dtype": "float16"}})
    key = _rows(syn, 0)[0]["key"]
    err = _refused(made, syn, key, "--device", "cpu", capsys=capsys)
    assert f"{key} was rendered on cuda, float16; here it would be rendered on cpu, float32" in err
    code, lines, _ = _reproduce(made, syn, key, "--device", "cpu", "--allow-device-change", capsys=capsys)
    assert code == 0 and "re-rendered on cpu, float32 (--allow-device-change)" in _part(lines, "device")


def test_a_text_to_image_sample_with_zero_shot_masks_reproduces(tiny_sd_dir, tmp_path, capsys):
    """Prompts (one class with its own list) and the cross-attention labeler are rebuilt from the config."""
    out = tmp_path / "sd"
    argv = ["generate", "--generator", str(tiny_sd_dir), "--labeler", "cross-attention", "--n", "3"]
    argv += [
        "--classes",
        "disk,square",
        "--prompts",
        "disk=a disk|a round disk",
        "--seed",
        "0",
        "--steps",
        "2",
    ]
    argv += ["--batch-size", "2", "--shard-size", "3", "--min-target-pixels", "0", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["reproduce", str(out), "syn-000000-000002"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert _part(lines, "labeler").startswith("cross-attention@") and "(zero-shot" in _part(lines, "labeler")
    assert [_part(lines, p) for p in ("mask", "KEY.json", "manifest row")] == ["identical"] * 3
    assert lines[-1] == "identical: re-rendered byte for byte"
