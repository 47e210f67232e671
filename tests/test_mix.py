"""dpp mix: exact real/synthetic counts, clear refusals, policies, per-sample sources; the audit's
numbers on constructed corpora; accumulate's real fraction 1/(t+1)."""

import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from manifests.audit import audit
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.storage.staged import CorpusSample, write_corpus
from manifests.verify import verify_corpus

from .conftest import tree_bytes

CLASSES = ["background", "disk", "square", "triangle"]


def constructed(out: Path, n: int, origin: str, generation: int, tag: str, cls: int = 1) -> Path:
    """A corpus of n flat samples, each with `cls` on its top-left 4x4 pixels, all of one origin and
    generation: numbers an audit must reproduce exactly."""

    def samples():
        for i in range(n):
            image = np.full((8, 8, 3), (i * 7) % 256, np.uint8)
            mask = np.zeros((8, 8), np.uint8)
            mask[:4, :4] = cls
            meta = {"origin": origin, "generation": generation, "source": tag}
            yield CorpusSample(f"{tag}-{i:04d}", image, mask, meta, {"source": tag, "seed": i})

    config = {"kind": "constructed", "tag": tag, "n": n, "origin": origin, "generation": generation}
    write_corpus(out, samples, n, CLASSES, config, tag, shard_size=16, quiet=True)
    return out


def _rows(corpus: Path) -> list[dict]:
    rows = []
    for s in load_corpus(corpus)["shards"]:
        rows += read_manifest(manifest_path(corpus, s["name"])).to_pylist()
    return rows


@pytest.fixture
def sources(tmp_path):
    real = constructed(tmp_path / "real", 30, "real", 0, "real")
    syn = constructed(tmp_path / "syn", 20, "synthetic", 1, "syn", cls=2)
    return real, syn


