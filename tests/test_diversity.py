"""The diversity figure (Vendi score under the cosine kernel) on embeddings with a known answer, and per
generation on corpora in the evaluation network's embedding."""

import numpy as np
import pytest

from pipeline.evaluation.diversity import corpus_diversity, vendi_score

from .test_mix import constructed


def test_identical_vectors_score_one():
    assert vendi_score(np.tile([0.3, -1.2, 2.0], (25, 1))) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("n, d", [(1, 1), (5, 5), (7, 64), (64, 64)])
def test_orthogonal_unit_vectors_score_n(n, d):
    rng = np.random.default_rng(n)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # orthonormal columns, in no special direction
    assert vendi_score(q.T[:n]) == pytest.approx(n, rel=1e-9)


@pytest.mark.parametrize("k, size", [(2, 10), (3, 7), (5, 40)])
def test_k_equal_orthogonal_groups_score_k(k, size):
    rng = np.random.default_rng(k)
    basis, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    x = np.repeat(basis.T[:k], size, axis=0)  # n = k * size rows, k distinct directions
    assert vendi_score(x) == pytest.approx(k, rel=1e-9)


def test_unequal_groups_score_between_one_and_k():
    x = np.repeat(np.eye(3), [30, 5, 5], axis=0)  # one dominant group
    assert 1.0 < vendi_score(x) < 3.0


def test_scaling_rows_changes_nothing():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    scale = rng.uniform(0.01, 100.0, size=(50, 1))
    assert vendi_score(x * scale) == pytest.approx(vendi_score(x), rel=1e-12)
    assert 1.0 < vendi_score(x) <= 8.0 + 1e-9  # at most the dimension


@pytest.mark.parametrize(
    "x, needle",
    [
        (np.zeros((0, 4)), "not allowed; give a non-empty (n, d) matrix"),
        (np.ones(4), "not allowed; give a non-empty (n, d) matrix"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), "row 1 is all zeros"),
        (np.array([[1.0, np.nan]]), "NaN or infinite"),
    ],
)
def test_bad_embeddings_are_refused(x, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        vendi_score(x)


def test_corpus_diversity_per_generation_on_the_first_images_by_key(tw_corpus):
    full = corpus_diversity(tw_corpus)
    assert full["note"] is None and full["measure"] == "vendi" and full["space"] == "toyworld-evalnet"
    g0 = full["per_generation"]["0"]
    assert g0["images"] == 40 and 1.5 < g0["vendi"] < 4.0  # about three kinds of scene: the three shapes
    assert corpus_diversity(tw_corpus) == full  # deterministic
    few = corpus_diversity(tw_corpus, max_images=1)
    assert few["per_generation"]["0"] == {"vendi": 1.0, "images": 1}


def test_corpus_the_network_cannot_judge_is_not_available(tmp_path):
    small = constructed(tmp_path / "small", 4, "real", 0, "small")  # 8x8 images
    div = corpus_diversity(small)
    assert div["per_generation"] == {}
    assert div["note"] == "not available: the corpus holds 8x8 images; the evaluation network judges 32x32"


def test_corpus_with_other_classes_is_not_available(tmp_path):
    from manifests.storage.staged import CorpusSample, write_corpus

    def samples():
        for i in range(3):
            meta = {"origin": "real", "generation": 0, "source": "cats"}
            image, mask = np.full((32, 32, 3), 9 * i, np.uint8), np.zeros((32, 32), np.uint8)
            yield CorpusSample(f"cat-{i}", image, mask, meta, {"source": "cats"})

    classes = ["background", "cat"]
    write_corpus(tmp_path / "cats", samples, 3, classes, {"kind": "cats"}, "cats", shard_size=8, quiet=True)
    div = corpus_diversity(tmp_path / "cats")
    assert div["per_generation"] == {} and div["note"].startswith(
        "not available: the corpus's classes (background, cat) are not the evaluation network's "
        "(background, disk"
    )
