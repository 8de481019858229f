"""Clinical mitotic-count figures of point detections: the hotspot, density, per 10 HPF.

* Hotspot: the rectangle of `HOTSPOT_MM2` = 2.37 mm² with aspect 4:3 (width:height)
  holding the most detections, the convention of the MIDOG authors' mitotic-count work
  (Bertram, Aubreville et al.: "10 high-power fields" of 0.237 mm² each as one 4:3
  window). Found by a box filter over a count map: detections are binned into a grid of
  cells `window width / GRID_CELLS` wide, and the window slides cell by cell over the
  slide, tile by tile (`TILE`² positions at a time, only tiles with detections), so
  memory is bounded whatever the slide's size. The window's position is therefore searched in
  steps of 1/64 of its width (~28 µm); the count reported is exactly the number of
  detections in the rectangle reported. The window stays inside the slide (`extent0`);
  a slide smaller than the window gives the window clipped to it, with its real area.
* Density: count per mm² of tissue.
* Per 10 HPF: count scaled to 10 high-power fields of `HPF_MM2` = 0.237 mm² each, i.e.
  per 2.37 mm² (the area convention the MIDOG authors use; microscopes differ, 10 HPF
  are 1.5-3.1 mm² in practice, so the area is always stated with the figure).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import WsiDetectError

HPF_MM2 = 0.237  # one high-power field, mm² (10 HPF = 2.37 mm²)
HOTSPOT_MM2 = 10 * HPF_MM2
HOTSPOT_ASPECT = 4 / 3  # width / height
GRID_CELLS = 64  # count-map cells across the window's width: the position step
TILE = 1024  # window positions per tile side: count maps of ~9 MiB, whatever the slide
MIN_TISSUE = 0.5  # with a tissue mask, windows less covered than this are avoided


@dataclass(frozen=True)
class Hotspot:
    """The window with the highest count: level-0 px rectangle [x, x+w) × [y, y+h)."""

    x: float
    y: float
    w: float
    h: float
    count: int
    area_mm2: float
    tissue_fraction: float | None = None  # of the window, when a tissue mask was given

    @property
    def per_10_hpf(self) -> float:
        return per_10_hpf(self.count, self.area_mm2)

    def corners(self) -> list[tuple[float, float]]:
        """The rectangle's 4 corners (x, y), clockwise from the top-left."""
        x0, y0, x1, y1 = self.x, self.y, self.x + self.w, self.y + self.h
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_10_hpf": self.per_10_hpf}


def window_size_px(mpp: float, area_mm2: float = HOTSPOT_MM2,
                   aspect: float = HOTSPOT_ASPECT) -> tuple[float, float]:
    """(width, height) in level-0 px of a window of `area_mm2` with `aspect` = w / h."""
    _check_positive(mpp, "the pixel size (µm/px)")
    _check_positive(area_mm2, "the hotspot area (mm²)")
    _check_positive(aspect, "the hotspot aspect ratio")
    h_um = math.sqrt(area_mm2 * 1e6 / aspect)
    return aspect * h_um / mpp, h_um / mpp


