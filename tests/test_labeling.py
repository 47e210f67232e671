"""Labelers bound to a generator: support set recorded, generator mismatch refused, evaluation."""

import json

import pytest

from flows.cli import main
from manifests.errors import UsageError
from pipeline.diffusion.load import load_generator
from pipeline.labeling.fewshot import load_labeler

from .conftest import build_tiny_model


def _train_labeler(model, corpus, out, shots="2", members="2", *extra):
    argv = [
        "train-labeler",
        "--generator",
        str(model),
        "--data",
        str(corpus),
        "--shots",
        shots,
        "--members",
        members,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    return main(argv)


def test_train_labeler_records_support_set_and_evaluates(tiny32_model_dir, tw_corpus, tmp_path, capsys):
    out = tmp_path / "lab"
    argv = [
        "train-labeler",
        "--generator",
        str(tiny32_model_dir),
        "--data",
        str(tw_corpus),
        "--shots",
        "4",
        "--members",
        "3",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    info = json.loads((out / "labeler.json").read_text())
    assert len(info["support_keys"]) == 4 and len(set(info["support_keys"])) == 4
    assert info["classes"] == ["background", "disk", "square", "triangle"]
    assert info["feature_spec"]["blocks"] == ["mid", "up0", "up1"]
    gen = load_generator(str(tiny32_model_dir), device="cpu")
    assert info["generator_id"] == gen.id
    # the same seed picks the same shots; another seed other shots
    assert main([*argv[:-3], "--out", str(tmp_path / "lab2"), "--quiet"]) == 0
    assert json.loads((tmp_path / "lab2/labeler.json").read_text())["support_keys"] == info["support_keys"]
    assert main([*argv[:-3], "--out", str(tmp_path / "lab3"), "--seed", "5", "--quiet"]) == 0
    assert json.loads((tmp_path / "lab3/labeler.json").read_text())["support_keys"] != info["support_keys"]

    capsys.readouterr()
    assert (
        main(
            [
                "eval-labeler",
                "--generator",
                str(tiny32_model_dir),
                "--labeler",
                str(out),
                "--data",
                str(tw_corpus),
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 36  # 40 minus the 4 support images
    assert 0.0 <= res["miou"] <= 1.0 and set(res["iou"]) == set(info["classes"])


def test_labeler_refuses_another_generator(tiny32_model_dir, tw_corpus, tmp_path, capsys):
    out = tmp_path / "lab"
    assert _train_labeler(tiny32_model_dir, tw_corpus, out) == 0
    other = load_generator(str(build_tiny_model(tmp_path / "other", seed=3, size=32)), device="cpu")
    with pytest.raises(UsageError, match="was trained on generator model@.*not other@"):
        load_labeler(out, other)
    assert (
        main(
            [
                "eval-labeler",
                "--generator",
                str(tmp_path / "other"),
                "--labeler",
                str(out),
                "--data",
                str(tw_corpus),
            ]
        )
        == 2
    )
    assert "was trained on generator" in capsys.readouterr().err


@pytest.mark.parametrize(
    "shots,needle", [("0", "0 is not allowed"), ("101", "between 1 and 100"), ("41", "holds only 40 samples")]
)
def test_bad_shots(tiny32_model_dir, tw_corpus, tmp_path, capsys, shots, needle):
    assert (
        main(
            [
                "train-labeler",
                "--generator",
                str(tiny32_model_dir),
                "--data",
                str(tw_corpus),
                "--shots",
                shots,
                "--out",
                str(tmp_path / "lab"),
            ]
        )
        == 2
    )
    assert needle in capsys.readouterr().err and not (tmp_path / "lab").exists()


def test_generate_writes_a_verifiable_synthetic_corpus(tiny32_model_dir, tw_corpus, tmp_path, capsys):
    from manifests.audit import audit
    from manifests.format.record import load_corpus, read_manifest
    from manifests.verify import verify_corpus

    lab = tmp_path / "lab"
    assert _train_labeler(tiny32_model_dir, tw_corpus, lab) == 0
    argv = [
        "generate",
        "--generator",
        str(tiny32_model_dir),
        "--labeler",
        str(lab),
        "--n",
        "6",
        "--seed",
        "2",
        "--shard-size",
        "4",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--filter-block",
        "4",
        "--drop-fraction",
        "0",
        "--min-target-pixels",
        "0",
        "--quiet",
    ]
    assert main([*argv, "--out", str(tmp_path / "syn")]) == 0
    assert verify_corpus(tmp_path / "syn").ok
    a = audit([tmp_path / "syn"])
    assert (
        a["synthetic"] == 6
        and a["real"] == 0
        and a["synthetic_fraction"] == 1.0
        and a["per_generation"] == {"1": 6}
    )
    rec = load_corpus(tmp_path / "syn")
    assert rec["generator"]["id"].startswith("model@") and rec["labeler"]["support_keys"]
    assert rec["parents"] == [load_corpus(tw_corpus)["corpus_id"]]
    rows = read_manifest(tmp_path / "syn/manifest/shard-000001.parquet").to_pylist()
    kept = [r for r in rows if r["kept"]]  # no rank rule (drop 0): only the 2 needed are drawn, no surplus
    assert len(kept) == 2 and len(rows) == 2
    assert all(r["seed"] and r["labeler_id"].startswith("pixelhead@") for r in rows)
    assert all(r["label_uncertainty"] is not None and r["generation"] == 1 for r in rows)
    # the same job again: the same bytes
    assert main([*argv, "--out", str(tmp_path / "syn2")]) == 0
    for name in ("shards/shard-000000.tar", "shards/shard-000001.tar", "corpus.json"):
        assert (tmp_path / "syn" / name).read_bytes() == (tmp_path / "syn2" / name).read_bytes()
    # another batch size: the same images and masks; scores equal to float precision
    from manifests.storage.reader import iter_samples

    i = argv.index("--batch-size")
    argv[i + 1] = "3"
    assert main([*argv, "--out", str(tmp_path / "syn3")]) == 0
    for x, y in zip(iter_samples(tmp_path / "syn"), iter_samples(tmp_path / "syn3"), strict=True):
        assert x.key == y.key and (x.image == y.image).all() and (x.mask == y.mask).all()
        du = x.meta["scores"]["label_uncertainty"] - y.meta["scores"]["label_uncertainty"]
        assert abs(du) < 1e-5


def test_generate_with_a_render_memo_gives_the_same_corpus(tiny32_model_dir, tw_corpus, tmp_path):
    """The label-efficiency script renders once and labels with several heads through `render=`."""
    import numpy as np

    from pipeline.diffusion.pixel import sample
    from pipeline.generate.run import generate

    lab_dir = tmp_path / "lab"
    assert _train_labeler(tiny32_model_dir, tw_corpus, lab_dir) == 0
    gen = load_generator(str(tiny32_model_dir), "cpu")
    lab = load_labeler(lab_dir, gen)
    seen: list[int] = []

    def memo(seeds):
        seen.extend(seeds)
        return sample(gen, seeds, "ddim", 3, 4)

    from pipeline.filtering.rules import FilterRules

    rules = FilterRules(min_target_pixels=0, drop_fraction=0.0, block=3)
    kw = dict(shard_size=4, steps=3, scheduler="ddim", batch_size=4, quiet=True, rules=rules)
    generate(gen, lab, 6, 2, tmp_path / "plain", **kw)
    generate(gen, lab, 6, 2, tmp_path / "memo", **kw, render=memo)
    assert len(seen) == 6 == len(set(seen))  # no rank rule: exactly the 4 + 2 samples needed are drawn
    for name in ("shards/shard-000000.tar", "shards/shard-000001.tar", "corpus.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "memo" / name).read_bytes()
    # and the hook really is what renders: other pictures give other shards
    generate(
        gen, lab, 6, 2, tmp_path / "flat", **kw, render=lambda s: np.zeros((len(s), 32, 32, 3), np.uint8)
    )
    tar = "shards/shard-000000.tar"
    assert (tmp_path / "flat" / tar).read_bytes() != (tmp_path / "plain" / tar).read_bytes()


def test_labeling_in_threads_matches_labeling_alone(tiny32_model_dir, tw_corpus, tmp_path):
    """Shards rendered in threads share one UNet; each thread's feature capture keeps only its own passes."""
    import threading

    import numpy as np

    from manifests.storage.reader import load_images
    from pipeline.labeling.fewshot import label_images

    lab_dir = tmp_path / "lab"
    assert _train_labeler(tiny32_model_dir, tw_corpus, lab_dir) == 0
    gen = load_generator(str(tiny32_model_dir), "cpu")
    lab = load_labeler(lab_dir, gen)
    images = load_images([tw_corpus])[:16]
    parts = [(images[i : i + 4], [100 + i + j for j in range(4)]) for i in range(0, 16, 4)]
    alone = [label_images(gen, lab, im, seeds).mask.numpy() for im, seeds in parts]
    together: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        for _ in range(3):  # several passes, so the threads overlap
            together[k] = label_images(gen, lab, *parts[k]).mask.numpy()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, mask in enumerate(alone):
        assert np.array_equal(together[k], mask)


def test_blocks_and_timesteps_choose_the_features_and_are_recorded(
    tiny32_model_dir, tw_corpus, labeler_dir, tmp_path
):
    from pipeline.diffusion.features import FeatureSpec

    out = tmp_path / "lab"
    spec = ["--blocks", "mid,up1", "--timesteps", "20,300"]
    assert _train_labeler(tiny32_model_dir, tw_corpus, out, "2", "2", *spec) == 0
    info = json.loads((out / "labeler.json").read_text())
    default = json.loads((labeler_dir / "labeler.json").read_text())  # the same shots and seed, default spec
    assert info["feature_spec"] == {"blocks": ["mid", "up1"], "timesteps": [20, 300], "resolution": 32}
    assert default["feature_spec"] == {"blocks": ["mid", "up0", "up1"], "timesteps": [50], "resolution": 32}
    assert info["support_keys"] == default["support_keys"]
    # the head reads those features: mid (16 channels) and up1 (8) at two timesteps; by default mid, up0 (16)
    # and up1 at one
    assert (info["config"]["in_channels"], default["config"]["in_channels"]) == (48, 40)
    gen = load_generator(str(tiny32_model_dir), device="cpu")
    assert load_labeler(out, gen).spec == FeatureSpec(("mid", "up1"), (20, 300), 32)


def test_views_and_ignore_change_the_masks_and_the_labeler_id(tiny32_model_dir, tw_corpus, tmp_path):
    """--views averages the head over re-noisings; --ignore-above writes 255 where members disagree; both
    are label-time settings, so the same weights with other settings are another labeler."""
    import numpy as np

    from manifests.storage.reader import iter_samples
    from pipeline.labeling.fewshot import label_images, view_seeds

    gen = load_generator(str(tiny32_model_dir), device="cpu")
    assert _train_labeler(tiny32_model_dir, tw_corpus, tmp_path / "one", "3", "3") == 0
    assert _train_labeler(tiny32_model_dir, tw_corpus, tmp_path / "four", "3", "3", "--views", "4") == 0
    assert (
        _train_labeler(tiny32_model_dir, tw_corpus, tmp_path / "ign", "3", "3", "--ignore-above", "0.0") == 0
    )
    one, four, ign = (load_labeler(tmp_path / n, gen) for n in ("one", "four", "ign"))
    # same support set and seed: the same weights; the settings make them different labelers
    assert (tmp_path / "one/head.safetensors").read_bytes() == (
        tmp_path / "four/head.safetensors"
    ).read_bytes()
    assert len({one.id, four.id, ign.id}) == 3 and four.views == 4 and one.views == 1
    images = np.stack([s.image for s in iter_samples(tw_corpus, limit=6)])
    seeds = list(range(6))
    a, b, c = (label_images(gen, lab, images, seeds) for lab in (one, four, ign))
    # view 0 is the samples' own noise; the other views' seeds differ from it and from each other
    assert view_seeds(seeds, 0) == seeds and len({*view_seeds(seeds, 1), *view_seeds(seeds, 2)}) == 12
    assert not np.allclose(a.uncertainty.numpy(), b.uncertainty.numpy())
    # a zero threshold: every pixel the members do not agree on exactly is ignore, and only those
    assert (c.mask.numpy() == 255).any() and ((c.mask.numpy() == 255) == (c.uncertainty.numpy() > 0)).all()
    assert (a.mask.numpy() != 255).all()


def test_eval_labeler_with_the_class_given_relabels_only_the_foreground(
    tiny32_model_dir, tw_corpus, labeler_dir, capsys
):
    """--class-given scores the masks a class-conditional generate would write: the head's foreground as
    the image's class. It moves pixels between object classes only, so background IoU is unchanged."""
    argv = ["eval-labeler", "--generator", str(tiny32_model_dir), "--labeler", str(labeler_dir)]
    argv += ["--data", str(tw_corpus), "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--class-given"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert given["class_given"] and not plain["class_given"]
    assert given["iou"]["background"] == plain["iou"]["background"]
    assert given["iou"] != plain["iou"]
    assert main([*argv[:-1], "--class-given"]) == 0
    assert "each image's class given" in capsys.readouterr().out