def test_mix_gives_exact_counts_and_records_sources(sources, tmp_path, capsys):
    real, syn = sources
    argv = ["mix", str(real), str(syn), "--synthetic-fraction", "0.3", "--n", "25", "--seed", "1"]
    assert main([*argv, "--shard-size", "10", "--out", str(tmp_path / "m")]) == 0
    assert "policy mix: 8 synthetic + 17 real" in capsys.readouterr().out
    rec = load_corpus(tmp_path / "m")
    assert rec["counts"] == {"real": 17, "synthetic": 8, "rejected": 0}  # round(0.3 * 25) = 8
    assert rec["parents"] == sorted([load_corpus(real)["corpus_id"], load_corpus(syn)["corpus_id"]])
    assert rec["policy"]["name"] == "mix" and [s["taken"] for s in rec["policy"]["sources"]] == [17, 8]
    rows = _rows(tmp_path / "m")
    src_rows = {(load_corpus(p)["corpus_id"], r["key"]): r for p in (real, syn) for r in _rows(p)}
    for r in rows:  # every sample names its source; image and mask bytes are the source's
        src = src_rows[(r["source_corpus"], r["source_key"])]
        assert (r["image_sha256"], r["mask_sha256"], r["generation"]) == (
            src["image_sha256"],
            src["mask_sha256"],
            src["generation"],
        )
    assert len({r["source_key"] for r in rows}) == 25 and verify_corpus(tmp_path / "m").ok
    # the same command again: nothing to do; another seed draws other samples
    assert main([*argv, "--shard-size", "10", "--out", str(tmp_path / "m"), "--quiet"]) == 0
    assert main([*argv[:-1], "2", "--shard-size", "10", "--out", str(tmp_path / "m2"), "--quiet"]) == 0
    assert {r["source_key"] for r in _rows(tmp_path / "m2")} != {r["source_key"] for r in rows}


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--synthetic-fraction", "0.9", "--n", "30"], "needs 27 synthetic and 3 real samples; the sources hold 20"),  # noqa: E501
        (["--synthetic-fraction", "0.1", "--n", "40"], "needs 4 synthetic and 36 real samples"),
        (["--synthetic-fraction", "1.5", "--n", "10"], "1.5 is not allowed; it must be in [0.0, 1.0]"),
        (["--n", "10"], "give --synthetic-fraction F --n N"),
        (["--policy", "replace", "--n", "21"], "the sources hold 20 synthetic samples of generation 1"),
    ],
)  # fmt: skip
def test_mix_refuses_impossible_requests(sources, tmp_path, capsys, extra, needle):
    real, syn = sources
    before = tree_bytes(tmp_path)
    assert main(["mix", str(real), str(syn), *extra, "--seed", "0", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert tree_bytes(tmp_path) == before


def test_accumulate_and_replace_policies_and_the_exact_audit(tmp_path, capsys):
    """Rounds of equal size R: accumulate keeps real data, so round t has real fraction 1/(t+1);
    replace keeps only the newest generation."""
    r = 12
    train = constructed(tmp_path / "real", r, "real", 0, "real")
    for t in (1, 2, 3):
        syn = constructed(tmp_path / f"gen{t}", r, "synthetic", t, f"gen{t}", cls=1 + t % 3)
        nxt = tmp_path / f"acc{t}"
        assert (
            main(["mix", str(train), str(syn), "--policy", "accumulate", "--seed", "0", "--out", str(nxt)])
            == 0
        )
        res = audit([nxt])
        assert res["total"] == r * (t + 1) and res["real"] == r
        assert res["real"] / res["total"] == pytest.approx(1 / (t + 1))
        assert res["per_generation"] == {str(g): r for g in range(t + 1)}
        train = nxt
    assert (
        main(["mix", str(train), "--policy", "replace", "--seed", "0", "--out", str(tmp_path / "rep")]) == 0
    )
    rep = audit([tmp_path / "rep"])
    assert rep["per_generation"] == {"3": r} and rep["real"] == 0
    # exact per-class numbers: every sample has 16 pixels of its class on an 8x8 image
    per_class = audit([train])["per_class"]
    assert per_class["disk"]["images"] == {"real": r, "synthetic": r}  # real (cls 1) + gen3 (1 + 3 % 3 = 1)
    assert per_class["disk"]["pixels"] == {"real": 16 * r, "synthetic": 16 * r}
    assert (
        per_class["square"]["pixels"]["synthetic"] == 16 * r
        and per_class["triangle"]["images"]["synthetic"] == r
    )
    assert per_class["background"]["pixels"]["real"] == 48 * r
    capsys.readouterr()
    assert main(["audit", str(train), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corpora"][0]["policy"]["name"] == "accumulate"


def test_audit_plot_draws_generations_and_classes(sources, tmp_path, capsys):
    from PIL import Image

    from manifests.audit_plot import REAL, SYNTH

    real, syn = sources
    png = tmp_path / "audit.png"
    assert main(["audit", str(real), str(syn), "--plot", str(png)]) == 0
    colours = {c for _, c in Image.open(png).convert("RGB").getcolors(1 << 16)}
    assert REAL in colours and SYNTH in colours  # real and synthetic bars are drawn
    assert main(["audit", str(real), "--plot", str(png)]) == 2  # kept unless --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["audit", str(real), "--plot", str(png), "--overwrite", "--quiet"]) == 0
    assert SYNTH not in {c for _, c in Image.open(png).convert("RGB").getcolors(1 << 16)}  # no synthetic data


def test_balance_classes_draws_even_class_counts(tw_corpus, tmp_path):
    from collections import Counter

    # the session corpus holds 18 disk, 4 square and 18 triangle scenes (one class each)
    argv = ["mix", str(tw_corpus), "--policy", "accumulate", "--n", "12", "--seed", "0", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--balance-classes", "--out", str(tmp_path / "even")]) == 0

    def per_class(corpus: Path) -> Counter:
        return Counter(c for r in _rows(corpus) for c in r["classes_present"] if c != "background")

    assert per_class(tmp_path / "even") == {"disk": 4, "square": 4, "triangle": 4}
    assert per_class(tmp_path / "plain") != per_class(tmp_path / "even")  # the seeded draw alone is uneven
    assert load_corpus(tmp_path / "even")["policy"]["balance_classes"] is True
    assert load_corpus(tmp_path / "plain")["policy"]["balance_classes"] is False


def test_balance_goes_on_when_a_class_runs_out(tw_corpus, tmp_path):
    from collections import Counter

    # 20 of 18 disk / 4 square / 18 triangle scenes: once the 4 squares are taken, the other two stay even
    argv = ["mix", str(tw_corpus), "--policy", "accumulate", "--n", "20", "--seed", "0", "--quiet"]
    assert main([*argv, "--balance-classes", "--out", str(tmp_path / "even")]) == 0
    got = Counter(c for r in _rows(tmp_path / "even") for c in r["classes_present"] if c != "background")
    assert got == {"disk": 8, "square": 4, "triangle": 8}
