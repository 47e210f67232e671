"""Noise-aware classifier: it learns, its log-probability steers, `dpp train-classifier` writes a
deterministic loadable folder, and a generator with another noise schedule is refused."""

import json

import numpy as np
import pytest
import torch

from flows.cli import main
from labelers import classifier as clf
from manifests.errors import UsageError
from pipeline.diffusion.load import load_generator
from pipeline.guidance.classifier import alphas_cumprod, load_classifier, noise_schedule
from pipeline.realdata.ingest import write_toyworld

from .conftest import build_tiny_model, tree_bytes

# a linear-beta DDPM schedule, as diffusers builds it (0.0001 .. 0.02 over 1000 steps)
AB = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)


def _separable(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Textured images; class "top" present <=> a bright top half, "left" <=> a bright left half."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, 2)) < 0.5
    img = rng.uniform(40, 120, (n, size, size, 3))
    img[y[:, 0], : size // 2] += 120
    img[y[:, 1], :, : size // 2] += 120
    return img.clip(0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def trained():
    cfg = clf.ClassifierConfig(classes=("top", "left"), width=8, time_dim=16, steps=150, batch_size=32)
    x, y = _separable(256, seed=0)
    state = torch.random.get_rng_state()
    model = clf.fit(cfg, x, y, AB)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is neither used nor moved
    return model


def test_fit_learns_a_separable_problem(trained):
    x, y = _separable(128, seed=1)
    clean = clf.accuracy(trained, x, y, AB, t=0, seed=0)
    assert clean["mean"] >= 0.9 and min(clean["per_class"].values()) >= 0.9, clean
    assert set(clean["per_class"]) == {"top", "left"} and clean["images"] == 128
    torch.manual_seed(0)
    untrained = clf.NoisyClassifier(trained.cfg).eval()
    assert clf.accuracy(untrained, x, y, AB, t=0, seed=0)["mean"] < 0.8
    # at the end of the schedule the image is almost pure noise: accuracy falls towards chance
    assert clf.accuracy(trained, x, y, AB, t=999, seed=0)["mean"] < clean["mean"]


def test_model_runs_at_16_32_64():
    model = clf.NoisyClassifier(clf.ClassifierConfig(classes=("a", "b", "c")))
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 300_000
    for size in (16, 32, 64):
        assert model(torch.zeros(2, 3, size, size), torch.tensor([0, 999])).shape == (2, 3)
    with pytest.raises(ValueError, match="width 12"):
        clf.ClassifierConfig(classes=("a",), width=12)


def test_log_prob_gradient_raises_log_prob_and_confidence(trained):
    x, y = _separable(8, seed=2)
    x0 = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    t = torch.full((8,), 100)
    x_t = clf.noise(x0, t, AB, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)))
    target = torch.tensor([[True, False]] * 8)
    x_t.requires_grad_(True)
    lp = clf.log_prob(trained, x_t, t, target)
    assert lp.shape == (8,) and bool((lp <= 0).all())
    (grad,) = torch.autograd.grad(lp.sum(), x_t)
    assert torch.isfinite(grad).all() and bool((grad.flatten(1).norm(dim=1) > 0).all())
    with torch.no_grad():
        step = x_t + 0.05 * grad / grad.flatten(1).norm(dim=1)[:, None, None, None]
        assert bool((clf.log_prob(trained, step, t, target) > lp).all())
        # no target: log p = 0 and confidence 1; with a target, confidence follows presence
        assert torch.equal(clf.log_prob(trained, x_t, t, torch.zeros(8, 2, dtype=torch.bool)), torch.zeros(8))
    assert torch.equal(clf.confidence(trained, x0, torch.zeros(8, 2, dtype=torch.bool)), torch.ones(8))
    conf = clf.confidence(trained, x0, target)
    yt = torch.from_numpy(y[:, 0])
    assert conf.shape == (8,) and bool((conf[yt] > 0.5).all()) and bool((conf[~yt] < 0.5).all())


def _train(model, corpus, out, *extra):
    argv = ["train-classifier", "--generator", str(model), "--data", str(corpus), "--out", str(out)]
    return main([*argv, "--steps", "3", "--device", "cpu", *extra])


def test_train_classifier_cli_writes_a_deterministic_loadable_folder(
    tiny32_model_dir, tw_corpus, tmp_path, capsys
):
    out = tmp_path / "clf"
    assert _train(tiny32_model_dir, tw_corpus, out) == 0
    printed = capsys.readouterr().out.splitlines()
    gen = load_generator(str(tiny32_model_dir), "cpu")
    loaded = load_classifier(out, gen)
    assert printed[0] == (
        f"wrote {out}: classifier {loaded.id} for {gen.id} (disk, square, triangle), "
        "36 training / 4 held-out images"
    )
    assert printed[1].split() == ["held-out", "accuracy", "t=0", "t=100", "t=300", "t=600"]
    assert [line.split()[0] for line in printed[2:]] == ["disk", "square", "triangle", "mean"]

    info = json.loads((out / "classifier.json").read_text())
    assert info["target_classes"] == ["disk", "square", "triangle"] == loaded.classes
    assert info["classes"] == ["background", "disk", "square", "triangle"]
    assert info["config"]["classes"] == info["target_classes"] and info["config"]["steps"] == 3
    assert info["generator_id"] == gen.id
    assert info["noise_schedule"] == noise_schedule(gen)
    assert info["noise_schedule"]["beta_schedule"] == "squaredcos_cap_v2"
    assert info["heldout_images"] == len(info["heldout_keys"]) == 4
    assert [r["t"] for r in info["heldout_accuracy"]] == [0, 100, 300, 600]
    for r in info["heldout_accuracy"]:
        assert set(r["per_class"]) == set(loaded.classes) and 0 <= r["mean"] <= 1 and r["images"] == 4
    assert loaded.id == clf.classifier_id(out) and loaded.id.startswith("classifier@")
    assert len(alphas_cumprod(gen)) == 1000
    logits = loaded.model(torch.zeros(1, 3, 32, 32), torch.tensor([5]))
    assert logits.shape == (1, 3)

    # the same seed gives the same held-out keys and the same weights, byte for byte
    assert _train(tiny32_model_dir, tw_corpus, tmp_path / "same", "--quiet") == 0
    assert capsys.readouterr().out == ""
    same = (tmp_path / "same" / "classifier.safetensors").read_bytes()
    assert same == (out / "classifier.safetensors").read_bytes()
    assert (
        json.loads((tmp_path / "same" / "classifier.json").read_text())["heldout_keys"]
        == info["heldout_keys"]
    )
    assert _train(tiny32_model_dir, tw_corpus, tmp_path / "other", "--quiet", "--seed", "1") == 0
    assert (tmp_path / "other" / "classifier.safetensors").read_bytes() != same


def test_load_classifier_refuses_another_noise_schedule(tiny32_model_dir, tw_corpus, tmp_path, capsys):
    out = tmp_path / "clf"
    assert _train(tiny32_model_dir, tw_corpus, out, "--quiet") == 0
    other = build_tiny_model(tmp_path / "linear", seed=3, size=32)
    cfg_file = other / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "beta_schedule": "linear"}))
    gen = load_generator(str(other), "cpu")
    with pytest.raises(UsageError, match="noise schedule squaredcos_cap_v2/1000 .* uses linear/1000") as e:
        load_classifier(out, gen)
    assert "\n" not in str(e.value)
    # another generator with the same schedule is fine: the classifier reads pixels, not features
    same_schedule = load_generator(str(build_tiny_model(tmp_path / "same", seed=4, size=32)), "cpu")
    assert load_classifier(out, same_schedule).classes == ["disk", "square", "triangle"]
    with pytest.raises(UsageError, match="is not a classifier folder"):
        load_classifier(tmp_path, gen)


