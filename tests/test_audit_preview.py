"""dpp audit counts from the manifests, per class and generation; dpp preview draws a contact sheet."""

import numpy as np
import pytest
from PIL import Image

from manifests.audit import audit, format_audit
from manifests.errors import UsageError
from manifests.preview import PALETTE, write_preview
from manifests.storage.reader import iter_samples
from pipeline.realdata.ingest import write_toyworld


def test_per_class_counts_match_the_masks(tw_corpus):
    result = audit([tw_corpus])
    images = {c: 0 for c in ("background", "disk", "square", "triangle")}
    pixels = dict(images)
    for s in iter_samples(tw_corpus):
        for v in np.unique(s.mask):
            name = list(images)[v]
            images[name] += 1
            pixels[name] += int((s.mask == v).sum())
    for c in images:
        assert result["per_class"][c]["images"] == {"real": images[c], "synthetic": 0}
        assert result["per_class"][c]["pixels"] == {"real": pixels[c], "synthetic": 0}
    assert result["per_generation"] == {"0": 40} and result["per_source"] == {"toyworld": 40}


def test_combined_view_of_several_corpora(tw_corpus, tmp_path):
    other = tmp_path / "b"
    write_toyworld(other, n=10, seed=99, quiet=True)
    result = audit([tw_corpus, other])
    assert result["total"] == 50 and result["real"] == 50 and len(result["corpora"]) == 2
    assert [c["total"] for c in result["corpora"]] == [40, 10]
    text = format_audit(result)
    assert "combined" in text and "triangle" in text
    assert not result["warnings"]
    assert audit([tw_corpus, tw_corpus])["warnings"]  # the same corpus twice is called out


def test_newer_schema_version_is_refused(tw_copy):
    import json

    rec = json.loads((tw_copy / "corpus.json").read_text())
    rec["schema_version"] = 99
    (tw_copy / "corpus.json").write_text(json.dumps(rec))
    with pytest.raises(UsageError, match="schema_version 99"):
        audit([tw_copy])


def test_preview_shows_images_masks_and_legend(tw_corpus, tmp_path):
    out = tmp_path / "p.png"
    assert write_preview(tw_corpus, out, n=12) == 12
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape[0] > 96 and sheet.shape[1] > 8 * 96
    colours = {tuple(c) for c in sheet.reshape(-1, 3)}
    for idx in range(4):  # every class colour is drawn (masks and legend)
        assert tuple(int(v) for v in PALETTE[idx]) in colours
    with pytest.raises(UsageError, match="must end in .png"):
        write_preview(tw_corpus, tmp_path / "p.jpg")


def test_min_real_warns_below_the_minimum_and_is_recorded(tw_corpus, capsys):
    import json

    from flows.cli import main

    def report(*flags) -> dict:
        assert main(["audit", str(tw_corpus), "--json", *flags]) == 0  # a warning, not a failure
        return json.loads(capsys.readouterr().out)

    assert report()["thresholds"]["min_real"] is None  # off by default
    below = report("--min-real", "41")
    assert below["thresholds"]["min_real"] == 41
    assert below["warnings"] == [f"{tw_corpus}: 40 real samples, below the minimum 41"]
    at = report("--min-real", "40")
    assert at["thresholds"]["min_real"] == 40 and at["warnings"] == []
    assert main(["audit", str(tw_corpus), "--min-real", "41"]) == 0  # the tables print it too
    assert "40 real samples, below the minimum 41" in capsys.readouterr().out


def test_diversity_beside_each_generation_and_its_warning(tw_corpus, capsys):
    import json

    from flows.cli import main

    def report(*flags) -> dict:
        assert main(["audit", str(tw_corpus), "--json", *flags]) == 0  # a warning, not a failure
        return json.loads(capsys.readouterr().out)

    plain = report()
    div = plain["corpora"][0]["diversity"]
    vendi = div["per_generation"]["0"]["vendi"]
    assert div["note"] is None and div["per_generation"]["0"]["images"] == 40 and 1.0 < vendi < 40
    assert plain["thresholds"]["min_diversity"] is None and plain["warnings"] == []  # off by default
    below = report("--min-diversity", f"{vendi + 0.01:.4f}")
    assert below["thresholds"]["min_diversity"] == round(vendi + 0.01, 4)
    assert below["warnings"] == [
        f"{tw_corpus}: generation 0 diversity {vendi:.2f} is below {round(vendi + 0.01, 4)} "
        "(Vendi score of 40 images); a narrowing training set foreshadows collapse"
    ]
    assert report("--min-diversity", f"{vendi - 0.01:.4f}")["warnings"] == []
    assert report("--no-diversity")["corpora"][0]["diversity"] is None
    # the tables: the figure beside the generation's share, and the warning line
    assert main(["audit", str(tw_corpus), "--min-diversity", "40"]) == 0
    text = capsys.readouterr().out
    assert "generation    samples   share diversity" in text
    assert f"0                  40  100.0% {vendi:>9.2f}" in text
    assert f"warning: {tw_corpus}: generation 0 diversity {vendi:.2f} is below 40.0" in text


def test_diversity_not_available_is_a_note_not_a_crash(tmp_path, capsys):
    import json

    from flows.cli import main

    from .test_mix import constructed

    small = constructed(tmp_path / "small", 4, "real", 0, "small")  # 8x8 images: not the network's size
    assert main(["audit", str(small), "--json", "--min-diversity", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    note = "not available: the corpus holds 8x8 images; the evaluation network judges 32x32"
    assert res["corpora"][0]["diversity"]["note"] == note
    assert res["warnings"] == [f"{small}: diversity {note}; the minimum 2.0 was not checked"]
    assert main(["audit", str(small)]) == 0
    text = capsys.readouterr().out
    assert (
        f"diversity of {res['corpora'][0]['corpus_id']}: {note}" in text
        and "0                   4  100.0%         -" in text
    )


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--min-diversity", "0.5"], "argument --min-diversity: 0.5 is not allowed; it must be in [1.0, inf)"),  # noqa: E501
        (["--min-diversity", "-1"], "argument --min-diversity: -1.0 is not allowed; it must be in [1.0, inf)"),  # noqa: E501
        (["--min-diversity", "nan"], "argument --min-diversity: nan is not allowed; it must be in [1.0, inf)"),  # noqa: E501
        (["--min-diversity", "wide"], "argument --min-diversity: 'wide' is not a number"),
        (["--min-diversity", "2", "--no-diversity"], "--min-diversity needs the diversity figure; it cannot go with --no-diversity"),  # noqa: E501
    ],
)  # fmt: skip
def test_bad_min_diversity_is_refused_in_one_line(tw_corpus, capsys, flags, needle):
    from flows.cli import main

    assert main(["audit", str(tw_corpus), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err


def test_audit_plot_shows_diversity(tw_corpus, tmp_path):
    from flows.cli import main
    from manifests.audit_plot import DIVERSITY

    png = tmp_path / "audit.png"
    assert main(["audit", str(tw_corpus), "--plot", str(png), "--quiet"]) == 0
    assert DIVERSITY in {c for _, c in Image.open(png).convert("RGB").getcolors(1 << 16)}
    assert (
        main(["audit", str(tw_corpus), "--plot", str(png), "--overwrite", "--no-diversity", "--quiet"]) == 0
    )
    assert DIVERSITY not in {c for _, c in Image.open(png).convert("RGB").getcolors(1 << 16)}
