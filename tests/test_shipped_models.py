"""The models the repository ships: the toy-world generator and the evaluation network."""

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from manifests.storage.reader import iter_samples
from pipeline.diffusion.latents import invert
from pipeline.diffusion.load import load_generator
from pipeline.diffusion.pixel import render_latents, sample
from pipeline.diffusion.samplers import DEFAULT_SCHEDULER, DEFAULT_STEPS
from pipeline.evaluation.evalnet import embed, heldout_metrics, load_evalnet
from pipeline.evaluation.generator_quality import drawn_as_asked, object_purity
from pipeline.realdata.ingest import write_toyworld


@pytest.fixture(scope="module")
def toyworld_gen():
    return load_generator("toyworld", device="cpu")


def test_shipped_generator_loads_offline_with_its_lineage(toyworld_gen):
    assert toyworld_gen.id.startswith("toyworld@") and toyworld_gen.image_shape == (3, 32, 32)
    info = toyworld_gen.info
    assert info["sample_generation"] == 1
    assert info["training_data"][0]["corpus_id"].startswith("toyworld-")
    assert info["trained_steps"] >= 1000


def test_sample_command_is_byte_identical_run_to_run(tmp_path):
    argv = ["sample", "--generator", "toyworld", "--n", "8", "--seed", "3", "--steps", "20", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    # another batch size: the same images up to float rounding (a pixel may land one level apart)
    assert main([*argv, "--out", str(tmp_path / "c"), "--batch-size", "3"]) == 0
    assert main([*argv, "--out", str(tmp_path / "d"), "--batch-size", "8"]) == 0
    for name in sorted(p.name for p in (tmp_path / "c").iterdir()):
        a = np.asarray(Image.open(tmp_path / "c" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "d" / name)).astype(int)
        assert np.abs(a - b).max() <= 1


def test_ddim_inversion_round_trip_reconstructs_toy_world_images(toyworld_gen, tmp_path):
    write_toyworld(tmp_path / "real", n=4, seed=11, quiet=True)
    real = np.stack([s.image for s in iter_samples(tmp_path / "real")])
    z = invert(toyworld_gen, real, steps=50)
    recon = render_latents(toyworld_gen, z, [0, 1, 2, 3], "ddim", 50, clip_sample=False)
    rmse = float(np.sqrt(np.mean((recon.astype(np.float64) - real) ** 2)))
    print(f"inversion round-trip RMSE (0-255): {rmse:.2f}")
    # measured (0-255 scale): 16.2 with the shipped 16,657-step model, 8.8 at 8,500 steps; a broken inversion
    # or loop gives tens of levels
    assert rmse < 24.0


def test_shipped_evalnet_segments_fresh_toy_world_images(tmp_path):
    net, cfg = load_evalnet()
    write_toyworld(tmp_path / "t", n=300, seed=12345, quiet=True)
    samples = list(iter_samples(tmp_path / "t"))
    m = heldout_metrics(net, cfg, np.stack([s.image for s in samples]), np.stack([s.mask for s in samples]))
    assert m["miou"] > 0.55 and min(m["presence_accuracy"].values()) > 0.6


def test_shipped_generator_draws_whole_shapes_of_the_class_asked(toyworld_gen):
    """The quality floor: 12 samples (4 of each class, the default sampler: DPM-Solver++ 20 steps, CFG 3),
    judged by the shipped evaluation network. Objects are found, each reads as one shape, and most samples
    show the class they were drawn as. Floors sit well below the measured figures (docs/generator.md), so
    a broken loop, label path, feature hook or weight file fails here, not a few points of drift."""
    classes = ["disk", "square", "triangle"] * 4
    images = sample(toyworld_gen, list(range(100, 112)), *SAMPLER, 12, classes=classes, cfg_scale=3.0)
    net, cfg = load_evalnet()
    _, masks = embed(net, cfg, images)
    objects = object_purity(masks, len(cfg.classes))
    asked = drawn_as_asked(masks, [cfg.classes.index(c) for c in classes])
    print(f"objects {len(objects)}, purity {objects[:, 0].mean():.3f}, drawn as asked {asked:.3f}")
    assert len(objects) >= PURITY_FLOOR["objects"]
    assert objects[:, 0].mean() >= PURITY_FLOOR["purity"]
    assert asked >= PURITY_FLOOR["asked"]
    # the label reaches the model: the same seeds drawn as other classes give other pictures
    shifted = sample(toyworld_gen, list(range(100, 103)), *SAMPLER, 3, classes=classes[1:4], cfg_scale=3.0)
    assert not np.array_equal(shifted, images[:3])


# measured on the shipped model (22,000 steps) with DPM-Solver++ 20: 12 objects, purity 0.966, drawn as asked
# 1.000 (DDIM 20: 12, 0.972, 1.000; at 16,657 steps, DDIM 20:
# 13, 0.962, 1.000; 8,500 steps: 13, 1.000, 0.917; the test prints its figures); an unconditional draw
# would be asked-for about 1 time in 3
PURITY_FLOOR = {"objects": 8, "purity": 0.8, "asked": 0.6}
SAMPLER = (DEFAULT_SCHEDULER, DEFAULT_STEPS[DEFAULT_SCHEDULER])
