"""benchmarks/generator_report.py: a written table reads back into its rows, so adding a row whose
neighbours' stored JSON is gone (a fresh clone) never drops them from docs/generator.md."""

from .conftest import load_script


def _row(name, **extra):
    three = {"disk": 0.31, "square": 0.35, "triangle": 0.33}
    return {
        "name": name, "generator": "toyworld@0123456789ab", "recipe_note": "a row",
        "command": f"--name {name}",
        "eval_seconds": 12, "source": "toyworld", "trained_steps": 22000, "train_minutes": 318.0, "n": 1000,
        "ddim_steps": 20, "scheduler": "dpm", "cfg_scale": 3.0, "precision": 0.858, "recall": 0.86,
        "frechet_distance": 0.017, "drawn_as_asked": 0.988, "shape_purity_generated": 1.0,
        "shape_purity_real": 0.999, "class_share_generated": three, "class_share_real": three,
        "object_share_generated": three, "object_share_real": three, **extra,
    }  # fmt: skip


def test_a_written_table_reads_back_into_the_same_table(tmp_path):
    g = load_script("generator_report")
    real = _row(
        "real-vs-real", generator="real images, dpp toyworld --seed 2", source="real", trained_steps=None,
        train_minutes=None, ddim_steps=None, cfg_scale=None, drawn_as_asked=None,
    )  # fmt: skip
    rows = [_row("a"), _row("b", scheduler="ddim", ddim_steps=50, precision=0.784), real]
    text = g.table(rows)
    back = g.rows_from_section(text)
    assert [r["name"] for r in back] == ["a", "b", "real-vs-real"]
    assert back[0]["scheduler"] == "dpm" and back[1]["scheduler"] == "ddim" and back[2]["source"] == "real"
    assert back[1]["precision"] == 0.784 and back[2]["ddim_steps"] is None
    assert g.table(back) == text
    # a new row measured into an empty work folder keeps the rows already in the docs
    out = tmp_path / "generator.md"
    out.write_text("# Generator\n\n" + text)
    assert g.main(["--work", str(tmp_path / "w"), "--out", str(out), "--table-only"]) == 0
    assert out.read_text() == "# Generator\n\n" + text
