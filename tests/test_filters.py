"""Keep rules: what each rule rejects, in which order, and the per-block rank rule."""

import numpy as np
import pytest

from manifests.errors import UsageError
from pipeline.filtering.rules import FilterRules, decide
from pipeline.filtering.scores import Scores, knn_distance, min_fragment, target_pixels


def _s(unc=0.1, tp=50, frag=50, conf=None, real=None, finite=True):
    return Scores(
        finite=finite, target_pixels=tp, min_fragment=frag, uncertainty=unc, confidence=conf, realism=real
    )


def test_rank_rule_drops_the_most_uncertain_of_each_block():
    rules = FilterRules(drop_fraction=0.25, block=8)
    block = [_s(unc=u) for u in (0.1, 0.9, 0.2, 0.3, 0.8, 0.05, 0.4, 0.5)]
    assert decide(rules, block) == [
        None,
        "uncertainty_rank",
        None,
        None,
        "uncertainty_rank",
        None,
        None,
        None,
    ]
    # ties go to the earlier candidate; no rank drops at 0
    assert decide(FilterRules(drop_fraction=0.5, block=2), [_s(0.3), _s(0.3)]) == ["uncertainty_rank", None]
    assert decide(FilterRules(drop_fraction=0.0), block) == [None] * 8


def test_each_rule_names_itself_first_failing_wins():
    rules = FilterRules(
        min_target_pixels=10,
        min_fragment_pixels=4,
        min_confidence=0.5,
        max_uncertainty=0.6,
        max_realism_distance=2.0,
        drop_fraction=0.0,
    )
    cases = [
        (_s(finite=False, tp=0), "non_finite"),
        (_s(tp=9, frag=1), "target_missing"),
        (_s(frag=3), "fragments"),
        (_s(conf=0.4, unc=0.9), "classifier_confidence"),
        (_s(unc=0.7), "label_uncertainty"),
        (_s(real=2.5), "realism"),
        (_s(conf=0.6, real=1.0, frag=4, tp=10), None),
    ]
    assert decide(rules, [c for c, _ in cases]) == [r for _, r in cases]
    # a rule that is off rejects nothing
    assert decide(FilterRules(min_target_pixels=0, drop_fraction=0.0), [_s(tp=0, unc=5.0)]) == [None]


def test_mask_measures():
    m = np.zeros((8, 8), np.uint8)
    m[1:4, 1:4] = 1  # 9 px
    m[6, 6] = 2  # 1 px of another class
    m[5, 0:2] = 1  # 2 px, not touching the first square
    m[0, 7] = 255  # ignore is no object
    assert min_fragment(m) == 1 and target_pixels(m, [1]) == 11 and target_pixels(m, []) == 12
    m[6, 6] = 0
    assert min_fragment(m) == 2
    assert min_fragment(np.zeros((4, 4), np.uint8)) is None
    # two classes touching are two regions
    t = np.zeros((4, 4), np.uint8)
    t[:, :2], t[:, 2:] = 1, 2
    assert min_fragment(t) == 8


def test_knn_distance():
    ref = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    q = np.array([[0.0, 0.0], [10.0, 0.0]])
    d = knn_distance(q, ref, k=2)
    assert d[0] == pytest.approx(0.5) and d[1] == pytest.approx((9 + 10) / 2)
    assert knn_distance(ref, ref, k=1, exclude_self=True)[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kw,needle",
    [({"drop_fraction": 1.0}, "--drop-fraction 1.0"), ({"block": 0}, "--filter-block 0"),
     ({"min_confidence": 1.5}, "--min-confidence 1.5")],
)  # fmt: skip
def test_bad_rules_are_named(kw, needle):
    with pytest.raises(UsageError, match=needle):
        FilterRules(**kw)
