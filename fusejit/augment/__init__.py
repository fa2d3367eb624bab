"""``fj.augment``: random rotations, scalings, translations and flips of image batches.

Runs eagerly in NumPy (it is data-pipeline code, not part of a traced step), driven by a
``numpy.random.Generator`` so that runs repeat. Images are ``[N, H, W]`` or
``[N, C, H, W]``; each image gets its own random transform, applied by bilinear
resampling about the image centre, with zeros outside the source image.
"""

from __future__ import annotations

import numpy as np


def random_affine(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    max_rotation: float = 15.0,
    scale: tuple[float, float] = (0.9, 1.1),
    max_translation: float = 0.1,
    flip_horizontal: bool = False,
    flip_vertical: bool = False,
) -> np.ndarray:
    """Each image rotated by up to ``max_rotation`` degrees, scaled by a factor in
    ``scale``, shifted by up to ``max_translation`` of its size and, if asked, flipped
    with probability 1/2 along each axis."""
    n = images.shape[0]
    angles = np.deg2rad(rng.uniform(-max_rotation, max_rotation, n))
    scales = rng.uniform(scale[0], scale[1], n)
    h, w = images.shape[-2:]
    shifts = rng.uniform(-max_translation, max_translation, (n, 2)) * np.array([h, w])
    flips = np.stack([
        np.where(rng.random(n) < 0.5, -1.0, 1.0) if flip_vertical else np.ones(n),
        np.where(rng.random(n) < 0.5, -1.0, 1.0) if flip_horizontal else np.ones(n),
    ], axis=1)
    return _resample(images, angles, scales, shifts, flips)


def rotate(images: np.ndarray, rng: np.random.Generator, max_degrees: float = 15.0) -> np.ndarray:
    return random_affine(images, rng, max_rotation=max_degrees, scale=(1.0, 1.0), max_translation=0.0)


def scale(images: np.ndarray, rng: np.random.Generator, low: float = 0.9, high: float = 1.1) -> np.ndarray:
    return random_affine(images, rng, max_rotation=0.0, scale=(low, high), max_translation=0.0)


def translate(images: np.ndarray, rng: np.random.Generator, max_fraction: float = 0.1) -> np.ndarray:
    return random_affine(images, rng, max_rotation=0.0, scale=(1.0, 1.0), max_translation=max_fraction)


def flip(images: np.ndarray, rng: np.random.Generator, horizontal: bool = True, vertical: bool = False) -> np.ndarray:
    """Each image mirrored with probability 1/2 along each requested axis (exact: no
    resampling)."""
    out = images.copy()
    if horizontal:
        pick = rng.random(images.shape[0]) < 0.5
        out[pick] = out[pick][..., ::-1]
    if vertical:
        pick = rng.random(images.shape[0]) < 0.5
        out[pick] = out[pick][..., ::-1, :]
    return out


def _resample(images: np.ndarray, angles: np.ndarray, scales: np.ndarray, shifts: np.ndarray,
              flips: np.ndarray) -> np.ndarray:
    """Bilinear sampling of every output pixel at its inverse-transformed source point."""
    squeeze = images.ndim == 3
    x = images[:, None] if squeeze else images
    n, c, h, w = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    # Inverse map: undo the shift, then rotate back, unscale and unflip.
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    dy = yy[None] - shifts[:, 0, None, None]
    dx = xx[None] - shifts[:, 1, None, None]
    sy = (cos * dy - sin * dx) / scales[:, None, None] * flips[:, 0, None, None] + cy
    sx = (sin * dy + cos * dx) / scales[:, None, None] * flips[:, 1, None, None] + cx
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    fy, fx = (sy - y0)[:, None], (sx - x0)[:, None]
    batch = np.arange(n)[:, None, None]
    out = np.zeros_like(x, dtype=np.result_type(x.dtype, np.float32))
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = y0 + oy, x0 + ox
            inside = ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w))[:, None]
            vals = x[batch, :, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]  # [N, H, W, C]
            vals = np.moveaxis(vals, -1, 1)
            out += np.where(inside, vals, 0) * wy * wx
    out = out.astype(images.dtype) if np.issubdtype(images.dtype, np.floating) else out
    return out[:, 0] if squeeze else out


__all__ = ["flip", "random_affine", "rotate", "scale", "translate"]