@pytest.mark.parametrize(
    "case,needle",
    [
        ("nonempty", "is not an empty folder"),
        ("steps0", "--steps: 0 is not allowed"),
        ("one_image", "holds 1 image(s)"),
        ("size", "images are 32x32, generator model@"),
    ],
)
def test_bad_inputs_are_refused_and_write_nothing(
    case, needle, tiny32_model_dir, tiny_model_dir, tw_corpus, tmp_path, capsys
):
    model, corpus, out, extra = tiny32_model_dir, tw_corpus, tmp_path / "clf", []
    if case == "nonempty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "steps0":
        extra = ["--steps", "0"]
    elif case == "one_image":
        corpus = tmp_path / "one"
        write_toyworld(corpus, n=1, seed=0, quiet=True)
    else:
        model = tiny_model_dir  # 16x16
    before = tree_bytes(tmp_path)
    assert _train(model, corpus, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dpp train-classifier: error:") and needle in err[0], err
    assert tree_bytes(tmp_path) == before
    assert case == "nonempty" or not out.exists()


def test_a_dense_loss_learns_the_masks_beside_the_labels(tw_corpus, tmp_path):
    x, y = _separable(256, seed=0)
    masks = np.zeros(x.shape[:3], np.uint8)
    masks[y[:, 0], :8] = 1  # "top": the bright top half
    masks[y[:, 1], :, :8] = 2  # "left": the bright left half (drawn over top)
    cfg = clf.ClassifierConfig(
        ("top", "left"), width=8, time_dim=16, steps=150, batch_size=32, dense_weight=1.0
    )
    with pytest.raises(ValueError, match="needs one mask per image"):
        clf.fit(cfg, x, y, AB)
    model = clf.fit(cfg, x, y, AB, masks=masks)
    xt, yt = _separable(64, seed=1)
    mt = np.zeros(xt.shape[:3], np.uint8)
    mt[yt[:, 0], :8] = 1
    mt[yt[:, 1], :, :8] = 2
    assert clf.accuracy(model, xt, yt, AB, t=0, seed=0)["mean"] >= 0.9
    with torch.no_grad():
        _, pixels = model.dense_logits(clf._to_input(xt), torch.zeros(64, dtype=torch.long))
    assert pixels.shape == (64, 3, 4, 4)
    assert (pixels.argmax(1).numpy() == mt[:, 2::4, 2::4]).mean() >= 0.8  # it learned where, not only whether
    # the CLI: --dense-loss trains on the corpus's masks and the folder loads with its pixel head
    gen = load_generator("toyworld", "cpu")
    argv = ["train-classifier", "--data", str(tw_corpus), "--out", str(tmp_path / "c"), "--steps", "3"]
    assert main([*argv, "--dense-loss", "0.5", "--device", "cpu", "--quiet"]) == 0
    loaded = load_classifier(tmp_path / "c", gen)
    assert loaded.model.cfg.dense_weight == 0.5 and isinstance(loaded.model.dense, torch.nn.Conv2d)


def test_the_pixel_loss_is_on_by_default_and_can_be_turned_off(tiny32_model_dir, tw_corpus, tmp_path):
    gen = load_generator(str(tiny32_model_dir), "cpu")
    assert _train(tiny32_model_dir, tw_corpus, tmp_path / "default", "--quiet") == 0
    assert load_classifier(tmp_path / "default", gen).model.cfg.dense_weight == 1.0
    assert _train(tiny32_model_dir, tw_corpus, tmp_path / "off", "--no-dense-loss", "--quiet") == 0
    off = load_classifier(tmp_path / "off", gen).model
    assert off.cfg.dense_weight == 0.0 and not hasattr(off, "dense")
