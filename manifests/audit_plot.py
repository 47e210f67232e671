"""`dpp audit --plot FILE.png`: the audit as a picture — share of samples per generation depth, per
class the images that show it, real beside synthetic, and each generation's diversity when the audit
has it. Drawn with Pillow (bars and text only)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from manifests.format.layout import write_bytes_atomic

REAL, SYNTH, INK, GRID = (70, 130, 180), (230, 120, 50), (20, 20, 20), (225, 225, 225)
DIVERSITY = (120, 90, 170)
ROW, LABEL_W, BAR_W, PAD = 18, 150, 360, 12


def _bar(
    d: ImageDraw.ImageDraw, y: int, label: str, parts: list[tuple[float, tuple]], total: float, note: str
):
    d.text((PAD, y + 3), label[:22], fill=INK)
    x = PAD + LABEL_W
    d.rectangle([x, y + 2, x + BAR_W, y + ROW - 2], outline=GRID)
    for value, colour in parts:
        w = int(round(BAR_W * value / total)) if total else 0
        if w:
            d.rectangle([x, y + 2, x + w, y + ROW - 2], fill=colour)
        x += w
    d.text((PAD + LABEL_W + BAR_W + 8, y + 3), note, fill=INK)


def _diversity_rows(result: dict) -> list[tuple[str, dict]]:
    """(label, {vendi, images}) per corpus and generation that has a diversity figure."""
    many = len(result["corpora"]) > 1
    rows = []
    for c in result["corpora"]:
        for g, d in ((c.get("diversity") or {}).get("per_generation") or {}).items():
            rows.append((f"{c['corpus_id'][:13]} g{g}" if many else f"generation {g}", d))
    return rows


def plot_audit(result: dict, out: Path) -> Path:
    """Write the picture of an audit result (manifests.audit.audit) to `out` as PNG, whole."""
    gens = result["per_generation"]
    classes = result["per_class"]
    div = _diversity_rows(result)
    extra = ROW * (1 + len(div)) + PAD if div else 0
    height = PAD * 2 + ROW * (4 + len(gens) + len(classes)) + 3 * PAD + extra
    img = Image.new("RGB", (PAD * 2 + LABEL_W + BAR_W + 200, height), "white")
    d = ImageDraw.Draw(img)
    y = PAD
    total = result["total"]
    d.text((PAD, y), f"{total} samples: {result['real']} real, {result['synthetic']} synthetic "
           f"(synthetic fraction {result['synthetic_fraction']:.3f})", fill=INK)  # fmt: skip
    y += ROW + PAD // 2
    d.text((PAD, y), "samples per generation depth (0 = real)", fill=INK)
    y += ROW
    one = (result["corpora"][0].get("diversity") or {}) if len(result["corpora"]) == 1 else {}
    for g, n in gens.items():
        colour = REAL if g == "0" else SYNTH
        note = f"{n} ({100 * n / total:.1f}%)" if total else "0"
        if g in (one.get("per_generation") or {}):
            note += f", diversity {one['per_generation'][g]['vendi']:.2f}"
        _bar(d, y, f"generation {g}", [(n, colour)], total, note)
        y += ROW
    y += PAD
    d.text((PAD, y), "images showing each class: real | synthetic", fill=INK)
    y += ROW
    for c, v in classes.items():
        r, s = v["images"]["real"], v["images"]["synthetic"]
        _bar(d, y, c, [(r, REAL), (s, SYNTH)], total, f"{r} | {s}")
        y += ROW
    if div:  # beside the shares above: the same generations' diversity, bars to the largest figure
        y += PAD
        d.text((PAD, y), "diversity per generation (Vendi score; 1 = all images alike)", fill=INK)
        y += ROW
        top = max(v["vendi"] for _, v in div)
        for label, v in div:
            _bar(d, y, label, [(v["vendi"], DIVERSITY)], top, f"{v['vendi']:.2f} ({v['images']} images)")
            y += ROW
    out = Path(out)
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(out, buf.getvalue())
    return out
