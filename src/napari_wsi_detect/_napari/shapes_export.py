"""napari Shapes / Points layers -> GeoJSON features (export; the import side and the
placement conventions are in `shapes_io`, whose module docstring explains holes, exact
rings and level-0 anchoring)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_wsi_detect._napari.shapes_io import (
    EXACT_KEY,
    KNOWN_COLORS,
    data_to_level0,
    rings_digest,
)
from napari_wsi_detect.annotations.geojson import MITOSIS_CLASS, TUMOUR_CLASS, Feature
from napari_wsi_detect.errors import AnnotationError

ELLIPSE_VERTICES = 64
# Feature columns with a meaning of their own; any other numeric column is a measurement.
_RESERVED = ("region", "is_hole", "class", "id", "name", "object_type")


def _column(table: Any, key: str, n: int, default: Any) -> list[Any]:
    if table is None or key not in table:
        return [default] * n
    col = table[key]
    return list(col.tolist() if hasattr(col, "tolist") else col)


def _ellipse(corners: np.ndarray) -> np.ndarray:
    """napari ellipse data (4 bounding-box corners) -> polygon vertices."""
    centre = corners.mean(axis=0)
    a, b = (corners[1] - corners[0]) / 2, (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def _class_color(cls: str, edge: Any) -> tuple[int, int, int]:
    if cls in KNOWN_COLORS:
        return KNOWN_COLORS[cls]
    if edge is not None and len(edge) >= 3:
        return tuple(int(round(255 * float(c))) for c in edge[:3])  # type: ignore[return-value]
    return TUMOUR_CLASS[1]


def shapes_to_features(data: Sequence[np.ndarray], meta: dict[str, Any],
                       mpp: float | None) -> list[Feature]:
    """QuPath features of a Shapes layer's data + state (`layer.as_layer_data_tuple()`
    or the npe2 writer's `meta`): regions with holes as inner rings, level-0 pixels."""
    from shapely.geometry import MultiPolygon, Point, Polygon
    from shapely.geometry.polygon import orient

    from napari_wsi_detect.annotations.geojson import shape_to_geometry

    n = len(data)
    if n == 0:
        return []
    types = meta.get("shape_type", "polygon")
    types = [types] * n if isinstance(types, str) else list(types)
    table = meta.get("features")
    regions = _column(table, "region", n, -1)
    holes = _column(table, "is_hole", n, False)
    classes = _column(table, "class", n, TUMOUR_CLASS[0])
    ids = _column(table, "id", n, "")
    names = _column(table, "name", n, "")
    edges = meta.get("edge_color")
    edges = np.asarray(edges) if edges is not None and np.ndim(edges) == 2 else None
    measure_keys = [
        k for k in (list(table.keys()) if table is not None else [])
        if k not in _RESERVED and np.issubdtype(np.asarray(table[k]).dtype, np.number)
        and not np.issubdtype(np.asarray(table[k]).dtype, np.bool_)
    ]
    unit = float(mpp) if mpp else 1.0

    groups: dict[Any, dict[str, list[int]]] = {}
    for i in range(n):
        rid = regions[i]
        if rid is None or (isinstance(rid, float) and math.isnan(rid)) or int(rid) < 0:
            rid = ("drawn", i)  # a shape drawn by hand: a region of its own
        g = groups.setdefault(rid, {"outer": [], "hole": [], "line": []})
        if types[i] in ("path", "line"):
            g["line"].append(i)
        elif bool(holes[i]):
            g["hole"].append(i)
        else:
            g["outer"].append(i)

    exact = _unedited_exact_rings(data, groups, types, (meta.get("metadata") or {}))

    def ring(i: int) -> np.ndarray:
        v = exact[i] if i in exact else np.asarray(data[i], dtype=float)[:, -2:]
        if types[i] == "ellipse":
            v = _ellipse(v)
        return data_to_level0(v, meta, mpp)

    out: list[Feature] = []
    for g in groups.values():
        first = (g["outer"] or g["hole"] or g["line"])[0]
        cls = str(classes[first] or TUMOUR_CLASS[0])
        color = _class_color(cls, edges[first] if edges is not None else None)
        fid = str(ids[first]) if _is_uuid(ids[first]) else str(uuid.uuid4())
        label = str(names[first]) if names[first] else None
        measurements = {
            k: float(table[k][first]) for k in measure_keys
            if math.isfinite(float(table[k][first])) and k != "area_um2"
        }
        parts = [Polygon(ring(i)) for i in g["outer"]]
        inner: list[list[Any]] = [[] for _ in parts]
        orphans = []
        for i in g["hole"]:
            hole = Polygon(ring(i))
            probe = hole.representative_point() if hole.is_valid else Point(ring(i)[0])
            k = next((k for k, p in enumerate(parts) if p.contains(probe)), None)
            if k is None:
                orphans.append(hole)
            else:
                inner[k].append(hole.exterior.coords)
        polys = [orient(Polygon(p.exterior.coords, h), 1.0) for p, h in zip(parts, inner,
                                                                            strict=True)]
        if polys:
            geom = polys[0] if len(polys) == 1 else MultiPolygon(polys)
            m = dict(measurements)
            m["area_um2"] = round(float(geom.area) * unit * unit, 3) if mpp else float(geom.area)
            out.append(Feature(shape_to_geometry(geom), "annotation", cls, color, m, label,
                               fid))
            fid = str(uuid.uuid4())  # orphans / lines below get ids of their own
        for hole in orphans:
            out.append(Feature(shape_to_geometry(orient(hole, 1.0)), "annotation", cls, color,
                               dict(measurements), label, str(uuid.uuid4())))
        for i in g["line"]:
            coords = ring(i).tolist()
            out.append(Feature({"type": "LineString", "coordinates": coords}, "annotation",
                               cls, color, dict(measurements), label, fid))
            fid = str(uuid.uuid4())
    return out


