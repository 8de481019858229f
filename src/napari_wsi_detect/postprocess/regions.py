"""Whole-slide map -> metastasis regions (Fast ScanNet post-processing, METHODS §1 (4)).

Threshold, morphological opening with a disk (radius in µm, converted to map cells),
8-connected components; each component is one detection scored by its maximum
probability; the slide score is the maximum of the map. Opening commutes with
thresholding for a flat structuring element (threshold decomposition), so we open the
binary mask, which is far cheaper than a grey-level opening of the map.

Hysteresis (`hysteresis` > 0): a cell at or above `threshold − hysteresis` is positive
when it is 8-connected, through such cells, to one at or above `threshold`. A lesion
whose map is speckled around the threshold (a stain the model saw little of) stays one
region instead of shattering, while isolated weak cells never start one.

Closing (`closing_um` > 0), after the opening: a binary closing with a disk of that
radius bridges gaps and fills holes narrower than about twice the radius, so the fragments
of one lesion that a blurred or faint scan leaves a few cells apart become one region,
the way a pathologist outlines it (the Camelyon16 reference merges tumour cells closer
than 75 µm into one lesion). The bridged cells count in the region's area; they never
change its score (the map's maximum over the region is still a cell at or above the threshold).

Polygons follow the cell edges in level-0 pixels (cell (r, c) owns
[c*S*d, (c+1)*S*d) x [r*S*d, (r+1)*S*d), engine/plan.py), clipped to the slide, holes kept
as inner rings; outer rings counter-clockwise and inner rings clockwise in (x, y) (the
GeoJSON right-hand rule; QuPath accepts either). Fast enough to re-run on every slider
move: everything is vectorised over the map and only the cropped positive area is opened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.polygon import orient

from ..engine.plan import MapGeometry
from ..errors import WsiDetectError

DEFAULT_THRESHOLD = 0.5
DEFAULT_OPENING_UM = 8.0  # ~2 cells at alpha = 2, 0.243 µm/px: removes 1-3 cell specks
DEFAULT_MIN_AREA_UM2 = 0.0
DEFAULT_HYSTERESIS = 0.0
DEFAULT_CLOSING_UM = 0.0

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    """One detected region. Coordinates are level-0 pixels (x, y)."""

    label: int  # 1-based, ordered by decreasing max_prob
    geometry: Polygon | MultiPolygon
    max_prob: float
    peak_x: float  # level-0 centre of the cell holding the maximum
    peak_y: float
    area_um2: float
    centroid_x: float
    centroid_y: float
    n_cells: int

    @property
    def polygons(self) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """[(outer ring (N, 2) x,y, [hole rings])] - closed rings, one per part."""
        parts = self.geometry.geoms if isinstance(self.geometry, MultiPolygon) else [self.geometry]
        return [
            (np.asarray(p.exterior.coords), [np.asarray(i.coords) for i in p.interiors])
            for p in parts
        ]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) level-0 px."""
        return tuple(float(v) for v in self.geometry.bounds)  # type: ignore[return-value]

    def measurements(self) -> dict[str, float]:
        return {
            "max_probability": round(float(self.max_prob), 6),
            "area_um2": round(float(self.area_um2), 3),
            "peak_x": round(float(self.peak_x), 2),
            "peak_y": round(float(self.peak_y), 2),
            "centroid_x": round(float(self.centroid_x), 2),
            "centroid_y": round(float(self.centroid_y), 2),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "n_cells": self.n_cells, **self.measurements()}


def opening_radius_cells(opening_um: float, geometry: MapGeometry, mpp: float | None = None
                         ) -> int:
    """Disk radius in map cells for a radius in µm (0 = no opening)."""
    if opening_um is None or opening_um <= 0:
        return 0
    cell_um = geometry.cell_size0 * (mpp or geometry.slide_mpp)
    return int(round(opening_um / cell_um))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx * xx + yy * yy) <= radius * radius


def slide_score(prob_map: Any) -> float:
    """Slide-level score: the maximum of the map over computed cells (NaN if none)."""
    p = np.asarray(prob_map, dtype=np.float32)
    if p.size == 0 or not np.isfinite(p).any():
        return float("nan")
    return float(np.nanmax(p))


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True in a 2-D bool mask: (row, col_start, col_end)."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    rr, cc = np.nonzero(np.diff(padded, axis=1))
    # Boundaries alternate start, end within each row (the zero padding guarantees it).
    return rr[0::2], cc[0::2], cc[1::2]


