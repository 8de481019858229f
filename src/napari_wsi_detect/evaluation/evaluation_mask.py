"""The Camelyon16 evaluation mask (level 5, tumour grown by 75 µm, ITC labels) from a
mask or polygons, and the pixel-size rules it depends on; `froc.py` scores detections
against it (its docstring maps every rule of the official script to a function)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import AnnotationError, WsiDetectError

L0_RESOLUTION = 0.243  # µm per level-0 pixel, fixed by the official script
EVALUATION_LEVEL = 5
EVALUATION_DOWNSAMPLE = 2**EVALUATION_LEVEL
GROWTH_UM = 75.0  # "the equivalent size of 5 tumour cells"
ITC_MAJOR_AXIS_UM = 275.0
EVAL_FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Largest evaluation mask (cells at downsample 32) built from a mask file or polygons:
# 2^28 cells is a 16384² level-5 grid (524k² level-0 px, several times any slide); the
# labels then take 1 GiB. Larger extents come from wrong coordinates, not slides.
MAX_EVAL_MASK_CELLS = 2**28


class EvaluationError(WsiDetectError):
    """An evaluation cannot be computed from the inputs given (no lesions, no slides…)."""


def check_level0_mpp(level0_mpp: float) -> float:
    """`level0_mpp` as a float, or EvaluationError when it is not a plausible pixel size."""
    try:
        value = float(level0_mpp)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or not 0.01 <= value <= 20.0:
        raise EvaluationError(
            f"the level-0 pixel size must be a number in [0.01, 20] µm/px, got {level0_mpp!r}"
        )
    return value


def growth_threshold_px(level0_mpp: float = L0_RESOLUTION, downsample: int = 32) -> float:
    """Distance (mask px) under which a non-tumour pixel joins a lesion.

    The official script uses 75 / (resolution · 2^level · 2): 37.5 µm on each side, so
    two lesions closer than 75 µm merge. Kept exactly so scores are comparable.
    """
    return GROWTH_UM / (check_level0_mpp(level0_mpp) * downsample * 2)


def itc_threshold_px(level0_mpp: float = L0_RESOLUTION, downsample: int = 32) -> float:
    """Major-axis length (mask px) under which a lesion is an ITC (275 µm)."""
    return ITC_MAJOR_AXIS_UM / (check_level0_mpp(level0_mpp) * downsample)


# --------------------------------------------------------------------------------------
# Evaluation masks


def evaluation_mask_from_mask(
    tumour_mask_level5: np.ndarray,
    level0_mpp: float = L0_RESOLUTION,
    downsample: int = EVALUATION_DOWNSAMPLE,
) -> tuple[np.ndarray, list[int]]:
    """Evaluation labels and ITC labels from a tumour mask at the evaluation level.

    `tumour_mask_level5` is a 2-D array (lesion labels or binary; anything > 0 is tumour)
    with one pixel per `downsample` level-0 pixels. Input labels are used as a binary mask
    only: as in the official script, lesions are the connected components *after* the
    75 µm growth, so two annotated lesions closer than 75 µm are one lesion.
    Returns (labels, itc_labels): labels 1..n (0 = background), itc_labels sorted.
    """
    from scipy import ndimage as ndi
    from skimage import measure

    mask = np.asarray(tumour_mask_level5)
    if mask.ndim == 3:  # an RGB(A) mask image: the script reads channel 0
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise EvaluationError(
            f"the tumour mask must be a 2-D image, got an array of shape {mask.shape}"
        )
    tumour = mask > 0
    labels = np.zeros(mask.shape, dtype=np.int32)
    if not tumour.any():
        return labels, []

    # Work inside the tumour bounding box plus a margin wider than the growth: the
    # distance test, hole filling (background outside the box stays connected to the
    # margin ring), raster-order labelling and translation-invariant moments are all
    # unchanged, and memory is bounded by the lesions, not the slide.
    threshold = growth_threshold_px(level0_mpp, downsample)
    margin = int(math.ceil(threshold)) + 2
    rows = np.flatnonzero(tumour.any(axis=1))
    cols = np.flatnonzero(tumour.any(axis=0))
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])
    crop = tumour[r0:r1, c0:c1]

    # Official: distance_transform_edt(255 - mask) < threshold, i.e. the distance of each
    # non-tumour pixel to the nearest tumour pixel (0 on tumour pixels).
    distance = ndi.distance_transform_edt(~crop)
    grown = ndi.binary_fill_holes(distance < threshold)
    crop_labels = measure.label(grown, connectivity=2)
    labels[r0:r1, c0:c1] = crop_labels

    itc_limit = itc_threshold_px(level0_mpp, downsample)
    itc = [
        int(region.label)
        for region in measure.regionprops(crop_labels)
        if region.axis_major_length < itc_limit
    ]
    return labels, sorted(itc)


PolygonLike = Any  # (N, 2) array of level-0 (x, y), or a shapely (Multi)Polygon


def rasterise_polygons(
    tumour_polygons: Sequence[PolygonLike],
    shape: tuple[int, int],
    exclusion_polygons: Sequence[PolygonLike] = (),
    downsample: int = EVALUATION_DOWNSAMPLE,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Binary tumour mask (rows, cols) at `downsample`: a mask pixel is tumour when its
    centre (level-0 `(c + 0.5)·downsample`) lies inside a tumour polygon and inside no
    hole or exclusion polygon. Exclusions are drawn last, as ASAP does for the Camelyon16
    masks (`_2` painted 0 over `_0`/`_1`). `origin` is the (row, col) of mask[0, 0] on
    the full grid at `downsample` (a window onto it; default the grid itself)."""
    check_mask_cells(shape, "the polygons")
    mask = np.zeros(shape, dtype=bool)
    for geom in tumour_polygons:
        for exterior, holes in _rings(geom):
            _fill(mask, exterior, True, downsample, origin)
            for hole in holes:
                _fill(mask, hole, False, downsample, origin)
    for geom in exclusion_polygons:
        for exterior, _holes in _rings(geom):
            _fill(mask, exterior, False, downsample, origin)
    return mask


