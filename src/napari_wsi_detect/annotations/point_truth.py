"""Point annotations (mitoses) from the formats pathologists and challenges use.

Every reader gives `PointSet`s: level-0 (x, y) pixel centroids per case, plus scores
when the file has them. Formats:

* QuPath GeoJSON: Point and MultiPoint features (annotations or detections); other
  geometries (a hotspot rectangle, tumour outlines) are skipped, but a file with
  features and no point at all is refused (it is not a point file).
* ASAP XML: Dot and PointSet annotations (polygons skipped, same rule).
* MIDOG++ COCO JSON: one case per image (`file_name` without its suffix); each box's
  centre is a point; category "mitotic figure" is truth, "not mitotic figure" (hard
  negatives, imposters) is counted in `excluded`. Boxes are [x1, y1, x2, y2] as MIDOG++
  writes them, or COCO's [x, y, w, h] when some box has x2 <= x1 or y2 <= y1.
* CSV: `x,y[,score][,label]` per row (level-0 px; `;` or tab separators when the
  first line has them and no comma). A first line with no number in its
  first two fields is a header; with a header, columns are found by name (`x`, `y`,
  `score`|`probability`|`prob`, `label`|`class`, and `image`|`case`|`slide`|`file`
  for several cases in one file).

Classes: points classified (GeoJSON classification, ASAP group, COCO category, CSV
label) as a non-mitosis (`NEGATIVE_LABELS`: imposter, hard negative, not mitotic
figure, 0, false, ...) are not truth; they are counted in `PointSet.excluded`. Any other
class, or none, is a mitosis. Bad files raise AnnotationError naming the file.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnnotationError
from .geojson import MAX_COORDINATE, coordinate_too_large, load_geojson_object, parse_geojson

NEGATIVE_LABELS = frozenset({
    "0", "false", "no", "negative", "imposter", "impostor", "imposters", "hard negative",
    "hard_negative", "hard-negative", "not mitotic figure", "non-mitotic figure",
    "non mitotic figure", "nonmitotic figure", "non-mitosis", "non mitosis", "nonmitosis",
    "mitotic-like figure", "mitosis-like", "mitotic figure lookalike", "lookalike",
    "look-alike", "not mitosis", "no mitosis",
})
SCORE_KEYS = ("score", "probability", "max_probability", "prob")
_SUFFIX = re.compile(r"\.(geojson\.gz|geojson|json|xml|csv|tiff?|png|jpe?g|svs|ndpi|mrxs)$",
                     re.IGNORECASE)


@dataclass
class PointSet:
    """Points of one case: `xy` (N, 2) level-0 px; `scores` (N,) or None."""

    case_id: str
    xy: np.ndarray
    source: Path
    scores: np.ndarray | None = None
    excluded: int = 0  # points of a non-mitosis class left out
    mpp: float | None = None  # level-0 µm/px, when the source records it

    def __len__(self) -> int:
        return len(self.xy)


def is_negative_label(label: Any) -> bool:
    if label is None:
        return False
    text = str(label).strip().lower()
    if not text:
        return False
    try:
        return float(text) == 0.0
    except ValueError:
        return text in NEGATIVE_LABELS


def case_id_from_path(path: str | os.PathLike) -> str:
    """Case id of a file: its name without format suffixes (`001.tiff` -> `001`)."""
    name = Path(path).name
    return _SUFFIX.sub("", name) or name


# --- dispatch --------------------------------------------------------------------------------
def read_point_sets(path: str | os.PathLike) -> list[PointSet]:
    """The point sets of one file (one per case; COCO and multi-case CSV give several)."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise AnnotationError(f"point file not found: {path}")
    if name.endswith(".xml"):
        return [read_asap_points(path)]
    if name.endswith(".csv"):
        return read_csv_points(path)
    if name.endswith((".geojson", ".geojson.gz", ".json")):
        obj = load_geojson_object(path)
        if isinstance(obj, dict) and "images" in obj and "annotations" in obj:
            return coco_points(obj, path)
        return [geojson_points(obj, path)]
    raise AnnotationError(
        f"{path.name}: unknown point-annotation format; use QuPath GeoJSON, ASAP XML, "
        "MIDOG++ COCO JSON or CSV (x,y[,score][,label])")


