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


def test_refilter_flags_set_and_drop_rules(tiny32_model_dir, labeler_dir, tw_corpus, tmp_path):
    """`dpp refilter` on stored scores: --max-uncertainty and --min-fragment-pixels add rules, and each
    --no-* flag drops a rule the source corpus was generated with."""
    from flows.cli import main
    from manifests.format.record import load_corpus

    from .test_generate_filters import _gen, _rows

    clf = tmp_path / "clf"
    argv = ["train-classifier", "--generator", str(tiny32_model_dir), "--data", str(tw_corpus)]
    assert main([*argv, "--steps", "3", "--out", str(clf), "--quiet"]) == 0
    scored = ["--classes", "disk,square", "--classifier", str(clf), "--real", str(tw_corpus)]
    scored += ["--drop-fraction", "0", "--keep-rejected"]
    # every candidate passes (no score rules): one block of 4, all kept, all scored
    assert _gen(tiny32_model_dir, labeler_dir, tmp_path / "all", *scored) == 0
    rows = sorted(_rows(tmp_path / "all"), key=lambda r: r["index_in_shard"])
    assert [r["kept"] for r in rows] == [True] * 4

    def refilter(src: str, out: str, *flags) -> list[dict]:
        assert main(["refilter", str(tmp_path / src), "--out", str(tmp_path / out), "--quiet", *flags]) == 0
        return sorted(_rows(tmp_path / out), key=lambda r: r["index_in_shard"])

    def between(values, i):  # a threshold between the i-th and (i+1)-th smallest value
        v = sorted(values)
        return (v[i] + v[i + 1]) / 2

    # adding rules: the two most uncertain candidates are rejected by --max-uncertainty
    unc = between([r["label_uncertainty"] for r in rows], 1)
    out = refilter("all", "unc", "--max-uncertainty", str(unc))
    want = ["label_uncertainty" if r["label_uncertainty"] > unc else None for r in rows]
    assert [r["reject_reason"] for r in out] == want and sum(r["kept"] for r in out) == 2
    assert load_corpus(tmp_path / "unc")["config"]["rules"]["max_uncertainty"] == unc
    frag = min(r["min_fragment_pixels"] for r in rows)  # the smallest object region of any mask
    assert all(r["kept"] for r in refilter("all", "frag-ok", "--min-fragment-pixels", str(frag)))
    out = refilter("all", "frag", "--min-fragment-pixels", str(frag + 1))
    assert [r["reject_reason"] == "fragments" for r in out] == [
        r["min_fragment_pixels"] == frag for r in rows
    ]
    assert load_corpus(tmp_path / "frag")["config"]["rules"]["min_fragment_pixels"] == frag + 1

    # a source generated with three score rules, each rejecting one of the first block's candidates (the
    # same seeds as above): the least confident, then the most uncertain and the least real of the rest
    by = {r["index_in_shard"]: r for r in rows}
    left = set(by)
    worst_conf = min(left, key=lambda i: by[i]["classifier_confidence"])
    conf = between([r["classifier_confidence"] for r in rows], 0)
    left.remove(worst_conf)
    worst_unc = max(left, key=lambda i: by[i]["label_uncertainty"])
    unc = between([by[i]["label_uncertainty"] for i in left], len(left) - 2)
    left.remove(worst_unc)
    worst_real = max(left, key=lambda i: by[i]["realism_distance"])
    real = between([by[i]["realism_distance"] for i in left], len(left) - 2)
    rules = ["--min-confidence", str(conf), "--max-uncertainty", str(unc)]
    rules += ["--max-realism-distance", str(real)]
    assert _gen(tiny32_model_dir, labeler_dir, tmp_path / "strict", *scored, *rules) == 0
    strict = _rows(tmp_path / "strict")
    first = {r["index_in_shard"]: r["reject_reason"] for r in strict if r["index_in_shard"] < 4}
    assert (first[worst_conf], first[worst_unc], first[worst_real]) == (
        "classifier_confidence",
        "label_uncertainty",
        "realism",
    )
    source_rules = load_corpus(tmp_path / "strict")["config"]["rules"]
    for flag, rule, reason in (
        ("--no-min-confidence", "min_confidence", "classifier_confidence"),
        ("--no-max-uncertainty", "max_uncertainty", "label_uncertainty"),
        ("--no-max-realism-distance", "max_realism_distance", "realism"),
    ):
        out = refilter("strict", rule, flag)
        assert reason not in {r["reject_reason"] for r in out}, flag
        assert load_corpus(tmp_path / rule)["config"]["rules"] == {**source_rules, rule: None}
    # all three dropped: the first four candidates pass, as in the run without those rules, byte for byte
    out = refilter(
        "strict", "none", "--no-min-confidence", "--no-max-uncertainty", "--no-max-realism-distance"
    )
    assert [r["index_in_shard"] for r in out if r["kept"]] == [0, 1, 2, 3]
    shard = "shards/shard-000000.tar"
    assert (tmp_path / "none" / shard).read_bytes() == (tmp_path / "all" / shard).read_bytes()