def hotspot(xy0: Any, mpp: float, extent0: tuple[float, float],
            area_mm2: float = HOTSPOT_MM2, aspect: float = HOTSPOT_ASPECT,
            tissue: Any = None, min_tissue: float = MIN_TISSUE) -> Hotspot | None:
    """The `area_mm2` window (width:height = `aspect`) with the most of the points `xy0`
    ((N, 2) level-0 x, y), inside the slide of level-0 size `extent0` = (width, height),
    at `mpp` µm per level-0 pixel. None when there is no point on the slide.

    `tissue` (a `slide.tissue.TissueMask`): windows covering less than `min_tissue` of
    tissue are passed over when any window covers more (a window half off the section
    is not a field a pathologist would count); ties in count go to the window with more
    tissue, then to the middle of the tied positions (the points centred in the window;
    across tiles, the top-most). Points outside the slide are ignored.
    """
    width0, height0 = (float(extent0[0]), float(extent0[1]))
    if not (math.isfinite(width0) and math.isfinite(height0)) or width0 <= 0 or height0 <= 0:
        raise WsiDetectError(f"the slide extent must be positive (width, height), got {extent0}")
    pts = np.asarray(xy0, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < width0) & (pts[:, 1] >= 0) & (pts[:, 1] < height0)
    pts = pts[inside]
    if not len(pts):
        return None
    ww, wh = window_size_px(mpp, area_mm2, aspect)
    ww, wh = min(ww, width0), min(wh, height0)  # a slide smaller than the window
    cell = ww / GRID_CELLS
    ncols, nrows = math.ceil(width0 / cell), math.ceil(height0 / cell)
    kw = max(1, min(ncols, int(round(ww / cell))))
    kh = max(1, min(nrows, int(round(wh / cell))))
    w, h = min(kw * cell, width0), min(kh * cell, height0)
    grid = _Grid(cell, nrows - kh + 1, ncols - kw + 1, kh, kw, w, h, width0, height0)
    col = np.minimum((pts[:, 0] // cell).astype(np.int64), ncols - 1)
    row = np.minimum((pts[:, 1] // cell).astype(np.int64), nrows - 1)
    best_on_tissue: tuple | None = None  # (count, tissue, -row, -col) of the best window
    best_any: tuple | None = None
    for tr, tc in _occupied_tiles(row, col, grid):
        for key, qualified in _best_in_tile(row, col, tr, tc, grid, tissue, min_tissue):
            if qualified and (best_on_tissue is None or key > best_on_tissue):
                best_on_tissue = key
            if best_any is None or key > best_any:
                best_any = key
    chosen = best_on_tissue if best_on_tissue is not None else best_any
    assert chosen is not None  # some point lies on the slide, so some window holds it
    x, y = grid.origin(-chosen[2], -chosen[3])
    return Hotspot(
        x=x, y=y, w=w, h=h, count=_count_in(pts, x, y, w, h),
        area_mm2=w * h * mpp * mpp * 1e-6,
        tissue_fraction=(float(tissue.fraction(x, y, w, h)) if tissue is not None else None),
    )


@dataclass(frozen=True)
class _Grid:
    """Window positions: top-left cell (r, c), 0 <= r < rows, 0 <= c < cols; a window
    covers kh x kw cells of `cell` level-0 px."""

    cell: float
    rows: int
    cols: int
    kh: int
    kw: int
    w: float
    h: float
    width0: float
    height0: float

    def origin(self, r: Any, c: Any) -> Any:
        """Level-0 top-left of the window at cell (r, c). The last positions may reach
        past the slide edge by under a cell: they are pulled back inside (binning stays
        exact for all others, and the count is recounted from the points)."""
        x = np.clip(np.asarray(c) * self.cell, 0.0, max(self.width0 - self.w, 0.0))
        y = np.clip(np.asarray(r) * self.cell, 0.0, max(self.height0 - self.h, 0.0))
        return (float(x), float(y)) if np.ndim(x) == 0 else (x, y)


def _occupied_tiles(row: np.ndarray, col: np.ndarray, g: _Grid) -> list[tuple[int, int]]:
    """Tiles of TILE x TILE window positions holding a window with a point: a point in
    cell (r, c) is in the windows at [r - kh + 1, r] x [c - kw + 1, c] (clipped), which
    touch at most 2 x 2 tiles since kh, kw <= TILE."""
    tiles = set()
    for lo_r, lo_c in ((0, 0), (1, 0), (0, 1), (1, 1)):
        r = np.clip(row - (g.kh - 1) * lo_r, 0, g.rows - 1) // TILE
        c = np.clip(col - (g.kw - 1) * lo_c, 0, g.cols - 1) // TILE
        tiles.update(zip(r.tolist(), c.tolist(), strict=True))
    return sorted(tiles)


def _best_in_tile(row: np.ndarray, col: np.ndarray, tr: int, tc: int, g: _Grid,
                  tissue: Any, min_tissue: float) -> list[tuple[tuple, bool]]:
    """[(key, qualified)]: the best window of the tile among those on enough tissue and
    among all (key = (count, tissue fraction, -r, -c), larger is better)."""
    r0, c0 = tr * TILE, tc * TILE
    nr, nc = min(TILE, g.rows - r0), min(TILE, g.cols - c0)
    sel = ((row >= r0) & (row < r0 + nr + g.kh - 1)
           & (col >= c0) & (col < c0 + nc + g.kw - 1))
    counts = np.zeros((nr + g.kh - 1, nc + g.kw - 1), np.int64)
    np.add.at(counts, (row[sel] - r0, col[sel] - c0), 1)
    sat = np.zeros((counts.shape[0] + 1, counts.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(counts, axis=0), axis=1, out=sat[1:, 1:])
    kh, kw = g.kh, g.kw
    box = sat[kh:, kw:] - sat[:-kh, kw:] - sat[kh:, :-kw] + sat[:-kh, :-kw]
    if tissue is None:
        frac = np.zeros(box.shape, np.float32)
    else:
        xs, ys = g.origin(np.arange(r0, r0 + nr), np.arange(c0, c0 + nc))
        x0, y0 = np.meshgrid(xs, ys)
        frac = tissue.fractions(x0, y0, np.full_like(x0, g.w), np.full_like(y0, g.h)
                                ).astype(np.float32)
    out = []
    for qualified in (True, False):
        ok = (frac >= min_tissue) if (qualified and tissue is not None) else np.ones_like(
            box, bool)
        ok &= box > 0
        if not ok.any():
            continue
        best = box[ok].max()
        ties = ok & (box == best)
        top = frac[ties].max()
        rr, cc = np.nonzero(ties & (frac >= top))
        # Equal windows form a block (the same points, the window slid around them):
        # take its middle, so the points sit in the window's centre, not at a corner.
        k = int(np.argmin((rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2))
        r, c = rr[k], cc[k]
        out.append(((int(best), float(top), -(r0 + int(r)), -(c0 + int(c))), qualified))
    return out


def _count_in(pts: np.ndarray, x: float, y: float, w: float, h: float) -> int:
    return int(np.count_nonzero((pts[:, 0] >= x) & (pts[:, 0] < x + w)
                                & (pts[:, 1] >= y) & (pts[:, 1] < y + h)))


def density_per_mm2(count: int, tissue_area_mm2: float) -> float:
    """Detections per mm² of tissue; NaN when there is no tissue area to divide by."""
    if not (isinstance(tissue_area_mm2, (int, float)) and math.isfinite(tissue_area_mm2)
            and tissue_area_mm2 > 0):
        return math.nan
    return float(count) / float(tissue_area_mm2)


def per_10_hpf(count: int, area_mm2: float, hpf_mm2: float = HPF_MM2) -> float:
    """`count` found in `area_mm2`, scaled to 10 high-power fields of `hpf_mm2` each.

    The HPF area convention: one HPF = 0.237 mm², so 10 HPF = 2.37 mm² (the MIDOG
    authors' mitotic-count window); a count over exactly 2.37 mm² is its own per-10-HPF
    figure. NaN when `area_mm2` is not positive."""
    _check_positive(hpf_mm2, "the high-power field area (mm²)")
    if not (math.isfinite(area_mm2) and area_mm2 > 0):
        return math.nan
    return float(count) * 10.0 * hpf_mm2 / float(area_mm2)


def _check_positive(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise WsiDetectError(f"{what} must be a positive number, got {value!r}")
