"""Where the tumour is on a training slide: annotation files → a `TumourTruth`.

A training label is "tumour" when the patch centre lies inside a tumour outline
(METHODS §1 (5)). This module turns every annotation format a Camelyon-style training
set comes in into one object that answers that question exactly (`contains`), cheaply
for many cells at once (`raster`), and with a safety margin (`near`, used by hard
negative mining so that the border of a lesion is never mined as a "false" positive).

Formats: QuPath GeoJSON (`Tumor`/`Tumour`/`Metastasis` classes, holes as inner rings),
ASAP / Camelyon16 XML (groups `_0`, `_1`, `Tumor` positive; `_2`, `Exclusion` negative),
NCRF JSON (`{"positive": [...], "negative": [...]}`), or a mask image (PNG/TIFF, non-zero =
tumour, any downsample of level 0). All coordinates are level-0 pixels.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import unary_union

from ..errors import AnnotationError

TUMOUR_NAMES = {"tumor", "tumour", "metastasis", "metastases", "carcinoma", "positive",
                "_0", "_1"}
EXCLUDE_NAMES = {"_2", "exclusion", "exclude", "ignore", "negative"}
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


def _valid_polygon(points: list, source: Path) -> Polygon | None:
    pts = [(float(p[0]), float(p[1])) for p in points]
    if len(pts) < 3:
        return None
    poly = Polygon(pts)
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
        parts = _polygons(poly) if not isinstance(poly, Polygon) else [poly]
        poly = unary_union(parts) if parts else None
    if poly is None or poly.is_empty:
        return None
    return poly


def _truth_from_parts(positive: list, negative: list, source: Path) -> TumourTruth:
    if not positive:
        return TumourTruth()
    geom = unary_union(positive)
    if negative:
        geom = geom.difference(unary_union(negative))
    return PolygonTruth(geom)


def _class_name(props: dict) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    if cls is None:
        cls = props.get("name") or props.get("class")
    return str(cls).strip().lower() if cls is not None else ""


def _read_geojson(path: Path, data: object) -> TumourTruth:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError(
            f"{path}: not a GeoJSON FeatureCollection, a Feature list or an NCRF "
            "{'positive': [...]} file; export the tumour outlines from QuPath as GeoJSON"
        )
    named = [f for f in features if _class_name(f.get("properties") or {})]
    use_all = not named  # unclassified outlines: every polygon is tumour
    positive, negative = [], []
    for feat in features:
        geom = feat.get("geometry") or {}
        name = _class_name(feat.get("properties") or {})
        if use_all or name in TUMOUR_NAMES:
            target = positive
        elif name in EXCLUDE_NAMES:
            target = negative
        else:
            continue
        gtype = geom.get("type")
        if gtype == "Polygon":
            rings = [geom["coordinates"]]
        elif gtype == "MultiPolygon":
            rings = geom["coordinates"]
        else:
            continue  # points / lines carry no area
        for poly_rings in rings:
            if not poly_rings:
                continue
            try:
                poly = Polygon(poly_rings[0], poly_rings[1:])
            except (ValueError, TypeError) as exc:
                raise AnnotationError(f"{path}: invalid polygon coordinates ({exc})") from exc
            if not poly.is_valid:
                poly = shapely.make_valid(poly)
            if not poly.is_empty:
                target.append(poly)
    return _truth_from_parts(positive, negative, path)


def _read_ncrf(path: Path, data: dict) -> TumourTruth:
    def parts(key: str) -> list:
        out = []
        for entry in data.get(key, []) or []:
            poly = _valid_polygon(entry.get("vertices", []), path)
            if poly is not None:
                out.append(poly)
        return out

    return _truth_from_parts(parts("positive"), parts("negative"), path)


def _read_asap(path: Path) -> TumourTruth:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: not valid XML ({exc}); is it an ASAP annotation?") from exc
    positive, negative = [], []
    for ann in root.iter("Annotation"):
        if (ann.get("Type") or "").lower() not in {"polygon", "spline", "rectangle"}:
            continue
        group = (ann.get("PartOfGroup") or "").strip().lower()
        target = negative if group in EXCLUDE_NAMES else positive
        coords = sorted(ann.iter("Coordinate"), key=lambda c: float(c.get("Order", 0)))
        try:
            pts = [(float(c.get("X")), float(c.get("Y"))) for c in coords]
        except (TypeError, ValueError) as exc:
            raise AnnotationError(f"{path}: a coordinate is not a number ({exc})") from exc
        poly = _valid_polygon(pts, path)
        if poly is not None:
            target.append(poly)
    return _truth_from_parts(positive, negative, path)


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
    if suffix == ".xml":
        return _read_asap(path)
    if suffix in MASK_SUFFIXES:
        return _read_mask(path, slide_size)
    if suffix in {".json", ".geojson"}:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnnotationError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict) and "positive" in data:
            return _read_ncrf(path, data)
        return _read_geojson(path, data)
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
