"""Tumour ground truth as polygons: one reader for every annotation format we accept.

Training (`training/truth.py`) and evaluation (`evaluation/froc_io.py`) both need "where
is the tumour, and what was drawn as not-tumour inside it" from the same files; this is
the one place that answers it, so a file reads the same for both.

`read_tumour_polygons(path) -> (tumour, exclusion)`, shapely Polygons in level-0 pixels:
  * QuPath GeoJSON (`.geojson`, `.geojson.gz`, `.json`) through `read_geojson`. Only
    Polygon/MultiPolygon features carry area; a MultiPolygon gives one Polygon per part,
    inner rings are holes. A polygon's label is its classification; an unclassified one
    is labelled by its `name` (or `class` property) when that is a tumour or exclusion
    name. Tumour labels: Tumor, Tumour, Metastasis, ...; exclusion labels: Exclusion,
    Ignore, _2, ... (case-insensitive). When no polygon in the file has a label at all,
    every polygon is tumour (a file of bare tumour outlines).
  * ASAP / Camelyon16 XML through `read_asap_xml`: every polygon (Polygon, Rectangle,
    Spline) is tumour unless its group is an exclusion name (`_2`, `Exclusion`, ...), so
    groups `_0`, `_1`, `Tumor` and ungrouped outlines are tumour; dots are ignored.
  * NCRF JSON (`{"positive": [...], "negative": [...]}`) through `read_camelyon_json`:
    positive = tumour, negative = exclusion.
Exclusions are returned, not subtracted: the caller decides (training subtracts them from
the union, evaluation rasterises tumour then clears exclusion). Self-intersecting
outlines are repaired with `shapely.make_valid` and only their areal parts kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnnotationError

# Union of the names the former training and evaluation readers accepted, so no file
# that read as tumour (or exclusion) in either reads differently now.
TUMOUR_CLASSES = frozenset({"tumor", "tumour", "metastasis", "metastases", "carcinoma",
                            "positive", "_0", "_1"})
EXCLUSION_CLASSES = frozenset({"_2", "exclusion", "exclude", "ignore", "negative",
                               "non-tumor", "non-tumour"})
ANNOTATION_SUFFIXES = (".geojson", ".geojson.gz", ".json", ".xml")

# Camelyon16 truths hold at most a few hundred outlines per slide; far more is a cell
# export given as truth, and rasterising each would run for minutes.
MAX_TRUTH_FEATURES = 20_000

Polygons = list[Any]  # shapely Polygons (kept Any: shapely is imported lazily)


def read_tumour_polygons(path: str | os.PathLike) -> tuple[Polygons, Polygons]:
    """(tumour, exclusion) shapely Polygons, level-0 pixels, of an annotation file:
    QuPath GeoJSON, ASAP/Camelyon XML or NCRF JSON (see the module docstring).

    Both lists are empty for a file without tumour (a normal slide's annotation). Raises
    AnnotationError for a missing, unreadable or malformed file or an unknown format.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(ANNOTATION_SUFFIXES):
        raise AnnotationError(
            f"{path.name}: unknown annotation format; use QuPath GeoJSON (.geojson), "
            "ASAP/Camelyon XML (.xml) or NCRF JSON (.json)"
        )
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    if name.endswith(".xml"):
        return _from_asap(path)
    from .geojson import load_geojson_object, parse_geojson

    # Rasterising each of 200k outlines would run for minutes: refused unparsed.
    data = load_geojson_object(
        path, max_features=MAX_TRUTH_FEATURES,
        too_many="a tumour truth has at most a few thousand outlines, so this looks like a "
                 "cell or detection export: give detections with --detections, or merge "
                 "the outlines")
    if _is_ncrf(data):
        return _from_ncrf(path)
    return _from_features(parse_geojson(data, source=path.name), path.name)


def _is_ncrf(data: object) -> bool:
    return (isinstance(data, dict) and "type" not in data
            and bool({"positive", "negative"} & set(data)))


def polygon_parts(geom: Any) -> Polygons:
    """The non-empty Polygons of any shapely geometry, repaired with make_valid first;
    lines and points (no area) are dropped."""
    import shapely
    from shapely.geometry import Polygon

    if geom is None or geom.is_empty:
        return []
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for g in getattr(geom, "geoms", []) for p in polygon_parts(g)]


def _ring_polygons(coords: np.ndarray) -> Polygons:
    from shapely.geometry import Polygon

    if len(coords) < 3:
        return []
    return polygon_parts(Polygon(np.asarray(coords, dtype=float)))


def _from_asap(path: Path) -> tuple[Polygons, Polygons]:
    from .asap import read_asap_xml

    tumour: Polygons = []
    exclusion: Polygons = []
    annotations = read_asap_xml(path)
    for ann in annotations:
        if ann.kind != "polygon":
            continue  # dots and point sets carry no area
        group = (ann.group or "").strip().lower()
        (exclusion if group in EXCLUSION_CLASSES else tumour).extend(_ring_polygons(ann.coords))
    if annotations and all(ann.kind != "polygon" for ann in annotations):
        # Read as "no tumour" this would silently make the slide normal.
        kinds = sorted({ann.type or ann.kind for ann in annotations})
        raise AnnotationError(
            f"{path.name} holds only {', '.join(kinds)} annotations ({len(annotations)}), "
            "no tumour outlines: points carry no area, so they cannot say where the tumour "
            "is. Draw the tumour as Polygon/Spline/Rectangle annotations; for a normal "
            "slide give no annotation file (or list it as normal)"
        )
    return tumour, exclusion


def _from_ncrf(path: Path) -> tuple[Polygons, Polygons]:
    from .camelyon_json import read_camelyon_json, split_camelyon_json

    positive, negative = split_camelyon_json(read_camelyon_json(path))
    return ([p for c in positive for p in _ring_polygons(c)],
            [p for c in negative for p in _ring_polygons(c)])


def _label(feature: Any) -> str:
    """Lower-case class of a feature: its classification, else its name / `class`
    property when that is a known tumour or exclusion name ("" = unlabelled)."""
    if feature.classification:
        return str(feature.classification).strip().lower()
    for fallback in (feature.name, feature.properties.get("class")):
        if fallback is not None:
            label = str(fallback).strip().lower()
            if label in TUMOUR_CLASSES or label in EXCLUSION_CLASSES:
                return label
    return ""


def _from_features(features: list[Any], source: str) -> tuple[Polygons, Polygons]:
    areal = [f for f in features if f.geometry_type in ("Polygon", "MultiPolygon")]
    labels = [_label(f) for f in areal]
    # A file of bare outlines (no polygon labelled) is a tumour outline file; labels on
    # points (e.g. mitoses) do not change that.
    unlabelled_file = not any(labels)
    tumour: Polygons = []
    exclusion: Polygons = []
    for feature, label in zip(areal, labels, strict=True):
        if label in EXCLUSION_CLASSES:
            target = exclusion
        elif label in TUMOUR_CLASSES or unlabelled_file:
            target = tumour
        else:
            continue  # other classes (Stroma, Other, ...) are neither
        try:
            geom = feature.shape()
        except Exception as exc:  # noqa: BLE001 - shapely raises several types
            raise AnnotationError(f"{source}: invalid polygon coordinates ({exc})") from exc
        target.extend(polygon_parts(geom))
    return tumour, exclusion
