"""Real corpora: the toy world rendered to a corpus, and a user's images and masks ingested into one.

Both produce samples with origin "real" and generation 0, written through the same shard writer
into a staging folder that replaces the output only when the whole corpus is done.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from manifests.errors import UsageError, first_line
from manifests.format.schema import IGNORE, KEY_RE
from manifests.format.validate import CLASS_NAME_RE, MAX_NAME_CHARS, escapes
from manifests.storage.staged import CorpusSample, WriteResult, check_counts, write_corpus
from pipeline.realdata import toyworld
from pipeline.seeds import sample_seed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def write_toyworld(
    out: Path,
    n: int,
    seed: int,
    size: int = 32,
    shard_size: int = 1000,
    overwrite: bool = False,
    quiet: bool = False,
    style: str = toyworld.DEFAULT_STYLE,
) -> WriteResult:
    """`dpp toyworld`: n procedural scenes as a real corpus. The same arguments give the same bytes.
    `style` is "flat" (the default world) or "textured" (the first world, byte for byte)."""
    check_counts(n, shard_size)
    if seed < 0:
        raise UsageError(f"--seed {seed} is not allowed; it must be a non-negative integer")
    if size not in toyworld.SIZES:
        raise UsageError(f"--size {size} is not allowed; allowed: {', '.join(map(str, toyworld.SIZES))}")
    if style not in toyworld.STYLES:
        raise UsageError(f"--style {style!r} is not allowed; allowed: {', '.join(toyworld.STYLES)}")
    classes = list(toyworld.CLASSES)
    config = {
        "kind": "toyworld",
        "n": n,
        "seed": seed,
        "size": size,
        "shard_size": shard_size,
        "toyworld_version": toyworld.TOYWORLD_VERSION,
        "classes": classes,
    }
    if style != "textured":  # a textured corpus keeps the config (and so the corpus id) it always had
        config["style"] = style

    def samples() -> Iterator[CorpusSample]:
        for i in range(n):
            shard, index = divmod(i, shard_size)
            s = sample_seed(seed, shard, index)
            scene = toyworld.render_scene(s, size, style)
            meta = {
                "origin": "real",
                "generation": 0,
                "source": "toyworld",
                "seed": s,
                "toyworld_version": toyworld.TOYWORLD_VERSION,
            }
            if style != "textured":
                meta["toyworld_style"] = style
            yield CorpusSample(
                f"tw-{shard:06d}-{index:06d}",
                scene.image,
                scene.mask,
                meta,
                {"source": "toyworld", "seed": s},
            )

    return write_corpus(out, samples, n, classes, config, "toyworld", shard_size, overwrite, quiet)


# --- ingest -----------------------------------------------------------------------------------


def read_classes_file(path: Path) -> list[str]:
    """One class name a line; line number (from 0) = mask value. Blank lines are not allowed."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--classes {path} is not a file; give a text file with one class name a line")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise UsageError(f"--classes {path} is not UTF-8 text ({first_line(e)})") from e
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    if not names:
        raise UsageError(f"--classes {path} is empty; it must list at least one class name, one a line")
    for i, name in enumerate(names):
        if not name:
            raise UsageError(
                f"--classes {path}: line {i + 1} is blank; every mask value up to the last needs a name"
            )
        if not CLASS_NAME_RE.fullmatch(name) or len(name) > MAX_NAME_CHARS:
            raise UsageError(
                f"--classes {path}: class name {name[:60]!r} (line {i + 1}) may use only letters, digits, "
                f"space, '_', '-' and '.', at most {MAX_NAME_CHARS} of them"
            )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"--classes {path}: class name(s) listed twice: {', '.join(dup)}")
    if len(names) > IGNORE:
        raise UsageError(
            f"--classes {path} lists {len(names)} classes; at most {IGNORE} (mask value 255 = ignore)"
        )
    return names


def _key_for(stem: str) -> str:
    key = re.sub(r"[^A-Za-z0-9_-]", "_", stem)
    return key if KEY_RE.fullmatch(key) else "_"


def _load_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)  # alpha, if any, is dropped


