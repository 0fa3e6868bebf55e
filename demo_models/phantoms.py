"""Procedural head phantoms in the spirit of Shepp-Logan, the training data of the demo generator.

Owns the phantom recipe only (pure numpy, seeded by the caller's ``numpy.random.Generator``); it reads and
writes no files. Used by train_phantom_dcgan.py (training data) and make_grid.py (the "real" half of the
README grid). Not part of the medigan_iso wheel.

A phantom is a 64x64 float32 image in [-1, 1] (background -1), built at 2x resolution and box-filtered down
so edges are anti-aliased:
  - an outer skull ellipse (bright, CT-like bone) and a brain ellipse inside it (grey tissue);
  - two tilted ventricles (dark), placed and shaped at random around the Shepp-Logan positions;
  - 2 to 5 small ellipses (lesions, brighter or darker than tissue) inside the brain;
  - a random global rotation, scale and shift, then Gaussian noise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IMAGE_SIZE_PX", "phantoms"]

IMAGE_SIZE_PX = 64
SUPERSAMPLE = 2


def _inside(x: np.ndarray, y: np.ndarray, cx, cy, ax, ay, angle_rad) -> np.ndarray:
    """Boolean mask of points inside ellipses; parameters broadcast over the leading batch axis."""
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    dx, dy = x - cx, y - cy
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def _col(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None]


def phantoms(n: int, *, rng: np.random.Generator, size: int = IMAGE_SIZE_PX) -> np.ndarray:
    """Return ``n`` random head phantoms, float32, shape (n, size, size), values in [-1, 1]."""
    hi = size * SUPERSAMPLE
    grid = (np.arange(hi, dtype=np.float32) + 0.5) / hi * 2.0 - 1.0
    gy, gx = np.meshgrid(-grid, grid, indexing="ij")  # y up, x right
    gx, gy = gx[None], gy[None]

    # Global pose: coordinates are mapped into the phantom's canonical frame.
    theta = rng.uniform(-0.45, 0.45, n)
    scale = rng.uniform(0.78, 1.0, n)
    shift_x = rng.uniform(-0.06, 0.06, n)
    shift_y = rng.uniform(-0.06, 0.06, n)
    px = (gx - _col(shift_x)) / _col(scale)
    py = (gy - _col(shift_y)) / _col(scale)
    c, s = np.cos(_col(theta)), np.sin(_col(theta))
    x = px * c + py * s
    y = -px * s + py * c

    img = np.zeros((n, hi, hi), dtype=np.float32)
    zeros = np.zeros(n)

    skull_ax = rng.uniform(0.64, 0.74, n)
    skull_ay = rng.uniform(0.84, 0.94, n)
    thickness = rng.uniform(0.03, 0.07, n)
    skull = _inside(x, y, 0, 0, _col(skull_ax), _col(skull_ay), 0)
    img[skull] = np.broadcast_to(_col(rng.uniform(0.85, 1.0, n)), img.shape)[skull]

    brain_ax, brain_ay = skull_ax - thickness, skull_ay - thickness
    brain_cy = rng.uniform(-0.02, 0.0, n)
    brain = _inside(x, y, 0, _col(brain_cy), _col(brain_ax), _col(brain_ay), 0)
    tissue = rng.uniform(0.22, 0.38, n)
    img[brain] = np.broadcast_to(_col(tissue), img.shape)[brain]

    # Two ventricles, mirrored around the midline, tilted like Shepp-Logan's (+-18 degrees).
    vent_dark = rng.uniform(0.10, 0.20, n)
    for side in (-1.0, 1.0):
        cx = side * rng.uniform(0.14, 0.26, n) * brain_ax / 0.66
        cy = rng.uniform(-0.12, 0.08, n)
        ax = rng.uniform(0.07, 0.14, n)
        ay = rng.uniform(0.20, 0.36, n)
        tilt = side * np.deg2rad(rng.uniform(8.0, 26.0, n))
        vent = _inside(x, y, _col(cx), _col(cy), _col(ax), _col(ay), _col(tilt)) & brain
        img -= np.where(vent, _col(vent_dark), 0.0).astype(np.float32)

    # Small features (lesions): additive, brighter or darker, kept inside the brain.
    count = rng.integers(2, 6, n)
    for k in range(5):
        active = k < count
        r = np.sqrt(rng.uniform(0.0, 1.0, n)) * 0.6
        phi = rng.uniform(0.0, 2.0 * np.pi, n)
        cx = r * np.cos(phi) * brain_ax
        cy = r * np.sin(phi) * brain_ay + brain_cy
        ax = rng.uniform(0.03, 0.11, n)
        ay = rng.uniform(0.03, 0.11, n)
        angle = rng.uniform(0.0, np.pi, n)
        delta = np.where(rng.uniform(size=n) < 0.7, rng.uniform(0.08, 0.30, n), -rng.uniform(0.06, 0.14, n))
        delta = np.where(active, delta, zeros)
        feat = _inside(x, y, _col(cx), _col(cy), _col(ax), _col(ay), _col(angle)) & brain
        img += np.where(feat, _col(delta), 0.0).astype(np.float32)

    img = img.reshape(n, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))
    img += (rng.standard_normal(img.shape) * _col(rng.uniform(0.004, 0.03, n))).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)
