"""What a finished run folder holds, as maps and masks other tools can take.

Every export (OME-Zarr, the QuPath overlay, the napari run reader) starts here, and
none of them names a task: the maps are the store's ``prob`` plus the extra maps a
detector's `finish` stored (engine/maps.py), the masks come from the detections the
detector's own post-processing gives with the values saved in summary.json.

Masks (`label_masks`), each on the grid of the map it was made from:

* detections whose items have a shapely ``geometry`` (regions, tumour contours) ->
  one label value per item (its ``label`` when it has one: the GeoJSON's region
  number), rasterised at cell centres (the polygons follow cell edges, so this is
  exact); a detector that returns its mask grid as ``extra["geometry"]`` gets the
  labels on that grid (the tumour detector's refined map);
* items with level-0 ``x``/``y`` (mitoses) -> the cell holding each detection;
* an ``extra["hotspot"]`` rectangle (x, y, w, h level-0) -> the cells whose centres
  lie inside it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MapImage:
    """A whole-slide map to export: `name` is a path-safe key, `title` for people."""

    name: str
    title: str
    values: np.ndarray  # float32 (rows, cols), NaN = not computed
    geometry: Any  # MapGeometry


@dataclass(frozen=True)
class LabelMask:
    """An integer mask (0 = background) on the grid of `geometry`."""

    name: str
    title: str
    labels: np.ndarray  # unsigned integers (rows, cols), the smallest type that fits
    geometry: Any
    properties: list[dict[str, Any]] = field(default_factory=list)  # per label value


@dataclass
class RunView:
    """A run's maps and masks (built from a DetectionResult or read from a folder)."""

    task: str
    detector: Any
    images: list[MapImage]
    masks: list[LabelMask]
    slide: dict[str, Any]
    store_id: str | None = None
    folder: Path | None = None

    @property
    def heatmap(self) -> MapImage:
        return self.images[0]


def _safe_name(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text.strip().lower())
    return keep.strip("-") or "mask"


def view_of(result: Any, folder: str | os.PathLike | None = None) -> RunView:
    """The RunView of a DetectionResult (its store's extra maps included)."""
    from ..engine.maps import read_maps

    det = result.detector
    heat_title = det.heatmap_name or f"{det.task} heatmap"
    images = [MapImage("heatmap", heat_title, np.asarray(result.heatmap, np.float32),
                       result.geometry)]
    maps = result.maps or (read_maps(result.store) if result.store is not None else {})
    for name in sorted(maps):
        layer = maps[name]
        images.append(MapImage(_safe_name(name), f"{det.task} {name}",
                               np.asarray(layer.values, np.float32), layer.geometry))
    store_id = None
    if result.store is not None:
        store_id = result.store.attrs.get("id")
    return RunView(det.task, det, images, label_masks(det, result.detections,
                                                      result.geometry),
                   dict(result.slide_info or {}), store_id,
                   Path(folder) if folder is not None else result.out_dir)


def load_run_result(folder: str | os.PathLike) -> Any:
    """A DetectionResult from a finished run folder: the stored maps, post-processed
    with the values its summary.json records (never the network). WsiDetectError for a
    folder that is not a run, a mixed output set, or a damaged store."""
    from ..detectors.run_folder import load_result

    return load_result(folder, need_summary=True)


def read_run(folder: str | os.PathLike) -> RunView:
    """The RunView of a finished run folder (see `load_run_result`)."""
    return view_of(load_run_result(folder), folder)


# -- masks -------------------------------------------------------------------------------------
def _centres(geometry: Any, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, ...]:
    s = geometry.cell_size0
    cols = (np.arange(c0, c1) + 0.5) * s
    rows = (np.arange(r0, r1) + 0.5) * s
    return np.meshgrid(cols, rows)


def _window(geometry: Any, xmin: float, ymin: float, xmax: float, ymax: float
            ) -> tuple[int, int, int, int]:
    s = geometry.cell_size0
    rows, cols = geometry.shape
    r0, c0 = max(0, math.floor(ymin / s)), max(0, math.floor(xmin / s))
    r1, c1 = min(rows, math.ceil(ymax / s) + 1), min(cols, math.ceil(xmax / s) + 1)
    return r0, r1, c0, c1


