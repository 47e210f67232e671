"""`dpp preview`: a contact sheet of images beside their coloured masks, with a class legend."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from manifests.errors import UsageError
from manifests.format.layout import write_bytes_atomic
from manifests.format.record import load_corpus
from manifests.format.schema import IGNORE
from manifests.storage.reader import iter_samples

# Distinct colours for class indices; background (0) dark grey, ignore (255) white.
PALETTE = np.array(
    [
        (40, 40, 40),
        (230, 25, 75),
        (60, 180, 75),
        (0, 130, 200),
        (255, 225, 25),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
    ],
    dtype=np.uint8,
)
IGNORE_COLOUR = np.array((255, 255, 255), dtype=np.uint8)


def colourize(mask: np.ndarray) -> np.ndarray:
    out = PALETTE[mask % len(PALETTE)]
    out[mask == IGNORE] = IGNORE_COLOUR
    return out


def contact_sheet(
    pairs: list[tuple[np.ndarray, np.ndarray]], classes: list[str], columns: int = 8, tile: int = 96
) -> Image.Image:
    """Image and mask side by side for each sample, `columns` pairs a row, legend underneath."""
    gap = 4
    rows = max(1, -(-len(pairs) // columns))
    cell_w = 2 * tile + gap
    width = columns * cell_w + (columns + 1) * gap
    legend_h = 28
    height = rows * (tile + gap) + gap + legend_h
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    for i, (image, mask) in enumerate(pairs):
        r, c = divmod(i, columns)
        x = gap + c * (cell_w + gap)
        y = gap + r * (tile + gap)
        sheet.paste(Image.fromarray(image).resize((tile, tile), Image.NEAREST), (x, y))
        sheet.paste(Image.fromarray(colourize(mask)).resize((tile, tile), Image.NEAREST), (x + tile, y))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    x, y = gap, rows * (tile + gap) + gap + 6
    for idx, name in enumerate(classes):
        colour = tuple(int(v) for v in PALETTE[idx % len(PALETTE)])
        draw.rectangle([x, y, x + 14, y + 14], fill=colour, outline=(0, 0, 0))
        draw.text((x + 18, y), f"{idx} {name}", fill=(0, 0, 0), font=font)
        x += 18 + int(draw.textlength(f"{idx} {name}", font=font)) + 16
    return sheet


def image_grid(images: np.ndarray, columns: int = 8, tile: int = 96, gap: int = 4) -> Image.Image:
    """A plain grid of uint8 images (N, H, W, 3), upscaled to `tile` pixels with nearest neighbours."""
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (tile + gap) + gap, rows * (tile + gap) + gap), (255, 255, 255))
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet.paste(
            Image.fromarray(image).resize((tile, tile), Image.NEAREST),
            (gap + c * (tile + gap), gap + r * (tile + gap)),
        )
    return sheet


def save_png(image: Image.Image, out: Path, overwrite: bool = False) -> bool:
    """Write a picture whole. An existing file with other bytes is kept unless `overwrite`; one with the
    same bytes is left alone. Returns True when the file was (re)written."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data, out = buf.getvalue(), Path(out)
    if out.exists():
        if out.is_file() and out.read_bytes() == data:
            return False
        if not overwrite or not out.is_file():
            raise UsageError(f"--out {out} already exists; pass --overwrite to replace it")
    write_bytes_atomic(out, data)
    return True


def write_preview(corpus: Path, out: Path, n: int = 64, overwrite: bool = False) -> int:
    """Write the contact sheet of the first `n` samples to `out` (PNG). Returns how many it shows."""
    if n < 1:
        raise UsageError(f"--n {n} is not allowed; it must be a positive number of samples")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out} must end in .png")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    record = load_corpus(corpus)
    pairs = [(s.image, s.mask) for s in iter_samples(corpus, limit=n)]
    if not pairs:
        raise UsageError(f"corpus {corpus} holds no samples to preview")
    save_png(contact_sheet(pairs, list(record["classes"])), out, overwrite)
    return len(pairs)