def _unedited_exact_rings(data: Sequence[np.ndarray], groups: dict[Any, dict[str, list[int]]],
                          types: list[str], layer_meta: dict[str, Any]
                          ) -> dict[int, np.ndarray]:
    """{shape index: exact ring (layer data)} for the regions drawn simplified whose shapes
    are unchanged since (their digest matches); edited regions export as drawn."""
    kept = layer_meta.get(EXACT_KEY) or {}
    out: dict[int, np.ndarray] = {}
    for rid, g in groups.items():
        if isinstance(rid, tuple) or g["line"]:
            continue
        entry = kept.get(int(rid)) if int(rid) in kept else kept.get(str(rid))
        if not entry:
            continue
        idx = sorted(g["outer"] + g["hole"])
        if (len(idx) != len(entry["rings"]) or any(types[i] != "polygon" for i in idx)
                or rings_digest([data[i] for i in idx]) != entry["digest"]):
            continue
        out.update({i: np.asarray(r, dtype=float) for i, r in zip(idx, entry["rings"],
                                                                    strict=True)})
    return out


def points_to_features(data: np.ndarray, meta: dict[str, Any], mpp: float | None
                       ) -> list[Feature]:
    """Point detections (QuPath 'detection' objects) of a Points layer, level-0 pixels."""
    data = np.asarray(data, dtype=float).reshape(-1, np.shape(data)[-1] if np.size(data) else 2)
    n = len(data)
    if n == 0:
        return []
    xy = data_to_level0(data[:, -2:], meta, mpp)
    table = meta.get("features")
    classes = _column(table, "class", n, MITOSIS_CLASS[0])
    ids = _column(table, "id", n, "")
    types = _column(table, "object_type", n, "detection")
    measure_keys = [
        k for k in (list(table.keys()) if table is not None else [])
        if k not in _RESERVED and np.issubdtype(np.asarray(table[k]).dtype, np.number)
        and not np.issubdtype(np.asarray(table[k]).dtype, np.bool_)
    ]
    faces = meta.get("face_color")
    faces = np.asarray(faces) if faces is not None and np.ndim(faces) == 2 else None
    out = []
    seen: set[str] = set()
    for i in range(n):
        # A MultiPoint read in becomes points sharing one id; QuPath needs them unique.
        fid = str(ids[i]) if _is_uuid(ids[i]) and str(ids[i]) not in seen else str(uuid.uuid4())
        seen.add(fid)
        cls = str(classes[i] or MITOSIS_CLASS[0])
        m = {k: float(table[k][i]) for k in measure_keys if math.isfinite(float(table[k][i]))}
        otype = types[i] if types[i] in ("annotation", "detection") else "detection"
        out.append(Feature(
            {"type": "Point", "coordinates": [float(xy[i, 0]), float(xy[i, 1])]}, otype, cls,
            _class_color(cls, faces[i] if faces is not None and len(faces) > i else None), m,
            None, fid,
        ))
    return out


def layer_to_features(layer: Any, mpp: float | None) -> list[Feature]:
    """QuPath features of a napari Shapes or Points layer (level-0 pixels)."""
    data, meta, kind = layer.as_layer_data_tuple()
    if kind == "shapes":
        return shapes_to_features(data, meta, mpp)
    if kind == "points":
        return points_to_features(data, meta, mpp)
    raise AnnotationError(
        f"layer {layer.name!r} is a {kind} layer; only Shapes and Points layers can be "
        "exported as GeoJSON"
    )


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return bool(value)