def label_dtype(n: int) -> Any:
    """The smallest unsigned type holding label values 0..n: a mitosis map of a whole
    slide has ~10^8 cells, so uint8 instead of uint32 saves hundreds of MB."""
    return np.uint8 if n < 2 ** 8 else np.uint16 if n < 2 ** 16 else np.uint32


def rasterise_geometries(items: list[Any], geometry: Any) -> np.ndarray:
    """Labels on the grid: each item's value (its `label`, else its rank) on the cells
    whose centres its shapely `geometry` contains; work ~ the items' bounding boxes."""
    import shapely

    top = max([int(getattr(i, "label", 0) or 0) for i in items] + [len(items)])
    out = np.zeros(geometry.shape, label_dtype(top))
    for k, item in enumerate(items, start=1):
        geom = item.geometry
        if geom.is_empty:
            continue
        r0, r1, c0, c1 = _window(geometry, *geom.bounds)
        if r0 >= r1 or c0 >= c1:
            continue
        xs, ys = _centres(geometry, r0, r1, c0, c1)
        inside = shapely.contains_xy(geom, xs, ys)
        value = int(getattr(item, "label", 0) or k)
        out[r0:r1, c0:c1][inside] = value
    return out


def rasterise_points(items: list[Any], geometry: Any) -> np.ndarray:
    out = np.zeros(geometry.shape, label_dtype(len(items)))
    rows, cols = geometry.shape
    for k, item in enumerate(items, start=1):
        r, c = geometry.level0_to_cell(float(item.x), float(item.y))
        if 0 <= r < rows and 0 <= c < cols:
            out[r, c] = k
    return out


def rasterise_rectangle(x: float, y: float, w: float, h: float, geometry: Any) -> np.ndarray:
    out = np.zeros(geometry.shape, np.uint8)
    r0, r1, c0, c1 = _window(geometry, x, y, x + w, y + h)
    if r0 < r1 and c0 < c1:
        xs, ys = _centres(geometry, r0, r1, c0, c1)
        out[r0:r1, c0:c1][(xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)] = 1
    return out


def _properties(items: list[Any]) -> list[dict[str, Any]]:
    props = []
    for k, item in enumerate(items, start=1):
        value = int(getattr(item, "label", 0) or k)
        extra: dict[str, Any] = {}
        if hasattr(item, "measurements"):
            extra = dict(item.measurements())
        elif hasattr(item, "to_dict"):
            extra = {key: v for key, v in item.to_dict().items()
                     if isinstance(v, (int, float, str)) and key != "label"}
        props.append({"label-value": value, **extra})
    return props


def label_masks(detector: Any, detections: Any, geometry: Any) -> list[LabelMask]:
    """The masks of `detections` (see the module docstring); empty masks are kept (a
    run that found nothing still says so)."""
    items = list(detections.items)
    extra = detections.extra or {}
    grid = extra.get("geometry") or geometry
    name = _safe_name(detector.layer_name or detector.task)
    title = detector.layer_name or detector.task
    masks: list[LabelMask] = []
    if items and all(hasattr(i, "geometry") for i in items):
        masks.append(LabelMask(name, title, rasterise_geometries(items, grid), grid,
                               _properties(items)))
    elif items and all(hasattr(i, "x") and hasattr(i, "y") for i in items):
        masks.append(LabelMask(name, title, rasterise_points(items, geometry), geometry,
                               _properties(items)))
    elif not items:
        masks.append(LabelMask(name, title, np.zeros(grid.shape, np.uint8), grid))
    spot = extra.get("hotspot")
    if spot is not None and all(hasattr(spot, k) for k in ("x", "y", "w", "h")):
        props = {"label-value": 1}
        props.update({k: v for k, v in (spot.to_dict() if hasattr(spot, "to_dict") else {}
                                        ).items() if isinstance(v, (int, float))})
        masks.append(LabelMask(f"{name}-hotspot", f"{title} hotspot",
                               rasterise_rectangle(spot.x, spot.y, spot.w, spot.h, geometry),
                               geometry, [props]))
    return masks


__all__ = ["LabelMask", "MapImage", "RunView", "label_masks", "load_run_result",
           "rasterise_geometries", "rasterise_points", "rasterise_rectangle", "read_run",
           "view_of"]
