"""Generator-quality metrics: k-NN precision/recall and Frechet distance, checked on known point sets."""

import numpy as np
import pytest

from manifests.errors import UsageError
from pipeline.evaluation.generator_quality import frechet_distance, knn_radii, precision_recall


def test_identical_sets_have_full_precision_and_recall_and_zero_distance():
    x = np.random.default_rng(0).normal(size=(200, 8))
    p, r = precision_recall(x, x.copy(), k=3)
    assert p == 1.0 and r == 1.0
    assert abs(frechet_distance(x, x.copy())) < 1e-8


def test_far_apart_sets_have_zero_precision_and_recall():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 100.0
    assert precision_recall(a, b, k=3) == (0.0, 0.0)


def test_mode_collapse_keeps_precision_but_loses_recall():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(400, 2))
    fake = rng.normal(size=(400, 2)) * 0.1  # all samples near one mode of the real data
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.9 and r < 0.3


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20000, 3))
    b = a + np.array([2.0, 0.0, 0.0])
    assert abs(frechet_distance(a, b) - 4.0) < 1e-6


def test_knn_radius_excludes_the_point_itself():
    x = np.array([[0.0], [1.0], [3.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 4.0]


def test_too_few_samples_for_k():
    with pytest.raises(UsageError, match="k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
