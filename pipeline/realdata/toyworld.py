"""Toy world: procedural scenes with exact masks, standing in for a user's real labeled data.

Classes are told apart by shape only: every object and the background draw their colours from one
shared distribution, so a labeler has to learn shape, not colour. The mask is exact: a pixel belongs
to the topmost shape whose outline contains the pixel centre, and the image is painted from that
same mask. Two styles:

- `flat` (the default): a scene holds 1-3 objects of ONE class (as a photo of dogs holds dogs),
  flat-coloured with mild shading, on a smooth two-colour gradient, with little noise; objects are
  large enough that a disk, a square and a triangle are unambiguous at 32x32. Later objects occlude
  earlier ones. Sized so a small generator learns it on 2 CPU cores (docs/toyworld.md).
- `textured`: the first world (scenes mixing classes, checker/stripe/blotch textures on every region,
  a lighting gradient, sensor noise). Kept byte for byte so earlier results reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES: tuple[str, ...] = ("background", "disk", "square", "triangle")
SIZES: tuple[int, ...] = (32, 64)
STYLES: tuple[str, ...] = ("flat", "textured")
DEFAULT_STYLE = "flat"
# Bumped whenever a change to this file changes the pixels a seed produces (in either style).
TOYWORLD_VERSION = 1


@dataclass(frozen=True)
class Scene:
    """One rendered scene: RGB uint8 image (H, W, 3) and uint8 mask (H, W) of indices into CLASSES."""

    image: np.ndarray
    mask: np.ndarray
    # Per object in paint order (bottom first): (class index, pixels of its full shape, pixels visible).
    objects: tuple[tuple[int, int, int], ...] = ()


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres in [0, size) coordinates.
    c = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(c, c, indexing="xy")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    # One distribution for every class and the background: uniform hue, broad saturation/value.
    h, s, v = rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float64)


def _texture(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """An RGB texture over the whole canvas, (H, W, 3) in [0, 1]; one distribution for all regions."""
    size = xs.shape[0]
    a, b = _random_colour(rng), _random_colour(rng)
    kind = rng.integers(0, 4)
    if kind == 0:  # flat, with a faint second colour
        w = np.full(xs.shape, rng.uniform(0.0, 0.15))
    elif kind == 1:  # stripes at a random angle and period
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(3, 8) * size / 32
        phase = rng.uniform(0, 2 * np.pi)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * np.cos(ang) + ys * np.sin(ang)) / period + phase)
    elif kind == 2:  # checker
        period = rng.uniform(3, 7) * size / 32
        ox, oy = rng.uniform(0, period, size=2)
        w = ((np.floor((xs + ox) / period) + np.floor((ys + oy) / period)) % 2).astype(np.float64)
    else:  # smooth blotches: coarse noise upsampled bilinearly
        cells = int(rng.integers(3, 6))
        coarse = rng.uniform(0, 1, size=(cells + 1, cells + 1))
        gx = xs / size * cells
        gy = ys / size * cells
        x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
        fx, fy = gx - x0, gy - y0
        w = (
            coarse[y0, x0] * (1 - fx) * (1 - fy)
            + coarse[y0, x0 + 1] * fx * (1 - fy)
            + coarse[y0 + 1, x0] * (1 - fx) * fy
            + coarse[y0 + 1, x0 + 1] * fx * fy
        )
    return a[None, None, :] * (1 - w[..., None]) + b[None, None, :] * w[..., None]


def _shape_mask(cls: str, cx: float, cy: float, r: float, theta: float, xs, ys) -> np.ndarray:
    """Boolean mask of one shape. `r` is the radius of the disk of equal area, so size is no cue."""
    dx, dy = xs - cx, ys - cy
    if cls == "disk":
        return dx * dx + dy * dy <= r * r
    # Rotate the pixel offsets into the shape's frame.
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if cls == "square":
        half = r * np.sqrt(np.pi) / 2  # side^2 = pi r^2
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if cls == "triangle":
        big_r = r * np.sqrt(4 * np.pi / (3 * np.sqrt(3)))  # circumradius of an equal-area triangle
        inside = np.ones(xs.shape, dtype=bool)
        for k in range(3):  # three half-planes, normals pointing to the edges' midpoints
            a = np.pi / 2 + k * 2 * np.pi / 3 + np.pi / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= big_r / 2
        return inside
    raise ValueError(f"unknown toy-world class {cls!r}; allowed: {', '.join(CLASSES[1:])}")


def render_scene(seed: int, size: int = 32, style: str = DEFAULT_STYLE) -> Scene:
    """Render the scene of one sample seed. Pure function of (seed, size, style, TOYWORLD_VERSION)."""
    if size not in SIZES:
        raise ValueError(f"toy-world size {size} is not supported; allowed: {', '.join(map(str, SIZES))}")
    if style == "flat":
        return _render_flat(seed, size)
    if style != "textured":
        raise ValueError(f"toy-world style {style!r} is not supported; allowed: {', '.join(STYLES)}")
    rng = np.random.default_rng(seed)
    xs, ys = _grid(size)
    scale = size / 32

    image = _texture(rng, xs, ys)
    background_mean = image.reshape(-1, 3).mean(axis=0)
    mask = np.zeros((size, size), dtype=np.uint8)

    n_objects = int(rng.integers(1, 4))
    for _attempt in range(20):
        shapes = []
        for _ in range(n_objects):
            cls_index = int(rng.integers(1, len(CLASSES)))
            r = rng.uniform(5, 10) * scale
            cx, cy = rng.uniform(0.15 * size, 0.85 * size, size=2)
            theta = rng.uniform(0, 2 * np.pi)
            shapes.append((cls_index, _shape_mask(CLASSES[cls_index], cx, cy, r, theta, xs, ys)))
        # Occlusion: later shapes are on top. Every object must stay at least 30% visible.
        owner = np.full((size, size), -1, dtype=np.int64)
        for i, (_, m) in enumerate(shapes):
            owner[m] = i
        visible_ok = all(
            (owner == i).sum() >= max(6 * scale * scale, 0.3 * m.sum()) for i, (_, m) in enumerate(shapes)
        )
        if visible_ok:
            break
    else:  # no placement kept every object visible: keep the topmost one alone
        shapes = shapes[-1:]
        owner = np.where(shapes[0][1], 0, -1)
    for i, (cls_index, _) in enumerate(shapes):
        region = owner == i
        if not region.any():
            continue
        for _ in range(10):  # keep the object visible against the background: resample close colours
            tex = _texture(rng, xs, ys)
            if np.linalg.norm(tex[region].mean(axis=0) - background_mean) > 0.25:
                break
        image[region] = tex[region]
        mask[region] = cls_index

    # Lighting: a linear gradient in a random direction.
    ang = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.6)
    ramp = ((xs * np.cos(ang) + ys * np.sin(ang)) / size) - 0.5 * (np.cos(ang) + np.sin(ang))
    image = image * (1 + strength * ramp)[..., None]
    # Sensor noise.
    image = image + rng.normal(0, rng.uniform(0.01, 0.05), size=image.shape)
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    objects = tuple((c, int(m.sum()), int((owner == i).sum())) for i, (c, m) in enumerate(shapes))
    return Scene(image=image, mask=mask, objects=objects)


def _colour_far_from(rng: np.random.Generator, others: list[np.ndarray], min_dist: float) -> np.ndarray:
    """A colour of the shared distribution at least `min_dist` (RGB, 0-1) from each of `others`."""
    for _ in range(50):
        c = _random_colour(rng)
        if all(np.linalg.norm(c - o) >= min_dist for o in others):
            return c
    return c


def _render_flat(seed: int, size: int) -> Scene:
    """The flat style: one class per scene, flat objects, smooth background (see the module docstring)."""
    rng = np.random.default_rng(seed)
    xs, ys = _grid(size)
    scale = size / 32

    # Background: a smooth gradient between two colours along a random direction.
    a, b = _random_colour(rng), _random_colour(rng)
    ang = rng.uniform(0, 2 * np.pi)
    w = (xs * np.cos(ang) + ys * np.sin(ang)) / size
    w = (w - w.min()) / max(w.max() - w.min(), 1e-9) * rng.uniform(0.3, 1.0)
    image = a[None, None, :] * (1 - w[..., None]) + b[None, None, :] * w[..., None]
    mask = np.zeros((size, size), dtype=np.uint8)

    cls_index = int(rng.integers(1, len(CLASSES)))
    n_objects = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    for _attempt in range(30):
        shapes = []
        for _ in range(n_objects):
            r = rng.uniform(6.5, 10) * scale
            cx, cy = rng.uniform(0.2 * size, 0.8 * size, size=2)
            theta = rng.uniform(0, 2 * np.pi)
            shapes.append(_shape_mask(CLASSES[cls_index], cx, cy, r, theta, xs, ys))
        # Occlusion: later shapes are on top. Every object stays at least 60% visible, so its outline reads.
        owner = np.full((size, size), -1, dtype=np.int64)
        for i, m in enumerate(shapes):
            owner[m] = i
        if all((owner == i).sum() >= 0.6 * m.sum() for i, m in enumerate(shapes)):
            break
    else:  # no placement kept every object visible: keep the topmost one alone
        shapes = shapes[-1:]
        owner = np.where(shapes[0], 0, -1)
    colours: list[np.ndarray] = []
    for i in range(len(shapes)):
        region = owner == i
        # Far from the background under it and from the objects before it (occlusion must show).
        under = image[region].mean(axis=0)
        c = _colour_far_from(rng, [under, *colours], 0.35)
        colours.append(c)
        # Mild shading: +-6% brightness along a random direction across the object.
        sa = rng.uniform(0, 2 * np.pi)
        shade = 1 + 0.06 * ((xs * np.cos(sa) + ys * np.sin(sa)) / size * 2 - (np.cos(sa) + np.sin(sa)))
        image[region] = (c[None, None, :] * shade[..., None])[region]
        mask[region] = cls_index

    image = image + rng.normal(0, rng.uniform(0.0, 0.015), size=image.shape)
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    objects = tuple((cls_index, int(m.sum()), int((owner == i).sum())) for i, m in enumerate(shapes))
    return Scene(image=image, mask=mask, objects=objects)
