"""dpp view in a real browser: headless Chromium driven by selenium against the app served in a thread.

The set-up installs Chromium and its driver (`make install` runs tests/ensure_browser.sh), so a missing
browser fails these tests; it does not skip them. The last test takes the README's screenshot on corpora
like the demo's: samples of the shipped toy-world generator with their masks and rejects, beside a real
toy-world corpus. It writes docs/images/view.png only when DPP_UPDATE_DOCS=1 (so `make test` leaves the
tree as it found it): `DPP_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/test_view_browser.py -k screenshot`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from flows.cli import main
from manifests.format.layout import manifest_path
from manifests.format.record import load_corpus, read_manifest
from manifests.view.app import running
from manifests.view.index import open_corpora

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs/images/view.png"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver are not on PATH; `make install` runs tests/ensure_browser.sh")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1400,1000")
    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    yield d
    d.quit()


def _rows(corpus: Path) -> list[dict]:
    names = [s["name"] for s in load_corpus(corpus)["shards"]]
    return pa.concat_tables([read_manifest(manifest_path(corpus, n)) for n in names]).to_pylist()


def _wait(d, what, timeout: float = 20):
    return WebDriverWait(d, timeout).until(lambda _: what())


def _column(d, i: int):
    return d.find_element(By.CSS_SELECTOR, f'.column[data-corpus="{i}"]')


def _count(d, i: int) -> str:
    return _column(d, i).find_element(By.CLASS_NAME, "count").text


def _choose(d, i: int, name: str, value: str) -> None:
    Select(_column(d, i).find_element(By.NAME, name)).select_by_value(value)


def _check_page(d, rows: list[dict]) -> None:
    """The grid, a filter, the detail view: what a user does first."""
    _wait(d, lambda: _count(d, 0) == "30 samples")
    assert len(_column(d, 0).find_elements(By.CLASS_NAME, "tile")) == 30
    _choose(d, 0, "status", "rejected")
    _wait(d, lambda: _count(d, 0) == "4 samples")
    tiles = _column(d, 0).find_elements(By.CLASS_NAME, "tile")
    assert len(tiles) == 4 and all("rejected" in t.get_attribute("class") for t in tiles)
    _choose(d, 0, "generation", "2")
    _wait(d, lambda: _count(d, 0) == "2 samples")
    tile = _column(d, 0).find_element(By.CLASS_NAME, "tile")
    key = tile.get_attribute("data-key")
    row = next(r for r in rows if r["key"] == key)
    assert not row["kept"] and row["generation"] == 2
    tile.click()

    def seed_shown() -> bool:  # the detail is filled in after the click's fetch returns: look again each time
        found = d.find_elements(By.CSS_SELECTOR, "#detail td.seed")
        return bool(found) and found[0].is_displayed() and found[0].text == str(row["seed"])

    _wait(d, seed_shown)
    assert d.find_element(By.CSS_SELECTOR, "#detail td.key").text == key
    d.find_element(By.ID, "close").click()


def test_grid_filters_detail_and_charts(browser, view_corpus, tw_corpus):
    d = browser
    rows = _rows(view_corpus)
    with running(open_corpora([view_corpus, tw_corpus])) as base:
        d.get(base)
        _wait(d, lambda: _count(d, 1) == "40 samples")  # the second corpus, side by side
        _check_page(d, rows)
        _column(d, 0).find_element(By.CLASS_NAME, "charts-toggle").click()
        _wait(d, lambda: len(_column(d, 0).find_elements(By.CSS_SELECTOR, "svg.chart")) == 4)
        Select(d.find_element(By.ID, "mode")).select_by_value("mask")
        assert d.find_element(By.TAG_NAME, "body").get_attribute("class") == "mode-mask"
        _choose(d, 0, "status", "all")
        _choose(d, 0, "generation", "")
        _choose(d, 0, "sort", "label_uncertainty")
        _choose(d, 0, "order", "desc")
        top = max(
            (r for r in rows if r["label_uncertainty"] is not None), key=lambda r: r["label_uncertainty"]
        )
        _wait(
            d,
            lambda: _column(d, 0).find_element(By.CLASS_NAME, "tile").get_attribute("data-key") == top["key"],
        )


def test_the_static_export_opens_from_disk(browser, view_corpus, tmp_path):
    out = tmp_path / "site"
    assert main(["view", str(view_corpus), "--export", str(out), "--quiet"]) == 0
    browser.get((out / "index.html").as_uri())
    _check_page(browser, _rows(view_corpus))
    img = browser.find_element(By.CSS_SELECTOR, ".tile img.img")
    _wait(browser, lambda: browser.execute_script("return arguments[0].naturalWidth", img) == 32)


@pytest.fixture(scope="module")
def demo_corpora(tmp_path_factory) -> tuple[Path, Path]:
    """Like the demo's, smaller: a real toy-world corpus, a labeler on the shipped generator from 4 of its
    images, and 16 samples of the shipped generator (8 DPM-Solver++ steps) with the rejects kept."""
    base = tmp_path_factory.mktemp("viewdemo")
    real, lab, syn = base / "real", base / "labeler", base / "synthetic"
    assert main(["toyworld", "--n", "24", "--seed", "3", "--out", str(real), "--quiet"]) == 0
    argv = ["train-labeler", "--generator", "toyworld", "--data", str(real), "--shots", "4", "--members", "2"]
    assert main([*argv, "--out", str(lab), "--quiet"]) == 0
    argv = ["generate", "--generator", "toyworld", "--labeler", str(lab), "--n", "16", "--seed", "1"]
    argv += ["--steps", "8", "--keep-rejected", "--drop-fraction", "0.25", "--batch-size", "8"]
    assert main([*argv, "--shard-size", "8", "--out", str(syn), "--quiet"]) == 0
    return syn, real


def test_screenshot_for_the_readme(browser, demo_corpora, tmp_path):
    """The page with charts open, screenshotted. DPP_VIEW_CORPORA=SYN,REAL shows those corpora instead of
    the small ones: the README's is `make demo`'s (demo-out/synthetic,demo-out/real)."""
    d = browser
    shot = tmp_path / "view.png"
    syn, real = demo_corpora
    if os.environ.get("DPP_VIEW_CORPORA"):
        syn, real = (Path(p) for p in os.environ["DPP_VIEW_CORPORA"].split(","))
    rows = sum(
        len(read_manifest(manifest_path(real, Path(s["name"]).stem))) for s in load_corpus(real)["shards"]
    )
    with running(open_corpora([syn, real])) as base:
        d.get(base)
        _wait(d, lambda: _count(d, 0).endswith(" samples") and _count(d, 1) == f"{rows} samples")
        _column(d, 0).find_element(By.CLASS_NAME, "charts-toggle").click()
        _wait(d, lambda: len(_column(d, 0).find_elements(By.CSS_SELECTOR, "svg.chart")) == 4)
        images = "return [...document.querySelectorAll('.tile img')].slice(0, 24)"
        _wait(d, lambda: d.execute_script(f"{images}.every(i => i.complete && i.naturalWidth > 0)"))
        assert d.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("DPP_UPDATE_DOCS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