def _load_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        if im.mode in ("L", "P"):  # P: a palette PNG whose indices are the class values
            return np.asarray(im).astype(np.uint8)
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(im)
            if arr.min() < 0 or arr.max() > 255:
                raise ValueError(f"16-bit mask holds value {int(arr.max())}; mask values must be 0-255")
            return arr.astype(np.uint8)
        raise ValueError(f"mask mode is {im.mode}; masks must be single-channel index PNGs (mode L or P)")


def _list_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"{what} {folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for p in files:  # a symbolic link may stay inside the folder; one that leads out is refused
        if escapes(folder, p):
            raise UsageError(
                f"{what} {folder}: {p.name} is a symbolic link to {p.resolve()}, outside {folder}; "
                "copy the file into the folder instead"
            )
    return files


def ingest(
    images: Path,
    masks: Path,
    classes_file: Path,
    out: Path,
    shard_size: int = 1000,
    overwrite: bool = False,
    quiet: bool = False,
) -> WriteResult:
    """`dpp ingest`: a user's images and index masks into a real corpus. Every bad pair is reported
    together, by file name, and nothing is written unless all pairs are good."""
    images, masks = Path(images), Path(masks)
    classes = read_classes_file(classes_file)
    image_files = _list_images(images, "--images")
    mask_files = {p.stem: p for p in _list_images(masks, "--masks") if p.suffix.lower() == ".png"}
    if not image_files:
        raise UsageError(f"--images {images} holds no PNG or JPEG images")
    check_counts(len(image_files), shard_size)

    problems: list[str] = []
    by_stem: dict[str, Path] = {}
    keys: dict[str, str] = {}
    content = hashlib.sha256()
    for img in tqdm(image_files, desc="checking pairs", unit="pair", disable=quiet, leave=False):
        if img.stem in by_stem:
            problems.append(f"{img.name}: two images share the stem {img.stem!r} ({by_stem[img.stem].name})")
            continue
        by_stem[img.stem] = img
        key = _key_for(img.stem)
        if key in keys:
            problems.append(
                f"{img.name}: its key {key!r} collides with {keys[key]} after replacing characters "
                "outside [A-Za-z0-9_-]"
            )
            continue
        keys[key] = img.name
        mpath = mask_files.get(img.stem)
        if mpath is None:
            problems.append(f"{img.name}: no mask {img.stem}.png in {masks}")
            continue
        try:
            arr = _load_image(img)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            problems.append(f"{img.name}: unreadable image ({first_line(e)})")
            continue
        try:
            m = _load_mask(mpath)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            problems.append(f"{mpath.name}: unreadable mask ({first_line(e)})")
            continue
        if arr.shape[:2] != m.shape:
            problems.append(
                f"{img.name}: image is {arr.shape[1]}x{arr.shape[0]} but mask {mpath.name} is "
                f"{m.shape[1]}x{m.shape[0]}"
            )
            continue
        bad = sorted(set(np.unique(m).tolist()) - set(range(len(classes))) - {IGNORE})
        if bad:
            problems.append(
                f"{mpath.name}: mask value(s) {', '.join(map(str, bad))} have no class "
                f"(classes file defines 0-{len(classes) - 1}; 255 = ignore)"
            )
            continue
        content.update(f"{img.name}\0{arr.shape}\0".encode())
        content.update(arr.tobytes())
        content.update(m.tobytes())
    for stem, mpath in sorted(mask_files.items()):
        if stem not in by_stem:
            problems.append(f"{mpath.name}: mask has no image with the stem {stem!r} in {images}")
    if problems:
        raise UsageError(f"ingest found {len(problems)} bad pair(s); nothing was written", details=problems)

    config = {
        "kind": "ingest",
        "images": str(images.resolve()),
        "masks": str(masks.resolve()),
        "classes": classes,
        "shard_size": shard_size,
        "content_sha256": content.hexdigest(),
    }
    pairs = sorted(by_stem.items())

    def samples() -> Iterator[CorpusSample]:
        for stem, img in pairs:
            meta = {"origin": "real", "generation": 0, "source": "ingest", "source_file": img.name}
            yield CorpusSample(
                _key_for(stem),
                _load_image(img),
                _load_mask(mask_files[stem]),
                meta,
                {"source": "ingest", "source_key": img.name},
            )

    return write_corpus(out, samples, len(pairs), classes, config, "ingest", shard_size, overwrite, quiet)
