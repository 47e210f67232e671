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
