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
