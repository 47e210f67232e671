"""dpp verify catches what tarfile alone does not: a tar cut at a member boundary, a flipped byte."""

import json
import tarfile

from manifests.verify import verify_corpus


def test_clean_corpus_verifies(tw_corpus):
    rep = verify_corpus(tw_corpus)
    assert rep.ok, rep.problems
    assert rep.shards == 3 and rep.samples == 40


def test_truncation_at_member_boundary_is_caught(tw_copy):
    path = tw_copy / "shards/shard-000001.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    cut = members[6].offset  # header of the 3rd sample's first member: a clean member boundary
    data = path.read_bytes()[:cut]
    path.write_bytes(data)
    with tarfile.open(path) as tar:  # tarfile itself sees nothing wrong
        assert len(tar.getmembers()) == 6
    rep = verify_corpus(tw_copy)
    assert not rep.ok
    text = "\n".join(rep.problems)
    assert "shards/shard-000001.tar" in text and "sha256" in text
    assert "holds 2 samples, corpus.json records 16" in text


def test_single_flipped_byte_is_caught_and_names_the_sample(tw_copy):
    path = tw_copy / "shards/shard-000000.tar"
    with tarfile.open(path) as tar:
        m = [m for m in tar.getmembers() if m.name.endswith(".seg.png")][4]
    data = bytearray(path.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    rep = verify_corpus(tw_copy)
    key = m.name.split(".")[0]
    assert any("shard-000000.tar" in p and "sha256" in p for p in rep.problems)
    assert any(key in p and "seg.png" in p for p in rep.problems)


def test_missing_shard_and_missing_manifest_are_named(tw_copy):
    (tw_copy / "shards/shard-000002.tar").unlink()
    (tw_copy / "manifest/shard-000001.parquet").unlink()
    text = "\n".join(verify_corpus(tw_copy).problems)
    assert "shards/shard-000002.tar: listed in corpus.json but missing" in text
    assert "manifest/shard-000001.parquet is missing" in text


def test_mask_value_out_of_range_is_caught(tw_copy, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    # Rewrite one shard with a mask holding class 9, keeping the tar well-formed.
    path = tw_copy / "shards/shard-000002.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as out:
        for i, (m, data) in enumerate(members):
            if m.name.endswith(".seg.png") and i < 3:
                buf = io.BytesIO()
                Image.fromarray(np.full((32, 32), 9, np.uint8), mode="L").save(buf, format="PNG")
                data = buf.getvalue()
                m.size = len(data)
            out.addfile(m, io.BytesIO(data))
    text = "\n".join(verify_corpus(tw_copy).problems)
    assert "holds value(s) [9] outside 0-3 and 255" in text


def test_counts_in_corpus_json_are_reconciled(tw_copy):
    rec = json.loads((tw_copy / "corpus.json").read_text())
    rec["counts"]["real"] = 41
    (tw_copy / "corpus.json").write_text(json.dumps(rec))
    assert any("counts" in p for p in verify_corpus(tw_copy).problems)


def test_stray_temp_file_is_noted_not_failed(tw_copy):
    (tw_copy / "shards/shard-000003.tar.tmp").write_bytes(b"partial")
    rep = verify_corpus(tw_copy)
    assert rep.ok and any("shard-000003.tar.tmp" in n for n in rep.notes)