def _polygon(mask: np.ndarray, r_off: int, c_off: int, cell: float,
             bounds: tuple[float, float]) -> Polygon | MultiPolygon:
    """Union of the mask's cell runs, in level-0 px, clipped to the slide."""
    rows, c0, c1 = _runs(mask)
    boxes = shapely.box((c0 + c_off) * cell, (rows + r_off) * cell,
                        (c1 + c_off) * cell, (rows + r_off + 1) * cell)
    geom = boxes[0] if len(boxes) == 1 else shapely.union_all(boxes)
    w0, h0 = bounds
    xmin, ymin, xmax, ymax = geom.bounds
    if xmax > w0 or ymax > h0:
        geom = geom.intersection(shapely.box(0, 0, w0, h0))
    return _oriented(shapely.simplify(geom, 0))  # drop collinear vertices of the union


def _window(a: np.ndarray, h: int, axis: int, erode: bool) -> np.ndarray:
    """Centred 1-D AND (erode) / OR (dilate) over 2h+1 cells along `axis`, outside = False.
    Doubling passes of in-place shifted AND/OR: log2(2h+1) full-array byte operations."""
    if h == 0:
        return a
    n = a.shape[axis]
    shape = list(a.shape)
    shape[axis] = n + 2 * h
    res = np.zeros(shape, dtype=bool)
    idx = [slice(None)] * a.ndim

    def sl(start: int | None, stop: int | None) -> tuple[slice, ...]:
        idx[axis] = slice(start, stop)
        return tuple(idx)

    res[sl(h, h + n)] = a
    w, span = 2 * h + 1, 1
    while span < w:
        step = min(span, w - span)
        # res[i] covers [i, i+span); combining with res[i+step] covers [i, i+span+step).
        if erode:
            res[sl(None, -step)] &= res[sl(step, None)]
        else:
            res[sl(None, -step)] |= res[sl(step, None)]
        span += step
    return res[sl(0, n)]  # window starting at padded i = centred on original i


def _rect_decomposition(radius: int) -> list[tuple[int, int]]:
    """Half-sizes (hy, hx) of rectangles whose union is the digital disk of `radius`."""
    rects: dict[int, int] = {}
    for dy in range(radius + 1):
        hx = int(math.isqrt(radius * radius - dy * dy))
        rects[hx] = dy  # for equal widths keep the tallest
    return [(hy, hx) for hx, hy in rects.items()]


def binary_open_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening by the disk {dx^2 + dy^2 <= radius^2}; equals
    `ndi.binary_opening(mask, disk)` (outside = background) but several times faster on
    whole-slide maps: the disk is a union of rectangles, so erosion = AND of separable
    rectangle erosions and dilation = OR of rectangle dilations."""
    mask = np.asarray(mask, dtype=bool)
    if radius < 1:
        return mask.copy()
    rects = _rect_decomposition(radius)
    eroded: np.ndarray | None = None
    for hy, hx in rects:
        e = _window(_window(mask, hx, 1, True), hy, 0, True)
        eroded = e if eroded is None else (eroded & e)
    opened: np.ndarray | None = None
    for hy, hx in rects:
        dl = _window(_window(eroded, hx, 1, False), hy, 0, False)
        opened = dl if opened is None else (opened | dl)
    return opened


def binary_close_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing by the disk {dx^2 + dy^2 <= radius^2} (dilation, then erosion),
    computed on a background margin of `radius` so the slide edge does not erode it:
    equals `ndi.binary_closing(np.pad(mask, radius), disk)` cropped back. Extensive: every
    cell of `mask` stays set."""
    mask = np.asarray(mask, dtype=bool)
    if radius < 1 or not mask.any():
        return mask.copy()
    padded = np.pad(mask, radius)
    rects = _rect_decomposition(radius)
    dilated: np.ndarray | None = None
    for hy, hx in rects:
        d = _window(_window(padded, hx, 1, False), hy, 0, False)
        dilated = d if dilated is None else (dilated | d)
    closed: np.ndarray | None = None
    for hy, hx in rects:  # erosion by a union of rectangles = AND of the erosions
        e = _window(_window(dilated, hx, 1, True), hy, 0, True)
        closed = e if closed is None else (closed & e)
    return closed[radius:-radius, radius:-radius] | mask


def hysteresis_mask(p: np.ndarray, high: float, low: float) -> np.ndarray:
    """Cells >= `low` 8-connected (through cells >= `low`) to a cell >= `high`.
    (skimage.filters.apply_hysteresis_threshold does this with 4-connectivity and strict
    inequalities; the regions here are 8-connected and thresholds inclusive.)"""
    with np.errstate(invalid="ignore"):
        weak = p >= low  # NaN (not computed) is never positive
        strong = p >= high
    if low >= high or not strong.any():
        return strong
    labels, n = ndi.label(weak, structure=_EIGHT)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


