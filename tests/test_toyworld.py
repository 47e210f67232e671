import hashlib

import numpy as np
import pytest

from pipeline.realdata import toyworld
from pipeline.realdata.ingest import write_toyworld
from pipeline.seeds import sample_seed

STYLES = toyworld.STYLES


def test_textured_style_reproduces_the_first_worlds_bytes(tmp_path):
    """The textured world is the one every published result used: the same seed gives the same image and
    mask bytes as before flat existed (digest taken from the code at commit 8a5f535), and a textured
    corpus keeps its corpus id and shard digests."""
    h = hashlib.sha256()
    for size in (32, 64):
        for seed in range(25):
            sc = toyworld.render_scene(seed, size, "textured")
            h.update(sc.image.tobytes())
            h.update(sc.mask.tobytes())
    assert h.hexdigest() == "bc0aaf81bd125f811463d2f265763a19ec418160de25eb882be2b0bc9f01066b"
    rec = write_toyworld(tmp_path / "c", n=40, seed=7, shard_size=16, quiet=True, style="textured").record
    assert rec["corpus_id"] == "toyworld-fe658528f9b5ee48"
    assert [s["sha256"][:16] for s in rec["shards"]] == [
        "4cdd4549190d425b",
        "8432364d389567ca",
        "7cce69277414b4e8",
    ]
    assert "style" not in rec["config"]


def test_flat_is_the_default_and_is_recorded(tmp_path):
    a = toyworld.render_scene(5)
    b = toyworld.render_scene(5, 32, "flat")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    rec = write_toyworld(tmp_path / "c", n=3, seed=1, quiet=True).record
    assert rec["config"]["style"] == "flat"
    with pytest.raises(ValueError, match="'glossy'.*flat, textured"):
        toyworld.render_scene(1, 32, "glossy")


def test_flat_scenes_hold_one_class_each_and_every_class_appears():
    seen, counts = set(), set()
    for seed in range(300):
        s = toyworld.render_scene(seed, 32, "flat")
        present = set(np.unique(s.mask)) - {0}
        assert len(present) == 1
        counts.add(len(s.objects))
        seen |= present
    assert seen == {1, 2, 3} and counts == {1, 2, 3}


def test_flat_objects_are_flat_large_and_mostly_visible():
    """A flat object's pixels vary little (mild shading, little noise); every object keeps >= 60% of its
    area and is large (>= 130 px of its full shape at 32x32); occlusion happens."""
    occluded, spread = 0, []
    for seed in range(150):
        s = toyworld.render_scene(seed, 32, "flat")
        for _cls, full, visible in s.objects:
            assert visible >= 0.6 * full and full >= 130
            occluded += visible < full
        if len(s.objects) == 1:  # one object: its pixels are one colour, mildly shaded
            spread.append(s.image[s.mask != 0].std(axis=0).mean())
    assert occluded > 10
    assert np.median(spread) < 12  # out of 255; a textured object is far above


def test_same_seed_same_scene_different_seed_different_scene():
    a, b, c = toyworld.render_scene(11), toyworld.render_scene(11), toyworld.render_scene(12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("size", [32, 64])
def test_scene_shapes_and_mask_values(size, style):
    s = toyworld.render_scene(3, size, style)
    assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (size, size) and s.mask.dtype == np.uint8
    assert set(np.unique(s.mask)) <= set(range(len(toyworld.CLASSES)))


def test_unsupported_size_is_refused():
    with pytest.raises(ValueError, match="48"):
        toyworld.render_scene(1, 48)


def test_textured_scenes_have_one_to_three_objects_and_every_class_appears():
    seen = set()
    for seed in range(200):
        m = toyworld.render_scene(seed, 32, "textured").mask
        objects = set(np.unique(m)) - {0}
        assert 1 <= len(objects) <= 3
        seen |= objects
    assert seen == {1, 2, 3}


@pytest.mark.parametrize("style", STYLES)
def test_colour_is_no_cue_for_class(style):
    """Classes are told apart by shape: mean colour per class is the same up to sampling noise."""
    sums = {c: [] for c in range(4)}
    for seed in range(400):
        s = toyworld.render_scene(seed, 32, style)
        for c in np.unique(s.mask):
            sums[int(c)].append(s.image[s.mask == c].mean(axis=0))
    means = np.array([np.mean(sums[c], axis=0) for c in range(4)])
    assert np.abs(means - means.mean(axis=0)).max() < 12  # out of 255


@pytest.mark.parametrize("style", STYLES)
def test_occlusion_happens_and_every_object_stays_visible(style):
    occluded = 0
    for seed in range(100):
        s = toyworld.render_scene(seed, 32, style)
        assert 1 <= len(s.objects) <= 3
        for _cls, full, visible in s.objects:
            assert visible >= 0.3 * full and visible >= 6
            occluded += visible < full
        # The mask is exactly the union of what is visible, class by class.
        for cls in range(1, 4):
            assert (s.mask == cls).sum() == sum(v for c, _, v in s.objects if c == cls)
    assert occluded > 10


def test_sample_seed_is_a_pure_function():
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3)
    assert len({sample_seed(1, s, i) for s in range(10) for i in range(100)}) == 1000
    assert sample_seed(1, 0, 1) != sample_seed(2, 0, 1)
    with pytest.raises(ValueError):
        sample_seed(-1, 0, 0)


def test_cli_style_flag_picks_the_world_and_is_recorded(tmp_path):
    import json

    from flows.cli import main
    from manifests.storage.reader import iter_samples

    base = ["toyworld", "--n", "6", "--seed", "7", "--quiet"]
    for style in STYLES:
        assert main([*base, "--style", style, "--out", str(tmp_path / style)]) == 0
    flat = json.loads((tmp_path / "flat/corpus.json").read_text())
    textured = json.loads((tmp_path / "textured/corpus.json").read_text())
    assert flat["config"]["style"] == "flat" and "style" not in textured["config"]  # the first world's record
    assert flat["corpus_id"] != textured["corpus_id"]
    ref = write_toyworld(tmp_path / "ref", n=6, seed=7, quiet=True, style="textured").record
    assert textured["corpus_id"] == ref["corpus_id"] and textured["shards"] == ref["shards"]
    # the same seeds, other pictures: flat scenes hold one class each, textured ones are the old scenes
    a, b = list(iter_samples(tmp_path / "flat")), list(iter_samples(tmp_path / "textured"))
    assert [s.key for s in a] == [s.key for s in b]
    assert all(not np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert all(len(set(np.unique(s.mask)) - {0}) == 1 for s in a)
