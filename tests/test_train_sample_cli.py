"""dpp train-generator (resumable, exact), dpp sample and dpp eval-generator on small real models."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from flows.cli import main
from pipeline.diffusion.load import load_generator
from pipeline.diffusion.train import TrainConfig, _lr_at


def _train(corpus, out, steps, *extra):
    return main(
        [
            "train-generator",
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--batch-size",
            "4",
            "--quiet",
            *extra,
        ]
    )


def test_training_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tw_corpus, tmp_path):
    assert _train(tw_corpus, tmp_path / "a", 4) == 0
    assert _train(tw_corpus, tmp_path / "b", 2) == 0
    assert _train(tw_corpus, tmp_path / "b", 4, "--resume") == 0
    wa = load_file(tmp_path / "a/unet/diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b/unet/diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    info = json.loads((tmp_path / "b/dpp_generator.json").read_text())
    assert info["trained_steps"] == 4 and info["sample_generation"] == 1
    assert info["training_data"][0]["per_generation"] == {"0": 40}
    g = load_generator(str(tmp_path / "b"), device="cpu")  # the export is a loadable diffusers folder
    assert g.image_shape == (3, 32, 32) and g.info["trained_steps"] == 4


def test_learning_rate_warms_up_holds_and_cools_down_to_zero():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, decay_from=60)
    assert _lr_at(cfg, 0) == pytest.approx(0.1) and _lr_at(cfg, 9) == 1.0
    assert _lr_at(cfg, 59) == 1.0 and _lr_at(cfg, 60) == 1.0
    assert _lr_at(cfg, 80) == pytest.approx(0.5) and _lr_at(cfg, 99) == pytest.approx(0.025)
    assert _lr_at(TrainConfig(steps=100, warmup=10, lr=1.0), 99) == 1.0  # no cool-down by default


def test_a_cool_down_added_on_resume_equals_one_planned_from_the_start(tw_corpus, tmp_path, capsys):
    assert _train(tw_corpus, tmp_path / "a", 5, "--decay-from", "3") == 0
    assert _train(tw_corpus, tmp_path / "b", 3) == 0  # constant rate so far
    assert _train(tw_corpus, tmp_path / "b", 5, "--decay-from", "3", "--resume") == 0
    wa = load_file(tmp_path / "a/unet/diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b/unet/diffusion_pytorch_model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert json.loads((tmp_path / "b/dpp_generator.json").read_text())["recipe"]["decay_from"] == 3
    # a cool-down that would start before the checkpoint's step would rewrite the past: refused
    assert _train(tw_corpus, tmp_path / "c", 3) == 0
    assert _train(tw_corpus, tmp_path / "c", 5, "--decay-from", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert "is at step 3" in err and "start a cool-down at a step >= 3" in err


def test_train_generator_refuses_a_used_folder_and_a_missing_checkpoint(tw_corpus, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used/x").write_text("x")
    assert _train(tw_corpus, tmp_path / "used", 2) == 2
    assert "is not empty" in capsys.readouterr().err
    assert _train(tw_corpus, tmp_path / "new", 2, "--resume") == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert _train(tw_corpus, tmp_path / "new2", 2, "--size", "64") == 2
    assert "does not match the corpus images" in capsys.readouterr().err


def test_sample_sheet_is_byte_identical_across_runs_and_batch_sizes(tiny_model_dir, tmp_path):
    base = [
        "sample",
        "--generator",
        str(tiny_model_dir),
        "--n",
        "6",
        "--seed",
        "3",
        "--steps",
        "3",
        "--quiet",
    ]
    assert main([*base, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*base, "--out", str(tmp_path / "b.png"), "--batch-size", "2"]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert main([*base, "--out", str(tmp_path / "dir")]) == 0
    files = sorted(p.name for p in (tmp_path / "dir").iterdir())
    assert files == [f"s3-000000-{i:06d}.png" for i in range(6)]
    assert np.asarray(Image.open(tmp_path / "dir" / files[0])).shape == (16, 16, 3)


def test_sample_interp_strip_and_views(tiny_model_dir, tmp_path, capsys):
    from pipeline.realdata.ingest import write_toyworld

    base = ["sample", "--generator", str(tiny_model_dir), "--seed", "1", "--steps", "2"]
    assert main([*base, "--n", "5", "--op", "interp", "--out", str(tmp_path / "s.png"), "--quiet"]) == 0
    w, h = Image.open(tmp_path / "s.png").size
    assert w > 4 * h  # one row
    # views need a real corpus of the generator's size: a 16x16 one can't come from the toy world,
    # so a mismatched one must be refused clearly
    write_toyworld(tmp_path / "real", n=2, seed=1, quiet=True)
    code = main(
        [
            *base,
            "--n",
            "3",
            "--op",
            "views",
            "--real",
            str(tmp_path / "real"),
            "--out",
            str(tmp_path / "v.png"),
        ]
    )
    assert code == 2 and "do not fit this generator" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--op", "interp", "--n", "1"], "needs at least 2"),
        (["--op", "views", "--n", "2"], "needs --real"),
        (["--n", "2", "--truncation", "-1"], "--truncation -1.0"),
        (["--n", "2", "--generator", "no/such/dir/x"], "no such folder"),
        (["--n", "2", "--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_sample_bad_arguments(tiny_model_dir, tmp_path, capsys, extra, needle):
    argv = [
        "sample",
        "--generator",
        str(tiny_model_dir),
        "--seed",
        "1",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "x.png"),
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_sample_keeps_an_existing_different_picture_unless_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "a.png"
    base = [
        "sample",
        "--generator",
        str(tiny_model_dir),
        "--n",
        "2",
        "--steps",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main([*base, "--seed", "1"]) == 0
    first = out.read_bytes()
    assert main([*base, "--seed", "1"]) == 0  # same picture again: fine, untouched
    assert main([*base, "--seed", "2"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == first
    assert main([*base, "--seed", "2", "--overwrite"]) == 0 and out.read_bytes() != first


def test_lr_and_snr_gamma_change_the_weights_and_are_recorded(tw_corpus, tmp_path):
    runs = {"default": [], "lr": ["--lr", "1e-3"], "snr": ["--snr-gamma", "5"]}
    weights, recipes = {}, {}
    for name, extra in runs.items():
        assert _train(tw_corpus, tmp_path / name, 2, *extra) == 0
        weights[name] = load_file(tmp_path / name / "unet/diffusion_pytorch_model.safetensors")
        recipes[name] = json.loads((tmp_path / name / "dpp_generator.json").read_text())["recipe"]
    assert (recipes["default"]["lr"], recipes["default"]["snr_gamma"]) == (6e-4, 0.0)
    assert (recipes["lr"]["lr"], recipes["lr"]["snr_gamma"]) == (1e-3, 0.0)
    assert (recipes["snr"]["lr"], recipes["snr"]["snr_gamma"]) == (6e-4, 5.0)
    ref = weights["default"]
    for name in ("lr", "snr"):  # the same seed and batches: only the flag can move the weights
        assert weights[name].keys() == ref.keys()
        assert any(not (weights[name][k] == ref[k]).all() for k in ref), name


def test_time_limit_stops_early_after_a_checkpoint(tw_corpus, tmp_path, capsys):
    import re

    out = tmp_path / "t"
    argv = ["train-generator", "--data", str(tw_corpus), "--out", str(out), "--steps", "5"]
    argv += ["--batch-size", "4"]
    assert main([*argv, "--time-limit", "0.0001"]) == 0  # 6 ms: over after the first step
    said = capsys.readouterr().out
    m = re.search(r"stopped at the time limit \(resume with --resume\): step (\d+)/5", said)
    assert m and 1 <= int(m.group(1)) < 5, said
    step = int(m.group(1))
    assert json.loads((out / "dpp_generator.json").read_text())["trained_steps"] == step
    assert json.loads((out / "checkpoint/state.json").read_text())["step"] == step
    assert main([*argv, "--resume"]) == 0  # the rest of the steps, without a limit
    assert "finished: step 5/5" in capsys.readouterr().out


def test_sample_views_index_picks_the_real_image(tiny32_model_dir, tw_corpus, tmp_path, capsys):
    base = ["sample", "--generator", str(tiny32_model_dir), "--seed", "1", "--steps", "2", "--n", "2"]
    base += ["--op", "views", "--real", str(tw_corpus), "--quiet"]
    pictures = {}
    for name, extra in (("default", []), ("0", ["--index", "0"]), ("5", ["--index", "5"])):
        assert main([*base, *extra, "--out", str(tmp_path / f"{name}.png")]) == 0
        pictures[name] = (tmp_path / f"{name}.png").read_bytes()
    assert pictures["default"] == pictures["0"] and pictures["5"] != pictures["0"]
    assert main([*base, "--index", "40", "--out", str(tmp_path / "x.png")]) == 2  # 40 samples: 0..39
    assert "--index 40 is out of range" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
