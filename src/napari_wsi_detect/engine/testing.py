"""Small in-memory stand-ins for tests and benchmarks of the engine.

* `ArraySlide`: a `Slide` over a numpy RGB array (plus 2x-mean pyramid levels on demand).
* `BoxModel`: a dense "model" whose output at each cell is the mean darkness (1 - rgb/255)
  of that cell's 244 x 244 patch at stride S - an exact, analytic patch classifier for
  impulse tests of the geometry.
* `FractionMask`: a tissue mask with `fraction(x, y, w, h)` from a boolean level-0 array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..slide.base import Level, Slide
from .plan import PATCH


class ArraySlide(Slide):
    """A slide held in memory: level 0 = `rgb` (h, w, 3) uint8; extra levels are 2^k
    block means for each k in `extra_levels` (e.g. (1, 2) -> downsamples 2 and 4)."""

    def __init__(self, rgb: np.ndarray, mpp: float | None = 0.243,
                 extra_levels: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.path = Path("<array>")
        self.vendor = "array"
        self.mpp = mpp
        self.objective_power = None
        self._arrays = [np.ascontiguousarray(rgb[..., :3])]
        self.levels = [Level(shape=rgb.shape[:2], downsample=1.0)]
        for k in extra_levels:
            f = 2**k
            h, w = rgb.shape[0] // f, rgb.shape[1] // f
            small = rgb[: h * f, : w * f, :3].reshape(h, f, w, f, 3).mean(axis=(1, 3))
            self._arrays.append(np.round(small).astype(np.uint8))
            self.levels.append(Level(shape=(h, w), downsample=float(f)))
        self.reads = 0

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        self.reads += 1
        arr = self._arrays[level]
        ds = self.levels[level].downsample
        lx, ly = int(np.floor(x / ds)), int(np.floor(y / ds))
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, arr.shape[1]), min(ly + h, arr.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = arr[y0:y1, x0:x1]
        return out


class BoxModel(torch.nn.Module):
    """Mean darkness of each 244 x 244 patch at stride `stride`: (N, 3, H, W) input in
    [0, 1] (rgb / 255) -> (N, H', W'), H' = (H - 244) // stride + 1."""

    def __init__(self, stride: int, patch: int = PATCH) -> None:
        super().__init__()
        self.stride, self.patch = stride, patch
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        dark = 1.0 - x.mean(dim=1, keepdim=True)
        # Box sum via an integral image: exact and fast even for 244-px kernels.
        ii = F.pad(dark.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
        p, s = self.patch, self.stride
        a = ii[..., p::s, p::s]
        b = ii[..., p::s, 0 : ii.shape[-1] - p : s]
        c = ii[..., 0 : ii.shape[-2] - p : s, p::s]
        d = ii[..., 0 : ii.shape[-2] - p : s, 0 : ii.shape[-1] - p : s]
        n, m = min(a.shape[-2], c.shape[-2]), min(a.shape[-1], b.shape[-1])
        box = a[..., :n, :m] - b[..., :n, :m] - c[..., :n, :m] + d[..., :n, :m]
        return (box / (p * p)).float()[:, 0]


class FractionMask:
    """Tissue mask from a boolean level-0 array (exact fractions, for tests)."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask.astype(bool)
        self.downsample = 1.0
        self._ii = np.pad(self.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def fraction(self, x: int, y: int, w: int, h: int) -> float:
        hh, ww = self.mask.shape
        x0, y0 = min(max(x, 0), ww), min(max(y, 0), hh)
        x1, y1 = min(max(x + w, 0), ww), min(max(y + h, 0), hh)
        if w <= 0 or h <= 0:
            return 0.0
        ii = self._ii
        s = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
        return float(s) / float(w * h)
