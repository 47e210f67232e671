"""`dpp view --export DIR`: the page of `dpp view` as a static site that opens from disk or any web host.

DIR/index.html and DIR/static/ are the app's own files; DIR/data/corpus-N.js holds each corpus's rows,
sample details and audit as JSON assigned to `window.DPP_STATIC` (a <script> tag, not fetch(): a browser
refuses fetch() on file:// pages); DIR/img/N/KEY.png and KEY.mask.png are the images and coloured masks.
Filtering and sorting run in the page. Nothing is written into the corpora.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from manifests.audit import audit
from manifests.errors import DppError, UsageError, first_line
from manifests.view.app import STATIC
from manifests.view.index import Corpus, Damaged, NotFound, mask_png

MARK = "<!-- dpp:data -->"


def _check_out(out: Path, corpora: list[Corpus]) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--export {out} already exists and is not an empty folder")
    if not out.parent.is_dir():
        raise UsageError(f"--export {out}: folder {out.parent} does not exist")
    for c in corpora:
        root = c.root.resolve()
        if out.resolve() == root or root in out.resolve().parents:
            raise UsageError(f"--export {out} is inside corpus {c.root}; dpp view never writes into a corpus")


def export_site(corpora: list[Corpus], out: Path) -> dict:
    """Write the static site to `out` (new or empty). Returns {samples, images, damaged} counts."""
    out = Path(out)
    _check_out(out, corpora)
    out.mkdir(exist_ok=True)
    shutil.copytree(STATIC, out / "static", ignore=shutil.ignore_patterns("index.html"))
    (out / "data").mkdir()
    scripts = []
    counts = {"samples": 0, "images": 0, "damaged": 0}
    for c in corpora:
        rows = c.items(np.arange(len(c.kept)))
        details = {}
        img = out / "img" / str(c.index)
        img.mkdir(parents=True)
        for item in rows:
            key = item["key"]
            details[key] = c.detail(key)
            counts["samples"] += 1
            if not item["stored"] or details[key]["damaged"]:
                counts["damaged"] += bool(details[key]["damaged"])
                item["damaged"] = details[key]["damaged"]
                continue
            try:
                png, seg = c.member(key, "png"), c.member(key, "seg.png")
            except (Damaged, NotFound) as e:
                item["damaged"] = details[key]["damaged"] = str(e)
                counts["damaged"] += 1
                continue
            (img / f"{key}.png").write_bytes(png)
            (img / f"{key}.mask.png").write_bytes(mask_png(seg))
            counts["images"] += 1
        data = {"summary": c.summary(), "rows": rows, "details": details}
        try:
            data["audit"] = audit([c.root])
        except DppError as e:
            data["audit_error"] = first_line(e)
        name = f"corpus-{c.index}.js"
        text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
        (out / "data" / name).write_text(f"(window.DPP_STATIC = window.DPP_STATIC || []).push({text});\n")
        scripts.append(f'<script src="data/{name}"></script>')
    page = (STATIC / "index.html").read_text().replace(MARK, "\n".join(scripts))
    (out / "index.html").write_text(page)
    return counts
