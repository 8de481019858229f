"""Polygon helpers shared by the phantom renderer and its ground truth.

One rule decides tumour pixels everywhere (level-0 rendering, the level-5 mask, tests):
a pixel belongs to a polygon when its centre is inside (even-odd rule). Pixel (c, r) of
a raster whose pixels are `scale` level-0 pixels wide has its centre at
(x0 + (c + 0.5)·scale, y0 + (r + 0.5)·scale).
"""

from __future__ import annotations

import numpy as np


def raster_polygon(
    poly: np.ndarray, x0: float, y0: float, w: int, h: int, scale: float = 1.0
) -> np.ndarray:
    """Boolean (h, w) mask of the raster pixels whose centres lie inside `poly` (N, 2)."""
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    yc = y0 + (np.arange(h) + 0.5) * scale
    # rows that cross each edge (half-open in y so shared vertices count once)
    cross = (y1[None, :] <= yc[:, None]) != (y2[None, :] <= yc[:, None])
    rows, edges = np.nonzero(cross)
    if rows.size == 0:
        return np.zeros((h, w), dtype=bool)
    ye = yc[rows]
    xa, ya, xb, yb = x1[edges], y1[edges], x2[edges], y2[edges]
    xi = xa + (ye - ya) * (xb - xa) / (yb - ya)
    first = np.floor((xi - x0) / scale - 0.5).astype(np.int64) + 1
    first = np.clip(first, 0, w)
    toggles = np.bincount(rows * (w + 1) + first, minlength=h * (w + 1)).reshape(h, w + 1)
    return (np.cumsum(toggles[:, :w], axis=1) & 1).astype(bool)


def points_in_polygon(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd test of points (x, y) (1-D arrays) against polygon (N, 2)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    x1, y1 = poly[None, :, 0], poly[None, :, 1]
    x2, y2 = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    out = np.empty(x.shape, dtype=bool)
    chunk = max(1, 250_000 // len(poly))  # bounds the (points, edges) temporaries
    for i in range(0, x.size, chunk):
        px, py = x[i : i + chunk, None], y[i : i + chunk, None]
        cross = (y1 <= py) != (y2 <= py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        out[i : i + chunk] = ((cross & (px < xi)).sum(axis=1) & 1).astype(bool)
    return out


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area in squared input units."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def max_feret(poly: np.ndarray) -> float:
    """Longest distance between two vertices (the lesion's major axis, Camelyon style)."""
    d = poly[:, None, :] - poly[None, :, :]
    return float(np.sqrt((d**2).sum(-1).max()))