# --- GeoJSON ---------------------------------------------------------------------------------
def read_geojson_points(path: str | os.PathLike) -> PointSet:
    path = Path(path)
    return geojson_points(load_geojson_object(path), path)


def geojson_points(obj: Any, path: Path) -> PointSet:
    features = parse_geojson(obj, source=path.name)
    xy, scores, excluded, any_score = [], [], 0, False
    for f in features:
        g = f.geometry
        pts = ([g["coordinates"]] if g["type"] == "Point"
               else g["coordinates"] if g["type"] == "MultiPoint" else None)
        if pts is None:
            continue
        if is_negative_label(f.classification):
            excluded += len(pts)
            continue
        score = next((f.measurements[k] for k in SCORE_KEYS if k in f.measurements), None)
        any_score |= score is not None
        for p in pts:
            xy.append(p[:2])
            scores.append(math.nan if score is None else score)
    if features and not xy and not excluded:
        raise AnnotationError(
            f"{path.name} holds {len(features)} feature(s) but no Point or MultiPoint: it "
            "is not a point annotation file (mitoses are QuPath Point objects)")
    return PointSet(case_id_from_path(path), _xy(xy, path), path,
                    _scores(scores, path) if any_score else None, excluded)


# --- ASAP --------------------------------------------------------------------------------------
def read_asap_points(path: str | os.PathLike) -> PointSet:
    from .asap import read_asap_xml

    path = Path(path)
    annotations = read_asap_xml(path)
    xy, excluded = [], 0
    for a in annotations:
        if a.kind != "points":
            continue
        if is_negative_label(a.group):
            excluded += len(a.coords)
        else:
            xy.extend(a.coords.tolist())
    if annotations and not xy and not excluded:
        raise AnnotationError(
            f"{path.name} holds only polygons: no Dot or PointSet annotation to use as "
            "point truth")
    return PointSet(case_id_from_path(path), _xy(xy, path), path, None, excluded)


# --- MIDOG++ COCO ------------------------------------------------------------------------------
def read_coco_points(path: str | os.PathLike) -> list[PointSet]:
    path = Path(path)
    return coco_points(load_geojson_object(path), path)


def coco_points(obj: Any, path: Path) -> list[PointSet]:
    images, anns, cats = (obj.get(k) for k in ("images", "annotations", "categories"))
    if not isinstance(images, list) or not isinstance(anns, list):
        raise AnnotationError(f"{path.name}: a COCO file needs 'images' and 'annotations' lists")
    negative = set()
    for c in cats if isinstance(cats, list) else []:
        if isinstance(c, dict) and is_negative_label(c.get("name")):
            negative.add(c.get("id"))
    cases: dict[Any, tuple[str, list, list]] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise AnnotationError(f"{path.name}: image {i} has no 'id' and 'file_name'")
        cases[im["id"]] = (case_id_from_path(im["file_name"]), [], [])
    boxes = []
    for i, a in enumerate(anns):
        box = a.get("bbox") if isinstance(a, dict) else None
        if (not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise AnnotationError(f"{path.name}: annotation {i} has no numeric 4-value 'bbox'")
        if a.get("image_id") not in cases:
            raise AnnotationError(f"{path.name}: annotation {i} refers to image "
                                  f"{a.get('image_id')!r}, which 'images' does not list")
        boxes.append(box)
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    corners = bool(np.all((arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1])))
    centres = ((arr[:, :2] + arr[:, 2:]) / 2 if corners else arr[:, :2] + arr[:, 2:] / 2)
    for a, c in zip(anns, centres, strict=True):
        _, keep, drop = cases[a["image_id"]]
        (drop if a.get("category_id") in negative else keep).append(c.tolist())
    return [PointSet(cid, _xy(keep, path), path, None, len(drop))
            for cid, keep, drop in cases.values()]