def _oriented(geom: Any) -> Polygon | MultiPolygon:
    if isinstance(geom, Polygon):
        return orient(geom, 1.0)
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]
    if len(polys) == 1:
        return orient(polys[0], 1.0)
    return MultiPolygon([orient(p, 1.0) for p in polys])


def extract_regions(
    prob_map: Any,
    geometry: MapGeometry,
    mpp: float | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    opening_um: float = DEFAULT_OPENING_UM,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    hysteresis: float = DEFAULT_HYSTERESIS,
    closing_um: float = DEFAULT_CLOSING_UM,
) -> list[Region]:
    """Regions of the map with probability >= `threshold` (grown down to `threshold −
    hysteresis`, module docstring) after opening and then closing (radii in µm, 0 = none),
    largest score first. `mpp` (µm per
    level-0 px) defaults to the geometry's slide mpp."""
    p = np.asarray(prob_map, dtype=np.float32)
    if p.shape != geometry.shape:
        raise WsiDetectError(
            f"map of shape {p.shape} does not match its geometry {geometry.shape}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise WsiDetectError(f"threshold must be between 0 and 1, got {threshold}")
    if not 0.0 <= hysteresis <= 1.0:
        raise WsiDetectError(f"hysteresis must be between 0 and 1, got {hysteresis}")
    mpp = float(mpp or geometry.slide_mpp)
    binary = hysteresis_mask(p, threshold, threshold - hysteresis)
    if not binary.any():
        return []
    # Work on the bounding box of the positives (plus the disk) only.
    radius = opening_radius_cells(opening_um, geometry, mpp)
    ys, xs = np.nonzero(binary.any(axis=1))[0], np.nonzero(binary.any(axis=0))[0]
    r0, r1 = max(ys[0] - radius, 0), min(ys[-1] + radius + 1, p.shape[0])
    c0, c1 = max(xs[0] - radius, 0), min(xs[-1] + radius + 1, p.shape[1])
    sub = binary[r0:r1, c0:c1]
    if radius >= 1:
        sub = binary_open_disk(sub, radius)
    # A closing stays inside the positives' convex hull: the same box holds it.
    sub = binary_close_disk(sub, opening_radius_cells(closing_um, geometry, mpp))
    labels, n = ndi.label(sub, structure=_EIGHT)
    if n == 0:
        return []
    psub = p[r0:r1, c0:c1]
    cell = geometry.cell_size0
    cell_area_um2 = (cell * mpp) ** 2
    bounds = (geometry.width0, geometry.height0)
    regions = []
    # Per component, work in its bounding box only: total work ~ the positive area.
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == i
        n_cells = int(comp.sum())
        if n_cells * cell_area_um2 < min_area_um2:  # clipping only shrinks: cheap reject
            continue
        vals = np.where(comp, psub[sl], -np.inf)
        k = int(np.argmax(vals))
        pr, pc = divmod(k, comp.shape[1])
        geom = _polygon(comp, r0 + sl[0].start, c0 + sl[1].start, cell, bounds)
        area_um2 = geom.area * mpp * mpp
        if geom.is_empty or area_um2 < min_area_um2:
            continue
        px, py = geometry.cell_to_level0(r0 + sl[0].start + pr, c0 + sl[1].start + pc)
        cen = geom.centroid
        regions.append(Region(0, geom, float(vals.flat[k]), px, py, area_um2,
                              cen.x, cen.y, n_cells))
    regions.sort(key=lambda r: (-r.max_prob, r.peak_y, r.peak_x))
    return [
        Region(k + 1, r.geometry, r.max_prob, r.peak_x, r.peak_y, r.area_um2,
               r.centroid_x, r.centroid_y, r.n_cells)
        for k, r in enumerate(regions)
    ]


def region_summary(regions: list[Region]) -> dict[str, Any]:
    return {
        "count": len(regions),
        "total_area_um2": round(float(sum(r.area_um2 for r in regions)), 3),
        "largest_area_um2": round(float(max((r.area_um2 for r in regions), default=0.0)), 3),
    }


def cell_area_um2(geometry: MapGeometry) -> float:
    return (geometry.cell_size0 * geometry.slide_mpp) ** 2


__all__ = [
    "Region", "extract_regions", "slide_score", "opening_radius_cells", "region_summary",
    "DEFAULT_THRESHOLD", "DEFAULT_OPENING_UM", "DEFAULT_MIN_AREA_UM2", "DEFAULT_HYSTERESIS",
    "hysteresis_mask", "binary_close_disk", "DEFAULT_CLOSING_UM",
]
