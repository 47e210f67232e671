"""dpp view over HTTP: paging, filters and sort from the manifests; sample bytes read from the shards by
offset; nothing outside the named corpora served; a damaged shard reported, not a crash; the static
export; the command line."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from flows.cli import main
from manifests.format.layout import manifest_path
from manifests.format.record import read_manifest
from manifests.storage.reader import decode_png, tar_members
from manifests.view.app import create_app, running
from manifests.view.index import Damaged, open_corpora

from .conftest import tree_bytes


def _rows(corpus: Path) -> list[dict]:
    tables = [read_manifest(manifest_path(corpus, f"shard-{i:06d}")) for i in range(2)]
    return pa.concat_tables(tables).to_pylist()


@pytest.fixture
def client(view_corpus, tw_corpus):
    return TestClient(create_app(open_corpora([view_corpus, tw_corpus])))


def _total(client, **params) -> int:
    res = client.get("/api/corpora/0/samples", params=params)
    assert res.status_code == 200, res.text
    return res.json()["total"]


def test_pages_filters_and_sort_follow_the_manifests(client, view_corpus):
    rows = _rows(view_corpus)
    summary = client.get("/api/corpora").json()
    assert [c["candidates"] for c in summary] == [30, 40]
    assert summary[0]["generations"] == [0, 1, 2] and sum(summary[0]["reasons"].values()) == 4
    assert set(summary[0]["scores"]) == {
        "label_uncertainty",
        "classifier_confidence",
        "realism_distance",
        "min_fragment_pixels",
    }
    assert summary[1]["scores"] == {}  # a toy-world corpus records no scores
    assert _total(client) == 30
    assert _total(client, origin="real") == 10
    assert _total(client, generation="2") == 10
    assert _total(client, status="rejected") == 4
    assert _total(client, status="kept", origin="synthetic") == 16
    reason = next(iter(summary[0]["reasons"]))
    assert _total(client, status=f"reason:{reason}") == summary[0]["reasons"][reason]
    assert _total(client, cls="square") == sum("square" in r["classes_present"] for r in rows)
    high = sum(r["label_uncertainty"] is not None and r["label_uncertainty"] >= 0.25 for r in rows)
    assert 0 < high < 20 and _total(client, min_label_uncertainty="0.25") == high
    page = client.get("/api/corpora/0/samples", params={"sort": "realism_distance", "order": "desc"}).json()
    values = [it["scores"]["realism_distance"] for it in page["items"]]
    assert values[:20] == sorted(values[:20], reverse=True) and values[20:] == [None] * 10  # no score: last
    first = client.get("/api/corpora/0/samples", params={"offset": 10, "limit": 5}).json()
    assert [it["key"] for it in first["items"]] == [r["key"] for r in rows[10:15]]
    for params, needle in [
        ({"origin": "fake"}, "origin 'fake' is not allowed"),
        ({"cls": "zebra"}, "class 'zebra' is not a class of this corpus"),
        ({"sort": "key"}, "sort 'key' is not allowed"),
        ({"limit": "100000"}, "limit 100000 is not allowed"),
        ({"min_label_uncertainty": "high"}, "is not a number"),
    ]:
        res = client.get("/api/corpora/0/samples", params=params)
        assert res.status_code == 400 and needle in res.json()["error"]


def test_samples_come_from_the_shards_byte_for_byte(client, view_corpus):
    rows = _rows(view_corpus)
    members = tar_members(view_corpus / "shards/shard-000001.tar")
    kept = next(r for r in rows if r["kept"] and r["shard"] == "shard-000001" and r["origin"] == "synthetic")
    res = client.get(f"/api/corpora/0/samples/{kept['key']}/image.png")
    assert res.status_code == 200 and res.content == members[kept["key"]]["png"]
    mask = Image.open(io.BytesIO(client.get(f"/api/corpora/0/samples/{kept['key']}/mask.png").content))
    assert mask.mode == "P"  # class colours by palette: the indices are the stored mask
    assert np.array_equal(np.asarray(mask), decode_png(members[kept["key"]]["seg.png"], "L"))
    detail = client.get(f"/api/corpora/0/samples/{kept['key']}").json()
    assert detail["seed"] == kept["seed"] and detail["row"]["seed"] == kept["seed"]
    assert detail["meta"] == json.loads(members[kept["key"]]["json"])
    assert detail["lineage"]["generator"]["id"] == "toyworld-example"
    rejected = next(r for r in rows if not r["kept"])
    rtar = view_corpus / "rejected" / f"{rejected['shard']}.tar"
    res = client.get(f"/api/corpora/0/samples/{rejected['key']}/image.png")
    assert res.status_code == 200 and res.content == tar_members(rtar)[rejected["key"]]["png"]
    tw = client.get("/api/corpora/1/samples", params={"limit": 1}).json()["items"][0]
    assert client.get(f"/api/corpora/1/samples/{tw['key']}").json()["command"] is None  # not generated


def test_charts_reuse_the_audit(client):
    res = client.get("/api/corpora/0/audit").json()
    assert (res["real"], res["synthetic"], res["rejected"]) == (10, 16, 4)
    assert res["per_generation"] == {"0": 10, "1": 8, "2": 8}


def _raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET exactly `path`, unnormalized (http.client sends it as given)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", path)
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, body


def test_nothing_outside_the_corpora_is_served(view_corpus):
    secret = view_corpus / "corpus.json"
    corpora = open_corpora([view_corpus])
    key = corpora[0].table.column("key")[0].as_py()
    with running(corpora) as base:
        paths = [
            "/static/../corpus.json",
            "/static/../../../../etc/passwd",
            "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/static/..%2f..%2f..%2fetc%2fpasswd",
            "/static/%2e%2e%2fapp.py",
            "/static//etc/passwd",
            f"/static/{secret}",
            f"/{secret}",
            "//etc/passwd",
            "/etc/passwd",
            "/api/corpora/0/samples/..%2f..%2fcorpus.json/image.png",
            "/api/corpora/0/samples/%2e%2e/image.png",
            f"/api/corpora/0/samples/{key}%2f..%2f..%2fcorpus.json/image.png",
            f"/api/corpora/0/samples/{secret}/image.png",
            "/api/corpora/0/samples/nosuchkey/image.png",
            "/api/corpora/1/samples",
            "/api/corpora/-1/samples",
        ]
        for path in paths:
            status, body = _raw_get(base, path)
            assert status == 404, (path, status, body[:200])
            assert b"corpus_id" not in body and b"root:" not in body and b"import " not in body, path
        assert _raw_get(base, f"/api/corpora/0/samples/{key}/image.png")[0] == 200
        u = urlsplit(base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("POST", "/api/corpora")  # read-only: GET routes only
        assert conn.getresponse().status == 405
        conn.close()


def test_a_damaged_shard_shows_as_damaged(view_corpus, tmp_path):
    corpus = shutil.copytree(view_corpus, tmp_path / "c")
    rows = _rows(corpus)
    tar = corpus / "shards/shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # truncated
    # a shard whose size is right but whose bytes are not: one byte of a member changed
    data = bytearray((corpus / "shards/shard-000000.tar").read_bytes())
    first = next(r for r in rows if r["shard"] == "shard-000000" and r["kept"])
    offset = data.find(b"IDAT", data.find(first["key"].encode()))
    data[offset + 8] ^= 0xFF
    (corpus / "shards/shard-000000.tar").write_bytes(bytes(data))
    before = tree_bytes(corpus)
    client = TestClient(create_app(open_corpora([corpus])), raise_server_exceptions=False)
    summary = client.get("/api/corpora").json()[0]
    assert "truncated" in summary["damaged"]["shard-000001"]
    page = client.get("/api/corpora/0/samples", params={"limit": 60}).json()
    assert page["total"] == 30  # the manifests still list every candidate
    in1 = next(it for it in page["items"] if it["key"].startswith("real-000001"))
    assert "truncated" in in1["damaged"]
    res = client.get(f"/api/corpora/0/samples/{in1['key']}/image.png")
    assert res.status_code == 500 and res.json()["damaged"]
    assert "shard shards/shard-000001.tar is damaged" in res.json()["error"]
    res = client.get(f"/api/corpora/0/samples/{first['key']}/image.png")
    assert res.status_code == 500 and "does not hash as its manifest row records" in res.json()["error"]
    other = next(r for r in rows if r["shard"] == "shard-000000" and r["kept"] and r["key"] != first["key"])
    assert client.get(f"/api/corpora/0/samples/{other['key']}/image.png").status_code == 200  # still served
    detail = client.get(f"/api/corpora/0/samples/{in1['key']}").json()
    assert detail["seed"] == in1["seed"] and detail["meta"] is None and "truncated" in detail["damaged"]
    audit = client.get("/api/corpora/0/audit")
    assert audit.status_code == 500 and "is damaged" in audit.json()["error"]
    assert tree_bytes(corpus) == before  # nothing written into the corpus


def test_warm_indexes_every_shard_and_marks_a_broken_one(view_corpus, tmp_path):
    """`dpp view` indexes every shard in the background (Corpus.warm): afterwards each kept sample's
    members are known by offset; a tar whose header is broken (same size) is marked damaged, not raised."""
    corpus = shutil.copytree(view_corpus, tmp_path / "c")
    tar = corpus / "shards/shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[148:156] = b"garbage!"  # the first header's checksum
    tar.write_bytes(bytes(data))
    (c,) = open_corpora([corpus])
    assert not c.shards["shard-000001"].damaged  # the size is right: nothing is known yet
    c.warm()
    assert "not a readable tar" in c.shards["shard-000001"].damaged
    good = c.shards["shard-000000"]
    kept = {r["key"] for r in _rows(corpus) if r["shard"] == "shard-000000" and r["kept"]}
    assert set(good.members[good.tar]) == kept
    assert all(set(m) == {"png", "seg.png", "json"} for m in good.members[good.tar].values())
    with pytest.raises(Damaged, match="not a readable tar"):
        c.member(next(r["key"] for r in _rows(corpus) if r["shard"] == "shard-000001" and r["kept"]), "png")


def test_export_writes_a_static_site_and_nothing_into_the_corpus(view_corpus, tmp_path):
    before = tree_bytes(view_corpus)
    out = tmp_path / "site"
    assert main(["view", str(view_corpus), "--export", str(out), "--quiet"]) == 0
    assert tree_bytes(view_corpus) == before
    page = (out / "index.html").read_text()
    assert '<script src="data/corpus-0.js"></script>' in page and (out / "static/app.js").is_file()
    text = (out / "data/corpus-0.js").read_text()
    data = json.loads(text[text.index("push(") + 5 : text.rindex(");")])
    assert len(data["rows"]) == 30 and data["audit"]["rejected"] == 4
    key = data["rows"][0]["key"]
    assert (out / f"img/0/{key}.png").read_bytes() == tar_members(view_corpus / "shards/shard-000000.tar")[
        key
    ]["png"]
    assert len(list((out / "img/0").glob("*.mask.png"))) == 30  # rejected images were kept too
    assert main(["view", str(view_corpus), "--export", str(out)]) == 2  # not empty now
    assert main(["view", str(view_corpus), "--export", str(view_corpus / "site")]) == 2
    assert not (view_corpus / "site").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_prints_its_address_and_serves(view_corpus, tw_corpus, capsys):
    with socket.socket() as busy:  # a port already in use: one line, exit 2
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        capsys.readouterr()
        assert main(["view", str(view_corpus), "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--port {port}: cannot listen on 127.0.0.1:{port}" in err
    port = _free_port()
    code = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "view", str(view_corpus), str(tw_corpus), "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == f"dpp view: 2 corpora, 70 samples at http://127.0.0.1:{port}/ (Ctrl-C stops)"
        for _ in range(100):
            try:
                status, body = _raw_get(f"http://127.0.0.1:{port}/", "/api/corpora")
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        assert status == 200 and [c["candidates"] for c in json.loads(body)] == [30, 40]
        status, body = _raw_get(f"http://127.0.0.1:{port}/", "/")
        assert status == 200 and b"dpp view" in body
    finally:
        proc.terminate()
        proc.wait(10)
