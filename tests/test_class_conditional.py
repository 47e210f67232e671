"""Class-conditional pixel generators: the training recipe's labels, classifier-free guidance in our loop,
`dpp sample`/`dpp generate` drawing each sample's class, and the shape-purity figure of eval-generator."""

import json

import numpy as np
import pytest
import torch

from flows.cli import main
from manifests.format.record import load_corpus
from manifests.storage.reader import iter_samples, load_images, single_class_labels
from manifests.verify import verify_corpus
from pipeline.diffusion.load import load_generator
from pipeline.diffusion.pixel import sample
from pipeline.diffusion.train import TrainConfig, train
from pipeline.evaluation.generator_quality import drawn_as_asked, object_purity
from pipeline.realdata.ingest import write_toyworld

CLASSES = ("disk", "square", "triangle")


def test_single_class_labels_come_from_the_masks(tmp_path):
    flat = write_toyworld(tmp_path / "flat", n=12, seed=3, quiet=True).record
    labels = single_class_labels([tmp_path / "flat"], flat["classes"])
    for label, s in zip(labels, iter_samples(tmp_path / "flat"), strict=True):
        assert label == s.mask[s.mask != 0][0] - 1  # one class per flat scene
    write_toyworld(tmp_path / "tex", n=30, seed=3, quiet=True, style="textured")
    mixed = single_class_labels([tmp_path / "tex"], flat["classes"])
    assert (mixed == 3).any()  # a scene mixing classes gets the "no class" label


def test_the_recipe_trains_a_class_conditional_model_that_loads_with_its_classes(tmp_path):
    write_toyworld(tmp_path / "flat", n=8, seed=1, quiet=True)
    images = load_images([tmp_path / "flat"])
    labels = single_class_labels([tmp_path / "flat"], ["background", *CLASSES])
    cfg = TrainConfig(
        steps=2, batch_size=4, block_out_channels=(8, 16), attention_levels=(False, True), num_classes=3
    )
    with pytest.raises(ValueError, match="one label per training image"):
        train(images, tmp_path / "no-labels", cfg)
    prov = {"class_labels": {"classes": list(CLASSES)}}
    assert train(images, tmp_path / "m", cfg, provenance=prov, labels=labels) == 2
    gen = load_generator(str(tmp_path / "m"), "cpu")
    assert gen.class_names == CLASSES and gen.unet.config.num_class_embeds == 4
    a = sample(gen, [1, 2], "ddim", 2, classes=["disk", "square"])
    b = sample(gen, [1, 2], "ddim", 2, classes=["triangle", "triangle"])
    assert not np.array_equal(a, b)  # the label reaches the UNet


