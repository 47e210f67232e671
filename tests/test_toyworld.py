import numpy as np
import pytest

from pipeline import toyworld
from pipeline.seeds import sample_seed


def test_same_seed_same_scene_different_seed_different_scene():
    a, b, c = toyworld.render_scene(11), toyworld.render_scene(11), toyworld.render_scene(12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("size", [32, 64])
def test_scene_shapes_and_mask_values(size):
    s = toyworld.render_scene(3, size)
    assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (size, size) and s.mask.dtype == np.uint8
    assert set(np.unique(s.mask)) <= set(range(len(toyworld.CLASSES)))


def test_unsupported_size_is_refused():
    with pytest.raises(ValueError, match="48"):
        toyworld.render_scene(1, 48)


def test_scenes_have_one_to_three_objects_and_every_class_appears():
    seen = set()
    for seed in range(200):
        m = toyworld.render_scene(seed).mask
        objects = set(np.unique(m)) - {0}
        assert 1 <= len(objects) <= 3
        seen |= objects
    assert seen == {1, 2, 3}


def test_colour_is_no_cue_for_class():
    """Classes are told apart by shape: mean colour per class is the same up to sampling noise."""
    sums = {c: [] for c in range(4)}
    for seed in range(400):
        s = toyworld.render_scene(seed)
        for c in np.unique(s.mask):
            sums[int(c)].append(s.image[s.mask == c].mean(axis=0))
    means = np.array([np.mean(sums[c], axis=0) for c in range(4)])
    assert np.abs(means - means.mean(axis=0)).max() < 12  # out of 255


def test_occlusion_happens_and_every_object_stays_visible():
    occluded = 0
    for seed in range(100):
        s = toyworld.render_scene(seed)
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
