"""Toy world: procedural scenes with exact masks, standing in for a user's real labeled data.

Classes are told apart by shape only: every object and the background draw their colours and
textures from one shared distribution, so a labeler has to learn shape, not colour. Each scene has
1-3 objects (later ones occlude earlier ones), a textured background, a lighting gradient and
pixel noise. The mask is exact: a pixel belongs to the topmost shape whose outline contains the
pixel centre, and the image is painted from that same mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES: tuple[str, ...] = ("background", "disk", "square", "triangle")
SIZES: tuple[int, ...] = (32, 64)
# Bumped whenever a change to this file changes the pixels a seed produces.
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


def render_scene(seed: int, size: int = 32) -> Scene:
    """Render the scene of one sample seed. Pure function of (seed, size, TOYWORLD_VERSION)."""
    if size not in SIZES:
        raise ValueError(f"toy-world size {size} is not supported; allowed: {', '.join(map(str, SIZES))}")
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