def check_mask_cells(shape: tuple[int, int], what: str) -> None:
    """AnnotationError when a mask of `shape` cells would exceed MAX_EVAL_MASK_CELLS."""
    h, w = (int(v) for v in shape)
    if h * w > MAX_EVAL_MASK_CELLS:
        raise AnnotationError(
            f"{what} span a {w} x {h} cell evaluation mask at downsample "
            f"{EVALUATION_DOWNSAMPLE} ({h * w / 2**30:.1f} Gcells; the limit is "
            f"{MAX_EVAL_MASK_CELLS / 2**30:.2f}): no slide is that large, so the "
            "coordinates are not level-0 pixels of one slide (other units, or a damaged file)"
        )


def polygons_extent(polygons: Sequence[PolygonLike]) -> tuple[float, float, float, float] | None:
    """(min_x, min_y, max_x, max_y) level-0 of the polygons' exteriors, None if empty."""
    lo = np.array([np.inf, np.inf])
    hi = np.array([-np.inf, -np.inf])
    for geom in polygons:
        for exterior, _holes in _rings(geom):
            if len(exterior):
                lo = np.minimum(lo, exterior.min(axis=0))
                hi = np.maximum(hi, exterior.max(axis=0))
    if not np.all(np.isfinite(lo)):
        return None
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def evaluation_mask_from_polygons(
    tumour_polygons: Sequence[PolygonLike],
    slide_size: tuple[int, int] | None = None,
    level0_mpp: float = L0_RESOLUTION,
    exclusion_polygons: Sequence[PolygonLike] = (),
    downsample: int = EVALUATION_DOWNSAMPLE,
) -> tuple[np.ndarray, list[int]]:
    """Evaluation labels and ITC labels from tumour polygons in level-0 pixels.

    `slide_size` is the level-0 (width, height). When unknown (annotation files do not
    carry it) the mask covers the polygons plus a margin wider than the 75 µm growth;
    detections beyond it are FPs exactly as on a full-size mask.
    """
    if slide_size is not None:
        width, height = slide_size
        shape = (
            int(math.ceil(height / downsample)),
            int(math.ceil(width / downsample)),
        )
    else:
        extent = polygons_extent(list(tumour_polygons))
        max_x, max_y = (max(extent[2], 0.0), max(extent[3], 0.0)) if extent else (0.0, 0.0)
        margin = int(math.ceil(growth_threshold_px(level0_mpp, downsample))) + 4
        shape = (int(max_y // downsample) + margin, int(max_x // downsample) + margin)
    check_mask_cells(shape, "the tumour polygons")
    binary = rasterise_polygons(tumour_polygons, shape, exclusion_polygons, downsample)
    return evaluation_mask_from_mask(binary, level0_mpp, downsample)


def _rings(geom: PolygonLike) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """[(exterior (N,2) x,y, [holes])] of an array or a shapely Polygon/MultiPolygon."""
    if hasattr(geom, "geom_type"):
        if geom.is_empty:
            return []
        if geom.geom_type == "Polygon":
            return [
                (
                    np.asarray(geom.exterior.coords, dtype=float),
                    [np.asarray(r.coords, dtype=float) for r in geom.interiors],
                )
            ]
        if geom.geom_type in ("MultiPolygon", "GeometryCollection"):
            return [ring for part in geom.geoms for ring in _rings(part)]
        return []  # points and lines have no area
    coords = np.asarray(geom, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise EvaluationError(
            f"a polygon must be an (N, 2) array of level-0 (x, y); got shape {coords.shape}"
        )
    return [(coords, [])]


def _fill(mask: np.ndarray, ring: np.ndarray, value: bool, downsample: int,
          origin: tuple[int, int] = (0, 0)) -> None:
    from skimage.draw import polygon as draw_polygon

    if len(ring) < 3:
        return
    # skimage fills pixels whose integer centre is inside; mask pixel c has its centre at
    # level-0 (c + 0.5)·downsample, i.e. at c in the scaled-and-shifted frame below.
    cols = ring[:, 0] / downsample - 0.5 - origin[1]
    rows = ring[:, 1] / downsample - 0.5 - origin[0]
    rr, cc = draw_polygon(rows, cols, shape=mask.shape)
    mask[rr, cc] = value
