"""dpp eval-seg: the fixed small segmenter learns from its training corpora and is scored on another."""

import json

from flows.cli import main


def test_eval_seg_learns(tw_corpus, tmp_path, capsys):
    from pipeline.realdata.ingest import write_toyworld

    test = tmp_path / "test"
    write_toyworld(test, n=30, seed=99, quiet=True)
    runs = {}
    for steps in (1, 150):
        assert (
            main(
                [
                    "eval-seg",
                    "--train",
                    str(tw_corpus),
                    "--test",
                    str(test),
                    "--steps",
                    str(steps),
                    "--json",
                    "--quiet",
                ]
            )
            == 0
        )
        runs[steps] = json.loads(capsys.readouterr().out)
    assert runs[150]["train_images"] == 40 and runs[150]["test_images"] == 30
    assert set(runs[150]["iou"]) == {"background", "disk", "square", "triangle"}
    assert runs[150]["miou"] > runs[1]["miou"] + 0.1
    assert runs[150]["iou"]["background"] > 0.8


def test_eval_seg_refuses_mixed_classes(tw_corpus, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "i/a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m/a.png")
    (tmp_path / "c.txt").write_text("bg\nthing\n")
    assert (
        main(
            [
                "ingest",
                "--images",
                str(tmp_path / "i"),
                "--masks",
                str(tmp_path / "m"),
                "--classes",
                str(tmp_path / "c.txt"),
                "--out",
                str(tmp_path / "other"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(["eval-seg", "--train", str(tw_corpus), "--test", str(tmp_path / "other"), "--steps", "1"]) == 2
    )
    assert "has classes" in capsys.readouterr().err


class _FixedLogits:
    """A segmenter whose per-pixel logits are given: pseudo-labelling worked out by hand."""

    def __init__(self, logits):
        import torch

        self.logits = torch.tensor(logits, dtype=torch.float32)

    def __call__(self, x):
        return None, self.logits[: len(x)]


def test_pseudo_labels_keep_confident_pixels_and_respect_tags():
    import numpy as np

    from pipeline.evaluation.segmentation import pseudo_labels

    ln = np.log
    # one image of 1x3 pixels, 3 classes: probabilities (0.9, 0.05, 0.05), (0.1, 0.5, 0.4), (0.2, 0.2, 0.6)
    logits = [[[[ln(0.9), ln(0.1), ln(0.2)]], [[ln(0.05), ln(0.5), ln(0.2)]], [[ln(0.05), ln(0.4), ln(0.6)]]]]
    images = np.zeros((1, 1, 3, 3), np.uint8)
    net = _FixedLogits(logits)
    assert pseudo_labels(net, images, 0.55).tolist() == [[[0, 255, 2]]]
    assert pseudo_labels(net, images, 0.5).tolist() == [[[0, 1, 2]]]
    # tagged "class 1 only": class 2 is ruled out and the rest renormalised:
    # pixel 2 -> (0.1, 0.5)/0.6 -> class 1 at 0.83; pixel 3 -> (0.2, 0.2)/0.4 -> a 0.5 tie, under 0.55
    allowed = np.array([[True, True, False]])
    assert pseudo_labels(net, images, 0.55, allowed).tolist() == [[[0, 1, 255]]]


def test_self_training_baseline_runs_and_reports(tw_corpus, tmp_path, capsys):
    from pipeline.realdata.ingest import write_toyworld

    test, shots = tmp_path / "test", tmp_path / "shots"
    write_toyworld(test, n=10, seed=99, quiet=True)
    write_toyworld(shots, n=4, seed=98, quiet=True)
    argv = ["eval-seg", "--train", str(shots), "--test", str(test), "--steps", "30"]
    assert (
        main([*argv, "--self-train", str(tw_corpus), "--tags", "--pseudo-threshold", "0.5", "--quiet"]) == 0
    )
    out = capsys.readouterr().out
    assert (
        "self-training: teacher mIoU" in out and "40 unlabeled images" in out and "within their tags" in out
    )
    # a threshold just above 1/4 (four classes): nearly every pixel is kept
    assert (
        main([*argv, "--self-train", str(tw_corpus), "--pseudo-threshold", "0.26", "--json", "--quiet"]) == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["train_images"] == 44 and res["unlabeled_images"] == 40 and res["tags"] is False
    assert 0.5 < res["pseudo_labeled_share"] <= 1.0 and res["pseudo_threshold"] == 0.26
    # the baseline's settings without the baseline: refused, not ignored
    assert main([*argv, "--tags"]) == 2
    assert "--tags is a setting of the self-training baseline" in capsys.readouterr().err


def test_threads_are_set_and_recorded(tw_corpus, tmp_path, capsys):
    """--threads pins torch's CPU threads (the last digits depend on them) and eval-seg records the count;
    the same count gives the same figures."""
    from pipeline.realdata.ingest import write_toyworld

    test = tmp_path / "test"
    write_toyworld(test, n=10, seed=99, quiet=True)
    argv = ["eval-seg", "--train", str(tw_corpus), "--test", str(test), "--steps", "20", "--quiet"]
    runs = []
    for threads in (1, 2, 1):
        assert main([*argv, "--threads", str(threads), "--json"]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert [r["torch_threads"] for r in runs] == [1, 2, 1]
    assert runs[0]["iou"] == runs[2]["iou"] and runs[0]["miou"] == runs[2]["miou"]
    assert main([*argv, "--threads", "1"]) == 0
    assert "20 steps, 1 torch thread;" in capsys.readouterr().out
