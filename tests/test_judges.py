"""Known-answer tests for the judges behind the headline figures: mIoU (pipeline/evaluation/metrics.py,
used by eval-seg, eval-labeler and the evaluation network's held-out figures), the "target present"
rule (evalnet.presence / predicted_presence) and shape purity (generator_quality.object_purity), each on
small constructed masks whose answer is worked out by hand in the comments."""

import numpy as np
import pytest

from pipeline.evaluation.evalnet import EvalNetConfig, presence
from pipeline.evaluation.generator_quality import drawn_as_asked, object_purity
from pipeline.evaluation.metrics import IGNORE, IoU, iou_report

CLASSES = ("background", "disk", "square", "triangle")


def test_miou_of_a_hand_worked_example():
    truth = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [2, 2, 0, 0],
            [2, 2, 0, 0],
        ]
    )
    pred = np.array(
        [
            [0, 0, 1, 0],  # one disk pixel predicted as background
            [0, 0, 1, 1],
            [2, 1, 0, 0],  # one square pixel predicted as disk
            [2, 2, 0, 0],
        ]
    )
    # background: truth 8 px, pred 9 px, both 8 -> 8/9; disk: truth 4, pred 4, both 3 -> 3/5;
    # square: truth 4, pred 3, both 3 -> 3/4; triangle: in neither -> no IoU, left out of the mean
    r = iou_report(pred, truth, CLASSES)
    assert r["iou"]["background"] == pytest.approx(8 / 9)
    assert r["iou"]["disk"] == pytest.approx(3 / 5)
    assert r["iou"]["square"] == pytest.approx(3 / 4)
    assert r["iou"]["triangle"] is None
    assert r["miou"] == pytest.approx((8 / 9 + 3 / 5 + 3 / 4) / 3)


def test_ignore_pixels_count_for_no_class():
    truth = np.array([[1, 1, IGNORE, IGNORE]])
    pred = np.array([[1, 1, 1, 0]])  # whatever is predicted on ignore pixels does not count
    r = iou_report(pred, truth, CLASSES[:2])
    assert r["iou"] == {"background": None, "disk": 1.0}
    assert r["miou"] == 1.0


def test_a_class_only_predicted_or_only_true_scores_zero_and_counts():
    truth = np.array([[0, 0, 0, 0]])
    pred = np.array([[0, 0, 0, 3]])  # a triangle pixel that is not there: background 3/4, triangle 0/1
    r = iou_report(pred, truth, CLASSES)
    assert r["iou"] == {"background": 0.75, "disk": None, "square": None, "triangle": 0.0}
    assert r["miou"] == pytest.approx(0.375)
    r = iou_report(truth, pred, CLASSES)  # missed rather than invented: the same figures
    assert r["miou"] == pytest.approx(0.375)


def test_iou_is_summed_over_images_not_averaged_per_image():
    # image 1: disk 1 of 1 pixel right (IoU 1); image 2: disk 1 of 3 right (IoU 1/3).
    # Per-image mean would be 2/3; summed: intersections 1 + 1, unions 1 + 3 -> 2/4.
    acc = IoU(2)
    acc.add(np.array([[1, 0, 0, 0]]), np.array([[1, 0, 0, 0]]))
    acc.add(np.array([[1, 0, 0, 0]]), np.array([[1, 1, 1, 0]]))
    assert acc.per_class()[1] == pytest.approx(0.5)
    # background: image 1: 3/3; image 2: pred {1,2,3}, truth {3} -> 1/3; summed 4/6
    assert acc.per_class()[0] == pytest.approx(4 / 6)
    assert acc.mean() == pytest.approx((0.5 + 4 / 6) / 2)


def test_iou_refuses_masks_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        IoU(2).add(np.zeros((2, 2)), np.zeros((2, 3)))


def test_presence_counts_pixels_per_class_against_the_floor():
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, :2, :3] = 1  # 6 disk pixels
    masks[0, 5:, 5:] = 3  # 9 triangle pixels
    masks[1, 0, :5] = 2  # 5 square pixels
    got = presence(masks, 4, min_pixels=6)
    # columns: disk, square, triangle (background is never "present")
    assert got.tolist() == [[True, False, True], [False, False, False]]
    assert presence(masks, 4, min_pixels=5)[1].tolist() == [False, True, False]


def test_the_presence_floor_scales_with_the_image_area():
    # predicted_presence's floor is cfg.min_pixels at 32x32, scaled by area: 30 px -> 120 px at 64x64
    cfg = EvalNetConfig()
    assert cfg.min_pixels == 30
    assert max(1, round(cfg.min_pixels * 64 * 64 / 1024)) == 120


def test_object_purity_of_hand_built_objects():
    m = np.zeros((1, 32, 32), np.uint8)
    m[0, 0:4, 0:5] = 1  # object A: 20 px, 15 disk + 5 square -> purity 0.75, majority disk
    m[0, 3, 0:5] = 2
    m[0, 10:14, 10:14] = 3  # object B: 16 px of triangle -> purity 1.0
    m[0, 20:22, 20:25] = 2  # 10 px: under the 12-px floor, not an object
    m[0, 30, 30] = 1  # 1 px: not an object
    rows = object_purity(m, 4)
    assert rows.tolist() == [[0.75, 1.0], [1.0, 3.0]]


def test_object_purity_uses_4_connectivity_and_scales_its_floor():
    m = np.zeros((1, 32, 32), np.uint8)
    m[0, 0:3, 0:3] = 1  # 9 px
    m[0, 3:6, 3:6] = 1  # 9 px touching the first only at a corner: two objects, both under 12
    assert object_purity(m, 4).shape == (0, 2)
    m[0, 2, 3] = 1  # now 4-connected: one object of 19 px
    assert object_purity(m, 4).tolist() == [[1.0, 1.0]]
    big = np.kron(m, np.ones((1, 2, 2), np.uint8))  # 64x64: the floor is 48 px, the object 76 px
    assert object_purity(big, 4).tolist() == [[1.0, 1.0]]
    assert object_purity(big, 4, min_pixels=20).shape == (0, 2)  # floor 80 > 76


def test_drawn_as_asked_takes_the_most_frequent_object_class():
    m = np.zeros((3, 4, 4), np.uint8)
    m[0, 0, :3] = 1
    m[0, 1, 0] = 2  # disk 3 px beats square 1 px
    m[1, :2, :2] = 3  # only triangle
    # image 2 holds no object: a miss whatever was asked
    assert drawn_as_asked(m, [1, 2, 1]) == pytest.approx(1 / 3)
    assert drawn_as_asked(m, [1, 3, 1]) == pytest.approx(2 / 3)