def test_classifier_free_guidance_mixes_the_two_predictions(tiny_cond_dir):
    gen = load_generator(str(tiny_cond_dir), "cpu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = gen.class_labels(["disk", "square", "triangle"])
    null = gen.class_labels([None] * 3)
    with torch.no_grad():
        c = gen.unet(x, 500, class_labels=labels).sample
        u = gen.unet(x, 500, class_labels=null).sample
        assert torch.allclose(gen.eps(x, 500, labels, 1.0), c, atol=1e-6)
        assert torch.allclose(gen.eps(x, 500, labels, 3.0), u + 3.0 * (c - u), atol=1e-5)
        assert torch.allclose(gen.eps(x, 500), u, atol=1e-6)  # no labels: unconditional
    with pytest.raises(Exception, match="'hexagon'.*disk, square, triangle"):
        gen.class_labels(["hexagon"])


def test_a_conditional_sample_does_not_depend_on_its_batch(tiny_cond_dir):
    gen = load_generator(str(tiny_cond_dir), "cpu")
    seeds, classes = [4, 5, 6], ["disk", "square", "triangle"]
    together = sample(gen, seeds, "ddim", 3, batch_size=3, classes=classes, cfg_scale=2.0)
    alone = np.concatenate(
        [
            sample(gen, [s], "ddim", 3, batch_size=1, classes=[c], cfg_scale=2.0)
            for s, c in zip(seeds, classes, strict=True)
        ]
    )
    assert np.abs(together.astype(int) - alone.astype(int)).max() <= 1


def test_generate_draws_each_target_and_labels_its_foreground_as_that_class(tiny_cond_dir, tmp_path):
    flat = tmp_path / "flat"
    write_toyworld(flat, n=12, seed=2, quiet=True)
    lab = tmp_path / "lab"
    argv = ["train-labeler", "--generator", str(tiny_cond_dir), "--data", str(flat), "--shots", "3"]
    assert main([*argv, "--members", "2", "--out", str(lab), "--quiet"]) == 0
    out = tmp_path / "syn"
    argv = ["generate", "--generator", str(tiny_cond_dir), "--labeler", str(lab), "--n", "6", "--seed", "1"]
    argv += ["--shard-size", "6", "--steps", "2", "--min-target-pixels", "0", "--drop-fraction", "0"]
    assert (
        main([*argv, "--class-cfg-scale", "1.5", "--out", str(out), "--quiet"]) == 0
    )  # no --classes: balanced
    rec = load_corpus(out)
    assert rec["config"]["cfg_scale"] == 1.5 and rec["config"]["class_plan"] == list(CLASSES)
    classes = rec["classes"]
    targets = []
    for s in iter_samples(out):
        (target,) = s.meta["target_classes"]
        targets.append(target)
        assert set(np.unique(s.mask)) <= {0, classes.index(target), 255}
    assert sorted(targets) == sorted(CLASSES * 2)
    assert verify_corpus(out).ok
    # the scale is part of the config: another scale is another corpus
    out2 = tmp_path / "syn2"
    assert main([*argv, "--class-cfg-scale", "1.0", "--out", str(out2), "--quiet"]) == 0
    assert load_corpus(out2)["config_hash"] != rec["config_hash"]


def test_a_class_the_generator_does_not_draw_is_refused(tiny_cond_dir, labeler_dir, tmp_path, capsys):
    argv = ["generate", "--generator", str(tiny_cond_dir), "--labeler", str(labeler_dir), "--n", "2"]
    assert main([*argv, "--seed", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on generator" in err[0]  # a labeler of another generator


def test_dpp_sample_draws_the_planned_classes(tiny_cond_dir, tmp_path, capsys):
    argv = ["sample", "--generator", str(tiny_cond_dir), "--n", "4", "--seed", "2", "--steps", "2"]
    assert main([*argv, "--classes", "square", "--out", str(tmp_path / "sq.png"), "--quiet"]) == 0
    assert main([*argv, "--classes", "disk", "--out", str(tmp_path / "disk.png"), "--quiet"]) == 0
    assert (tmp_path / "sq.png").read_bytes() != (tmp_path / "disk.png").read_bytes()
    assert main([*argv, "--classes", "hexagon", "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'hexagon'" in err[0] and not (tmp_path / "x.png").exists()


def test_class_flags_on_an_unconditional_generator_are_refused(tiny32_model_dir, tmp_path, capsys):
    argv = ["sample", "--generator", str(tiny32_model_dir), "--n", "2", "--seed", "2", "--steps", "2"]
    for flag, value in (("--classes", "disk"), ("--class-cfg-scale", "3")):
        assert main([*argv, flag, value, "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag} applies to class-conditional generators" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_object_purity_and_drawn_as_asked_on_constructed_masks():
    m = np.zeros((3, 32, 32), np.uint8)
    m[0, 2:10, 2:10] = 1  # a pure disk object, 64 px
    m[0, 20:30, 20:30] = 2  # an object half square ...
    m[0, 20:30, 25:30] = 3  # ... half triangle: purity 0.5, 100 px
    m[1, 0:3, 0:3] = 3  # 9 px: below the 12-pixel floor, not an object
    m[2, 5:20, 5:20] = 3
    objs = object_purity(m, 4)
    assert sorted(objs[:, 0].tolist()) == [0.5, 1.0, 1.0]
    assert sorted(objs[:, 1].astype(int).tolist()) == [1, 2, 3]  # the 50/50 tie goes to the lower index
    assert drawn_as_asked(m, [1, 3, 3]) == 1.0  # sample 0: disk 64 px beats square 50 and triangle 50
    assert drawn_as_asked(m, [2, 3, 3]) == pytest.approx(2 / 3)


def test_eval_generator_reports_purity_and_drawn_as_asked(tiny_cond_dir, tmp_path, capsys):
    write_toyworld(tmp_path / "real", n=12, seed=4, quiet=True)
    argv = ["eval-generator", "--generator", str(tiny_cond_dir), "--real", str(tmp_path / "real")]
    assert main([*argv, "--n", "12", "--steps", "2", "--json", "--quiet"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert 0.0 <= q["drawn_as_asked"] <= 1.0 and q["objects_real"] > 0
    assert 0.3 < q["shape_purity_real"] <= 1.0
    assert set(q["object_share_real"]) == set(CLASSES)


def test_resuming_with_another_recipe_is_refused(tmp_path, capsys):
    write_toyworld(tmp_path / "flat", n=4, seed=1, quiet=True)
    argv = ["train-generator", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "m"), "--quiet"]
    assert main([*argv, "--steps", "1", "--batch-size", "2", "--class-conditional"]) == 0
    before = (tmp_path / "m/checkpoint/state.json").read_bytes()
    assert main([*argv, "--steps", "2", "--batch-size", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_classes = 3, not 0" in err[0]
    assert (tmp_path / "m/checkpoint/state.json").read_bytes() == before
    assert main([*argv, "--steps", "2", "--batch-size", "2", "--resume", "--class-conditional"]) == 0


def test_eval_generator_k_sets_the_neighbourhood_of_precision_and_recall(tiny_cond_dir, tmp_path, capsys):
    write_toyworld(tmp_path / "real", n=12, seed=4, quiet=True)
    argv = ["eval-generator", "--generator", str(tiny_cond_dir), "--real", str(tmp_path / "real")]
    q = {}
    for k in (1, 8):
        assert main([*argv, "--n", "12", "--steps", "2", "--k", str(k), "--json", "--quiet"]) == 0
        q[k] = json.loads(capsys.readouterr().out)
    assert q[1]["k"] == 1 and q[8]["k"] == 8
    # a k-th neighbour further away makes every ball larger: neither figure can fall, and here one rises
    assert q[8]["precision"] >= q[1]["precision"] and q[8]["recall"] >= q[1]["recall"]
    assert (q[8]["precision"], q[8]["recall"]) != (q[1]["precision"], q[1]["recall"])
