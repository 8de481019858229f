"""Where the tumour is on a training slide: annotation files → a `TumourTruth`.

A training label is "tumour" when the patch centre lies inside a tumour outline
(METHODS §1 (5)). This module turns every annotation format a Camelyon-style training
set comes in into one object that answers that question exactly (`contains`), cheaply
for many cells at once (`raster`), and with a safety margin (`near`, used by hard
negative mining so that the border of a lesion is never mined as a "false" positive).

Formats: QuPath GeoJSON, ASAP / Camelyon16 XML and NCRF JSON, read by
`annotations.truth.read_tumour_polygons` (the same reader the FROC evaluation uses;
tumour = union of tumour polygons minus the union of exclusion polygons), or a mask image
(PNG/TIFF, non-zero = tumour, any downsample of level 0). All coordinates are level-0
pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import unary_union

from ..annotations.truth import ANNOTATION_SUFFIXES as POLYGON_SUFFIXES
from ..annotations.truth import read_tumour_polygons
from ..errors import AnnotationError

MASK_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}


class TumourTruth:
    """Tumour ground truth of one slide in level-0 pixels (empty for a normal slide)."""

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean array: is level-0 point (x, y) inside tumour?"""
        return np.zeros(np.broadcast(np.asarray(x), np.asarray(y)).shape, bool)

    def raster(self, downsample: float, shape: tuple[int, int]) -> np.ndarray:
        """(h, w) bool grid whose cell (i, j) covers level-0
        [j·ds, (j+1)·ds) × [i·ds, (i+1)·ds): True where the cell centre is tumour."""
        return np.zeros(shape, bool)

    def near(self, x: np.ndarray, y: np.ndarray, margin: float) -> np.ndarray:
        """True where (x, y) is inside tumour or within `margin` level-0 px of it."""
        return self.contains(x, y)

    @property
    def is_empty(self) -> bool:
        return True


