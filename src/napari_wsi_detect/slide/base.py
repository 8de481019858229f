"""The `Slide` interface every backend implements.

Coordinate convention (used everywhere in the package): level-0 pixels, origin at the
top-left corner of the top-left pixel, x to the right (columns), y down (rows). Arrays
are (rows, cols, 3) = (y, x, rgb) uint8.

A backend implements `_read_native(level, x, y, w, h)` for the levels stored in the file
(same convention as `read_region`); this class adds synthetic levels (2x area-mean
downsamples computed tile by tile, so nothing ever needs a whole level 0 in memory),
argument checking, compositing helpers and the dask pyramid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SlideReadError
from ._cache import TileCache
from .levels import SYNTHETIC_TILE, Level, round_half_up, synthetic_levels

if TYPE_CHECKING:  # pragma: no cover
    import dask.array as da

_SYNTHETIC_CACHE_BYTES = 96 * 2**20


@dataclass
class SlideInfo:
    path: Path
    vendor: str
    mpp: float | None
    objective_power: float | None
    associated: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)


def composite_on_white(arr: np.ndarray) -> np.ndarray:
    """(h, w, 4) straight-alpha RGBA or (h, w, 3) RGB -> (h, w, 3) RGB on white."""
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 3:
        return arr
    rgb = arr[:, :, :3]
    alpha = arr[:, :, 3]
    if _all_opaque(arr):
        return _copy_rgb(arr)
    a = alpha[:, :, None].astype(np.uint16)
    # Integer form of rgb*a + 255*(1-a), rounded: exact for a in {0, 255}.
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _all_opaque(rgba: np.ndarray) -> bool:
    if rgba.flags.c_contiguous and rgba.dtype == np.uint8:
        # One uint32 per pixel: alpha is the top byte on little-endian machines.
        px = rgba.view(np.uint32)
        if not np.little_endian:  # pragma: no cover
            return bool(rgba[:, :, 3].min() == 255)
        # Alpha is the top byte: every pixel >= 0xFF000000 iff all alpha are 255.
        return bool(px.min() >= 0xFF000000) if px.size else True
    return bool(rgba[:, :, 3].min() == 255) if rgba.size else True


def _copy_rgb(rgba: np.ndarray) -> np.ndarray:
    """Contiguous RGB from RGBA. Plane by plane: numpy's generic strided copy of 3 of
    every 4 bytes is ~6x slower, and it ran once per OpenSlide read."""
    out = np.empty(rgba.shape[:2] + (3,), np.uint8)
    for c in range(3):
        out[:, :, c] = rgba[:, :, c]
    return out


class Slide:
    """An opened whole-slide image (see the module docstring for conventions).

    Reads are thread-safe: the engine calls `read_region` from several threads.
    """

    path: Path
    levels: list[Level]
    mpp: float | None
    objective_power: float | None
    vendor: str
    properties: dict[str, Any]
    # "rgb", or "greyscale" when the file stores one grey channel (reads still return
    # RGB, R = G = B): the tissue mask and the H&E models need colour.
    colour: str = "rgb"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._n_native = 0
        self._synthetic_cache = TileCache(_SYNTHETIC_CACHE_BYTES)
        self._pyramid: list[da.Array] | None = None
        self.properties = {}

    def _set_levels(self, native: list[Level]) -> None:
        """Backends call this once with the file's own levels, largest first."""
        self._n_native = len(native)
        self.levels = list(native) + synthetic_levels(native)

    # -- for backends -------------------------------------------------------------
    def _read_native(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) RGB uint8 of native `level`; same convention as `read_region`."""
        raise NotImplementedError

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail...) as (h, w, 3) RGB uint8."""
        raise SlideReadError(
            f"{self.path.name} has no associated image {name!r}; it has: "
            f"{', '.join(self.associated_names) or 'none'}"
        )

    @property
    def associated_names(self) -> list[str]:
        return []

    def segment_shape(self, level: int) -> tuple[int, int]:
        """(h, w) of the block a read of `level` decodes at least once (a native tile or
        strip, a synthetic tile): the cost unit of sparse reads."""
        lv = self.levels[level]
        if lv.tile is not None and not lv.synthetic:
            return (int(lv.tile[0]), int(lv.tile[1]))
        return (SYNTHETIC_TILE, SYNTHETIC_TILE)

    def _close_backend(self) -> None:
        pass

    # -- public -------------------------------------------------------------------
    @property
    def native_level_count(self) -> int:
        """Levels stored in the file (the first ones); the rest are synthetic. Works for
        subclasses that set `levels` themselves instead of calling `_set_levels`."""
        if self._n_native:
            return self._n_native
        return sum(1 for lv in getattr(self, "levels", []) if not lv.synthetic)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Return the (h, w, 3) RGB uint8 region whose top-left is (x, y) *in level-0
        pixels*, with w, h in pixels *of `level`*. Outside the slide reads as white."""
        if self._closed:
            raise SlideReadError(f"{self.path.name} is closed")
        if not 0 <= level < len(self.levels):
            raise SlideReadError(
                f"level {level} does not exist: {self.path.name} has levels 0..{len(self.levels) - 1}"
            )
        w, h = int(w), int(h)
        if w < 0 or h < 0:
            raise SlideReadError(f"negative region size {w}x{h}")
        if w == 0 or h == 0:
            return np.full((h, w, 3), 255, np.uint8)
        if level < self.native_level_count:
            return self._read_native(level, int(x), int(y), w, h)
        ds = self.levels[level].downsample
        return self._read_synthetic(level, round_half_up(x / ds), round_half_up(y / ds), w, h)

    def pyramid(self) -> list[da.Array]:
        """Lazy (H, W, 3) uint8 dask arrays, largest first; one read per chunk."""
        if self._pyramid is None:
            from .pyramid import build_pyramid

            self._pyramid = build_pyramid(self)
        return self._pyramid

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0, OpenSlide's order."""
        h, w = self.levels[0].shape
        return (w, h)

    def best_level_for_downsample(self, downsample: float) -> int:
        best = 0
        for i, lv in enumerate(self.levels):
            if lv.downsample <= downsample * 1.0001:
                best = i
        return best

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._synthetic_cache.clear()
            self._close_backend()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        shape = self.levels[0].shape if getattr(self, "levels", None) else "?"
        return f"<{type(self).__name__} {getattr(self, 'path', '?')} {shape} mpp={getattr(self, 'mpp', None)}>"

    # -- synthetic levels -----------------------------------------------------------
    def _read_level_px(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Like read_region but with the origin in pixels of `level` itself."""
        if level < self.native_level_count:
            ds = self.levels[level].downsample
            return self._read_native(level, round_half_up(lx * ds), round_half_up(ly * ds), w, h)
        return self._read_synthetic(level, lx, ly, w, h)

    def _read_synthetic(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        lh, lw = self.levels[level].shape
        out = np.full((h, w, 3), 255, np.uint8)
        x0, x1 = max(lx, 0), min(lx + w, lw)
        y0, y1 = max(ly, 0), min(ly + h, lh)
        if x0 >= x1 or y0 >= y1:
            return out
        t = SYNTHETIC_TILE
        for ty in range(y0 // t, (y1 - 1) // t + 1):
            for tx in range(x0 // t, (x1 - 1) // t + 1):
                tile = self._synthetic_tile(level, tx, ty)
                # Intersection of the tile with the request, in level pixels.
                ix0, iy0 = max(x0, tx * t), max(y0, ty * t)
                ix1 = min(x1, tx * t + tile.shape[1])
                iy1 = min(y1, ty * t + tile.shape[0])
                out[iy0 - ly : iy1 - ly, ix0 - lx : ix1 - lx] = tile[
                    iy0 - ty * t : iy1 - ty * t, ix0 - tx * t : ix1 - tx * t
                ]
        return out

    def _coverage(self, level: int, start: int, n: int, axis: int) -> np.ndarray:
        """Fraction of a full pixel that pixels start..start+n-1 of `level` cover along
        `axis` (0 rows, 1 columns), measured on level 0: 1 inside, less for a partial
        last pixel, 0 beyond the slide."""
        ds = self.levels[level].downsample
        extent0 = self.levels[0].shape[axis]
        i = np.arange(start, start + n, dtype=np.float64)
        cover = (np.minimum((i + 1) * ds, extent0) - i * ds) / ds
        return np.clip(cover, 0.0, 1.0).astype(np.float32)

    def _synthetic_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        key = (level, tx, ty)
        tile = self._synthetic_cache.get(key)
        if tile is not None:
            return tile
        t = SYNTHETIC_TILE
        lh, lw = self.levels[level].shape
        th, tw = min(t, lh - ty * t), min(t, lw - tx * t)
        sx, sy = 2 * tx * t, 2 * ty * t
        src = self._read_level_px(level - 1, sx, sy, 2 * tw, 2 * th)
        tile = area_downsample_2x(
            src,
            self._coverage(level - 1, sy, 2 * th, axis=0),
            self._coverage(level - 1, sx, 2 * tw, axis=1),
        )
        self._synthetic_cache.put(key, tile)
        return tile


def area_downsample_2x(
    src: np.ndarray, row_weight: np.ndarray, col_weight: np.ndarray
) -> np.ndarray:
    """Area mean of each 2x2 block of `src` (2h, 2w, 3). Each source row/column counts
    with the fraction of a full pixel it really covers (0 outside the slide, less than 1
    for a partial last row), so odd-sized levels neither fade to white along their last
    row and column nor over-weight a half pixel."""
    if row_weight.min() == 1.0 and col_weight.min() == 1.0:
        # Interior tiles (nearly all): exact integer mean of 4, rounded half up.
        acc = src[0::2, 0::2].astype(np.uint16)
        acc += src[1::2, 0::2]
        acc += src[0::2, 1::2]
        acc += src[1::2, 1::2]
        acc += 2
        acc >>= 2
        return acc.astype(np.uint8)
    h2, w2 = src.shape[:2]
    weighted = src.astype(np.float32) * row_weight[:, None, None] * col_weight[None, :, None]
    sums = weighted.reshape(h2 // 2, 2, w2 // 2, 2, 3).sum(axis=(1, 3))
    norm = row_weight.reshape(-1, 2).sum(1)[:, None] * col_weight.reshape(-1, 2).sum(1)[None, :]
    out = sums / np.maximum(norm, 1e-6)[:, :, None]
    out[norm <= 0] = 255.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
