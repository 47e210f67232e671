"""dpp ingest: a user's images and masks into a real corpus; every bad pair reported, nothing written."""

import zlib

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from manifests.storage.reader import iter_samples
from manifests.verify import verify_corpus


def _write_pair(images, masks, stem, size=(20, 16), values=(0, 1, 2), fmt="PNG", mask_mode="L"):
    rng = np.random.default_rng(zlib.crc32(stem.encode()))  # stable across processes, unlike hash()
    img = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    ext = "jpg" if fmt == "JPEG" else "png"
    Image.fromarray(img).save(images / f"{stem}.{ext}", format=fmt)
    m = np.array(values, dtype=np.uint8)[rng.integers(0, len(values), size=(size[1], size[0]))]
    mi = Image.fromarray(m, mode="L")
    if mask_mode == "P":
        mi = mi.convert("P")
        mi.putpalette([v for i in range(256) for v in (i, i, i)])
        mi = Image.fromarray(m, mode="P")
        mi.putpalette([v for i in range(256) for v in (i, 0, 0)])
    mi.save(masks / f"{stem}.png")
    return img, m


@pytest.fixture
def user_data(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    pairs = {
        "a_001": _write_pair(images, masks, "a_001"),
        "b.002": _write_pair(images, masks, "b.002", values=(0, 2, 255)),
        "c": _write_pair(images, masks, "c", fmt="JPEG"),
        "d": _write_pair(images, masks, "d", mask_mode="P", size=(24, 24)),
    }
    return tmp_path, pairs


def _args(root, out="out"):
    return [
        "ingest",
        "--images",
        str(root / "images"),
        "--masks",
        str(root / "masks"),
        "--classes",
        str(root / "classes.txt"),
        "--out",
        str(root / out),
        "--quiet",
    ]


def test_good_ingest_round_trips(user_data):
    root, pairs = user_data
    assert main(_args(root)) == 0
    assert verify_corpus(root / "out").ok
    got = {s.key: s for s in iter_samples(root / "out")}
    assert set(got) == {"a_001", "b_002", "c", "d"}  # the dot in b.002 cannot be in a WebDataset key
    for stem, (img, mask) in pairs.items():
        s = got[stem.replace(".", "_")]
        assert np.array_equal(s.mask, mask)
        if stem != "c":  # JPEG is lossy; PNG pixels are kept exactly
            assert np.array_equal(s.image, img)
        assert s.meta["origin"] == "real" and s.meta["source_file"].startswith(stem)
    assert got["b_002"].meta["classes_present"] == ["background", "dog"]  # 255 is ignore, no class


def _break(root, kind):
    images, masks = root / "images", root / "masks"
    if kind == "missing mask":
        (masks / "c.png").unlink()
        return "c.jpg"
    if kind == "size mismatch":
        Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(masks / "a_001.png")
        return "a_001.png"
    if kind == "mask value without class":
        Image.fromarray(np.full((16, 20), 7, np.uint8), mode="L").save(masks / "a_001.png")
        return "a_001.png"
    if kind == "unreadable image":
        (images / "d.png").write_bytes(b"not a png at all")
        return "d.png"
    if kind == "unreadable mask":
        (masks / "d.png").write_bytes(b"\x89PNG broken")
        return "d.png"
    if kind == "rgb mask":
        Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(masks / "a_001.png")
        return "a_001.png"
    if kind == "mask without image":
        Image.fromarray(np.zeros((16, 20), np.uint8), mode="L").save(masks / "zzz.png")
        return "zzz.png"
    raise AssertionError(kind)


KINDS = [
    "missing mask",
    "size mismatch",
    "mask value without class",
    "unreadable image",
    "unreadable mask",
    "rgb mask",
    "mask without image",
]


@pytest.mark.parametrize("kind", KINDS)
def test_each_bad_pair_is_refused_by_file_name_and_nothing_written(user_data, kind, capsys):
    root, _ = user_data
    name = _break(root, kind)
    assert main(_args(root)) == 2
    err = capsys.readouterr().err
    assert "bad pair(s); nothing was written" in err and name in err
    assert not (root / "out").exists()
    assert not [p for p in root.iterdir() if "staging" in p.name]


def test_all_bad_pairs_reported_together(user_data, capsys):
    root, _ = user_data
    names = [_break(root, k) for k in ("missing mask", "mask value without class", "unreadable image")]
    assert main(_args(root)) == 2
    err = capsys.readouterr().err
    assert "found 3 bad pair(s)" in err and all(n in err for n in names)


@pytest.mark.parametrize(
    "content,needle", [("", "is empty"), ("bg\n\ncat\n", "line 2 is blank"), ("bg\nbg\n", "listed twice")]
)
def test_bad_classes_file(user_data, content, needle, capsys):
    root, _ = user_data
    (root / "classes.txt").write_text(content)
    assert main(_args(root)) == 2
    assert needle in capsys.readouterr().err
    assert not (root / "out").exists()


def test_empty_images_folder(tmp_path, capsys):
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    (tmp_path / "classes.txt").write_text("bg\n")
    assert main(_args(tmp_path)) == 2
    assert "holds no PNG or JPEG images" in capsys.readouterr().err