class PolygonTruth(TumourTruth):
    """Tumour as a (Multi)Polygon with holes; exact point-in-polygon via shapely."""

    def __init__(self, geometry: Polygon | MultiPolygon) -> None:
        self.geometry = geometry
        shapely.prepare(self.geometry)
        self._buffered: dict[float, object] = {}

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(shapely.contains_xy(self.geometry, np.asarray(x, float),
                                              np.asarray(y, float)), bool)

    def raster(self, downsample: float, shape: tuple[int, int]) -> np.ndarray:
        # Exact at cell centres: shapely on the cells inside each polygon's bounding box
        # only, so the cost follows the tumour area, not the slide area.
        h, w = shape
        out = np.zeros((h, w), bool)
        for poly in _polygons(self.geometry):
            x0, y0, x1, y1 = poly.bounds
            c0, c1 = max(0, int(x0 // downsample)), min(w, int(x1 // downsample) + 1)
            r0, r1 = max(0, int(y0 // downsample)), min(h, int(y1 // downsample) + 1)
            if c1 <= c0 or r1 <= r0:
                continue
            for r in range(r0, r1, 512):  # row strips bound the temporary arrays
                rr = np.arange(r, min(r + 512, r1))
                ys = (rr[:, None] + 0.5) * downsample
                xs = (np.arange(c0, c1)[None, :] + 0.5) * downsample
                xs, ys = np.broadcast_arrays(xs, ys)
                out[rr[0]:rr[-1] + 1, c0:c1] |= shapely.contains_xy(poly, xs, ys)
        return out

    def near(self, x: np.ndarray, y: np.ndarray, margin: float) -> np.ndarray:
        if margin <= 0:
            return self.contains(x, y)
        grown = self._buffered.get(margin)
        if grown is None:
            grown = self.geometry.buffer(margin)
            shapely.prepare(grown)
            self._buffered[margin] = grown
        return np.asarray(shapely.contains_xy(grown, np.asarray(x, float),
                                              np.asarray(y, float)), bool)

    @property
    def is_empty(self) -> bool:
        return self.geometry.is_empty


class MaskTruth(TumourTruth):
    """Tumour as a label image at `downsample` level-0 px per mask px (non-zero = tumour)."""

    def __init__(self, mask: np.ndarray, downsample: float) -> None:
        self.mask = np.asarray(mask) != 0
        self.downsample = float(downsample)
        self._grown: dict[float, np.ndarray] = {}

    def _lookup(self, mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        col = np.floor(x / self.downsample).astype(np.int64)
        row = np.floor(y / self.downsample).astype(np.int64)
        ok = (row >= 0) & (row < mask.shape[0]) & (col >= 0) & (col < mask.shape[1])
        out = np.zeros(x.shape, bool)
        out[ok] = mask[row[ok], col[ok]]
        return out

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._lookup(self.mask, x, y)

    def raster(self, downsample: float, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        ys = (np.arange(h) + 0.5) * downsample
        xs = (np.arange(w) + 0.5) * downsample
        return self.contains(xs[None, :], ys[:, None])

    def near(self, x: np.ndarray, y: np.ndarray, margin: float) -> np.ndarray:
        if margin <= 0:
            return self.contains(x, y)
        grown = self._grown.get(margin)
        if grown is None:
            from scipy.ndimage import distance_transform_edt

            grown = distance_transform_edt(~self.mask) <= margin / self.downsample
            self._grown[margin] = grown
        return self._lookup(grown, x, y)

    @property
    def is_empty(self) -> bool:
        return not self.mask.any()


def _polygons(geom: object) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    if isinstance(geom, MultiPolygon):
        return list(geom.geoms)
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]


def _truth_from_parts(positive: list, negative: list) -> TumourTruth:
    if not positive:
        return TumourTruth()
    geom = unary_union(positive)
    if negative:
        geom = geom.difference(unary_union(negative))
    return PolygonTruth(geom)


def _read_mask(path: Path, slide_size: tuple[int, int] | None) -> TumourTruth:
    if slide_size is None:
        raise AnnotationError(f"{path}: a mask annotation needs the slide's size to be mapped")
    try:
        if path.suffix.lower() in {".tif", ".tiff"}:
            import tifffile

            mask = tifffile.imread(path, key=0)
        else:
            mask = np.array(Image.open(path))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad annotation
        raise AnnotationError(f"{path}: the tumour mask image could not be read ({exc})") from exc
    if mask.ndim == 3:
        mask = mask[..., 0]
    w0, h0 = slide_size
    ds = w0 / mask.shape[1]
    if not math.isclose(ds, h0 / mask.shape[0], rel_tol=0.05, abs_tol=1.0):
        raise AnnotationError(
            f"{path}: mask {mask.shape[1]}×{mask.shape[0]} does not have the slide's aspect "
            f"ratio ({w0}×{h0}); is it the mask of another slide?"
        )
    return MaskTruth(mask, ds)


def load_truth(path: str | Path | None, slide_size: tuple[int, int] | None = None
               ) -> TumourTruth:
    """Read a tumour annotation file (GeoJSON, ASAP XML, NCRF JSON, mask image).

    `None` means a normal slide (no tumour). `slide_size` (level-0 width, height) is only
    needed for mask images.
    """
    if path is None:
        return TumourTruth()
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in MASK_SUFFIXES:
        return _read_mask(path, slide_size)
    if path.name.lower().endswith(POLYGON_SUFFIXES):
        return _truth_from_parts(*read_tumour_polygons(path))
    raise AnnotationError(
        f"{path}: unknown annotation format {suffix!r}; use QuPath GeoJSON, ASAP XML, "
        "NCRF JSON or a mask image"
    )


ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")


def find_annotation(slide_path: str | Path, folders: list[Path]) -> Path | None:
    """The annotation of a slide by Camelyon16 layout: `<stem>.{geojson,json,xml}` or
    `<stem>.tumour-mask.tif` / `<stem>_mask.tif` beside the slide or in `folders`
    (case-insensitive stem, so `tumor_001.tif` finds `Tumor_001.xml`)."""
    slide_path = Path(slide_path)
    stem = slide_path.stem.lower()
    wanted = [stem + s for s in ANNOTATION_SUFFIXES]
    wanted += [stem + ".tumour-mask.tif", stem + "_mask.tif", stem + "_mask.png"]
    for folder in [slide_path.parent, *folders]:
        if not folder.is_dir():
            continue
        by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
        for name in wanted:
            if name in by_name and by_name[name] != slide_path:
                return by_name[name]
    return None