# --- CSV ---------------------------------------------------------------------------------------
_COLUMNS = {
    "x": ("x", "x_px", "centroid_x"),
    "y": ("y", "y_px", "centroid_y"),
    "score": SCORE_KEYS,
    "label": ("label", "class", "category", "classification"),
    "case": ("image", "case", "slide", "file", "file_name", "filename", "image_id"),
}


def read_csv_points(path: str | os.PathLike) -> list[PointSet]:
    """Point sets of a CSV (module docstring); one per case column value, else one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"cannot read point file {path}: {exc}") from exc
    head = text.lstrip().split("\n", 1)[0]
    # Comma-separated; a first line with semicolons or tabs and no comma (European
    # spreadsheets, MIDOG's own tables) is read with that separator.
    delimiter = next((d for d in (";", "\t") if d in head and "," not in head), ",")
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter)
            if any(f.strip() for f in r)]
    if not rows:
        return [PointSet(case_id_from_path(path), _xy([]), path)]
    first = [f.strip() for f in rows[0]]
    cols = {"x": 0, "y": 1, "score": 2, "label": 3, "case": None}
    start = 0
    if not any(_number(f) is not None for f in first[:2]):  # a header line
        names = [f.lower() for f in first]
        cols = {k: next((names.index(n) for n in alias if n in names), None)
                for k, alias in _COLUMNS.items()}
        if cols["x"] is None or cols["y"] is None:
            raise AnnotationError(
                f"{path.name}: the header {','.join(first)[:80]!r} names no x and y "
                "columns; expected x,y[,score][,label]")
        start = 1
    groups: dict[str, tuple[list, list, list]] = {}
    default = case_id_from_path(path)
    for number, row in enumerate(rows[start:], start=start + 1):
        row = [f.strip() for f in row]

        def field(key: str, row: list[str] = row) -> str | None:
            k = cols[key]
            return row[k] if k is not None and k < len(row) and row[k] != "" else None

        x, y = _number(field("x")), _number(field("y"))
        if x is None or y is None:
            raise AnnotationError(
                f"{path.name} line {number}: expected numbers x,y[,score][,label], got "
                f"{','.join(row)[:80]!r}")
        s_text = field("score")
        score = _number(s_text) if s_text is not None else math.nan
        if score is None:
            raise AnnotationError(f"{path.name} line {number}: score {s_text!r} is not a number")
        case = field("case")
        xy, scores, dropped = groups.setdefault(
            case_id_from_path(case) if case else default, ([], [], []))
        if is_negative_label(field("label")):
            dropped.append(1)
        else:
            xy.append((x, y))
            scores.append(score)
    out = []
    for cid, (xy, scores, dropped) in groups.items():
        sc = _scores(scores, path)
        out.append(PointSet(cid, _xy(xy, path), path,
                            None if np.all(np.isnan(sc)) else sc, len(dropped)))
    return out or [PointSet(default, _xy([]), path)]


# --- helpers -----------------------------------------------------------------------------------
def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _xy(rows: list, path: Path | None = None) -> np.ndarray:
    xy = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    where = path.name if path is not None else "points"
    if not np.all(np.isfinite(xy)):
        raise AnnotationError(f"{where}: NaN or infinite point coordinates")
    if xy.size and float(np.abs(xy).max()) > MAX_COORDINATE:
        raise AnnotationError(coordinate_too_large(where, float(np.abs(xy).max())))
    return xy


def _scores(values: list, path: Path) -> np.ndarray:
    sc = np.asarray(values, dtype=np.float64)
    if np.any(np.isinf(sc)):
        raise AnnotationError(f"{path.name}: infinite scores")
    return sc
