"""QuPath-compatible GeoJSON (METHODS §5): write, read, and check.

What QuPath reads (and what we write): a ``FeatureCollection`` whose coordinates are
level-0 pixels, origin top-left, (x, y), rings closed. Each feature has a UUID ``"id"``;
``properties.objectType`` = ``"annotation"`` | ``"detection"`` (inside properties);
``properties.classification`` = ``{"name": ..., "color": [r, g, b]}``;
``properties.measurements`` a flat object of finite numbers (QuPath fails on NaN, so we
drop non-finite values); optional ``name`` and ``isLocked``. Regions are Polygon /
MultiPolygon with holes as inner rings (outer CCW, holes CW in x, y); mitoses are Point
detections. ``.geojson.gz`` is gzip.

The reader is lenient where QuPath and other tools differ (bare feature lists, single
features or geometries, string classifications, QuPath 0.2's measurement lists and
``colorRGB``, unclosed rings are closed) and strict where the file is unusable
(unknown geometry types, non-finite or malformed coordinates): those raise
AnnotationError.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import write_bytes_atomic
from ..errors import AnnotationError

OBJECT_TYPES = ("annotation", "detection")
GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon",
                  "MultiPolygon")
# Nesting depth of a geometry's "coordinates" down to a position [x, y].
_DEPTH = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2,
          "Polygon": 2, "MultiPolygon": 3}
# Largest |coordinate| accepted, in level-0 px: 10 million px is 2.4 m at 0.243 µm/px,
# far beyond any slide. Larger values are not pixel coordinates (or the file is damaged),
# and rasterising them would try to allocate terabytes.
MAX_COORDINATE = 10_000_000
TUMOUR_CLASS = ("Tumor", (200, 0, 0))  # QuPath's built-in "Tumor" class and colour
MITOSIS_CLASS = ("Mitosis", (255, 200, 0))
IMPOSTER_CLASS = ("Imposter", (0, 160, 255))  # phantom look-alikes of mitoses (not QuPath's)
DECIMALS = 3


@dataclass
class Feature:
    """One GeoJSON feature as QuPath sees it. `geometry` is a GeoJSON geometry dict in
    level-0 pixels."""

    geometry: dict[str, Any]
    object_type: str = "annotation"
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    name: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    is_locked: bool | None = None
    properties: dict[str, Any] = field(default_factory=dict)  # other properties, kept

    @property
    def geometry_type(self) -> str:
        return str(self.geometry["type"])

    def shape(self) -> Any:
        """The geometry as a shapely object."""
        from shapely.geometry import shape

        return shape(self.geometry)

    def to_geojson(self) -> dict[str, Any]:
        props: dict[str, Any] = dict(self.properties)
        props["objectType"] = self.object_type
        if self.classification is not None:
            color = self.color or (255, 0, 0)
            props["classification"] = {"name": self.classification,
                                       "color": [int(c) for c in color]}
        measurements = {
            str(k): float(v) for k, v in self.measurements.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if measurements:
            props["measurements"] = measurements
        if self.name is not None:
            props["name"] = str(self.name)
        if self.is_locked is not None:
            props["isLocked"] = bool(self.is_locked)
        return {"type": "Feature", "id": self.id, "geometry": _rounded(self.geometry),
                "properties": props}


# --- building features ---------------------------------------------------------------------


def _rounded(geometry: dict[str, Any]) -> dict[str, Any]:
    def rnd(c: Any) -> Any:
        if isinstance(c, (list, tuple)):
            return [rnd(v) for v in c]
        v = round(float(c), DECIMALS)
        return int(v) if v.is_integer() else v

    return {"type": geometry["type"], "coordinates": rnd(geometry["coordinates"])}


def shape_to_geometry(geom: Any) -> dict[str, Any]:
    """GeoJSON geometry of a shapely Polygon/MultiPolygon/Point, rings closed."""
    import shapely

    return json.loads(shapely.to_geojson(geom))


def regions_to_features(
    regions: Iterable[Any],
    classification: str = TUMOUR_CLASS[0],
    color: tuple[int, int, int] = TUMOUR_CLASS[1],
    object_type: str = "annotation",
    name_prefix: str = "Metastasis",
) -> list[Feature]:
    """QuPath features of `postprocess.regions.Region`s: polygons with holes, named
    "<prefix> <label> (p=0.97)", measurements = max probability, area, peak, centroid."""
    features = []
    for r in regions:
        features.append(Feature(
            geometry=shape_to_geometry(r.geometry),
            object_type=object_type,
            classification=classification,
            color=color,
            measurements=r.measurements(),
            name=f"{name_prefix} {r.label} (p={r.max_prob:.2f})",
        ))
    return features


def points_to_features(
    points: Iterable[Sequence[float]],
    scores: Iterable[float] | None = None,
    classification: str = MITOSIS_CLASS[0],
    color: tuple[int, int, int] = MITOSIS_CLASS[1],
    object_type: str = "detection",
) -> list[Feature]:
    """Point detections (x, y level-0 px), e.g. mitoses, with an optional score each."""
    pts = [tuple(float(v) for v in p[:2]) for p in points]
    sc = list(scores) if scores is not None else [None] * len(pts)
    return [
        Feature({"type": "Point", "coordinates": list(p)}, object_type, classification, color,
                {"score": float(s)} if s is not None else {})
        for p, s in zip(pts, sc, strict=True)
    ]


def feature_collection(features: Iterable[Feature | dict[str, Any]],
                       members: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A FeatureCollection; `members` are extra top-level ("foreign", RFC 7946 §6.1)
    members such as a phantom's metadata, which readers that do not know them ignore."""
    out = []
    for f in features:
        out.append(f.to_geojson() if isinstance(f, Feature) else f)
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": out}
    for key, value in (members or {}).items():
        doc.setdefault(str(key), value)  # never overrides "type" or "features"
    return doc


# --- writing -------------------------------------------------------------------------------


def write_geojson(path: str | os.PathLike, features: Iterable[Feature | dict[str, Any]],
                  gz: bool | None = None, members: Mapping[str, Any] | None = None) -> Path:
    """Write a FeatureCollection atomically (`_atomic.write_bytes_atomic`). `gz` None:
    gzip when the name ends in .gz. `members`: extra top-level members (see
    `feature_collection`). Returns the path."""
    path = Path(path)
    if gz is None:
        gz = path.suffix == ".gz"
    obj = feature_collection(features, members)
    try:
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise AnnotationError(f"cannot write {path.name}: {exc} (NaN/inf in the data)") from exc
    data = text.encode("utf-8")
    if gz:
        data = gzip.compress(data, mtime=0)
    return write_bytes_atomic(path, data)


# --- reading -------------------------------------------------------------------------------


# Parsed JSON takes several times its text in memory: beyond this an annotation file
# (or what a .gz holds) is refused rather than parsed into gigabytes.
MAX_JSON_BYTES = 512 * 1024 * 1024


def _too_large(path: Path, what: str) -> AnnotationError:
    return AnnotationError(
        f"{path.name} {what} more than {MAX_JSON_BYTES >> 20} MiB of JSON, beyond any "
        "annotation export this package reads (parsing it would take many GB of memory); "
        "split it, or export only the annotations needed")


def load_geojson_object(path: str | os.PathLike, max_features: int | None = None,
                        too_many: str = "") -> Any:
    """The parsed JSON of a .geojson / .json / .geojson.gz file (at most MAX_JSON_BYTES
    of text, also after decompression: a gzip bomb is refused, not inflated). With
    `max_features`, a file with more `"Feature"` objects is refused before parsing
    (parsing 200k features alone takes seconds), `too_many` saying what to do."""
    import zlib

    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise _too_large(path, "holds")
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise AnnotationError(f"annotation file not found: {path}") from exc
    except OSError as exc:
        raise AnnotationError(f"cannot read annotation file {path}: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        parts: list[bytes] = []
        size = 0
        while raw:  # member by member (a .gz may hold several), never past the limit
            inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                part = inflate.decompress(raw, MAX_JSON_BYTES + 1 - size)
            except zlib.error as exc:
                raise AnnotationError(f"{path.name} is a damaged gzip file ({exc})") from exc
            size += len(part)
            parts.append(part)
            if size > MAX_JSON_BYTES:
                raise _too_large(path, "uncompresses to")
            if not inflate.eof:
                raise AnnotationError(f"{path.name} is a truncated gzip file")
            raw = inflate.unused_data
        raw = b"".join(parts)
    if max_features is not None:
        count = raw.count(b'"Feature"')
        if count > max_features:
            raise AnnotationError(
                f"{path.name} holds {count} features, more than the {max_features} "
                f"allowed here{'; ' + too_many if too_many else ''}")
    return parse_json_bytes(raw, path)


def parse_json_bytes(raw: bytes, path: Path) -> Any:
    """json.loads with every failure an AnnotationError naming `path` (a file nested
    thousands of levels deep raises RecursionError in the parser)."""
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path.name} is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise AnnotationError(
            f"{path.name} is nested too deeply to be an annotation file (JSON arrays or "
            "objects inside each other thousands of levels deep); the file is damaged or "
            "not an annotation export"
        ) from exc


def read_geojson(path: str | os.PathLike) -> list[Feature]:
    """Features of a GeoJSON file: a FeatureCollection, a list of features, one feature,
    or a bare geometry; .gz accepted. Invalid content raises AnnotationError."""
    return parse_geojson(load_geojson_object(path), source=Path(path).name)


def parse_geojson(obj: Any, source: str = "GeoJSON") -> list[Feature]:
    if isinstance(obj, list):
        items = obj
    elif isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            items = obj.get("features")
            if not isinstance(items, list):
                raise AnnotationError(f"{source}: FeatureCollection without a 'features' list")
        elif kind == "Feature" or kind in GEOMETRY_TYPES:
            items = [obj]
        else:
            raise AnnotationError(
                f"{source}: unsupported GeoJSON type {kind!r} (expected FeatureCollection, "
                f"Feature or one of {', '.join(GEOMETRY_TYPES)})"
            )
    else:
        raise AnnotationError(f"{source}: expected a GeoJSON object, found {type(obj).__name__}")
    return [_parse_feature(item, f"{source} feature {i}") for i, item in enumerate(items)]


def _parse_feature(item: Any, where: str) -> Feature:
    if not isinstance(item, dict):
        raise AnnotationError(f"{where}: not a JSON object")
    if item.get("type") in GEOMETRY_TYPES:
        return Feature(_parse_geometry(item, where))
    if item.get("type") != "Feature":
        raise AnnotationError(f"{where}: type {item.get('type')!r} is not 'Feature'")
    geometry = item.get("geometry")
    if not isinstance(geometry, dict):
        raise AnnotationError(f"{where}: has no geometry")
    props = item.get("properties") or {}
    if not isinstance(props, dict):
        raise AnnotationError(f"{where}: 'properties' is not an object")
    props = dict(props)
    legacy_id = str(item.get("id", ""))
    object_type = props.pop("objectType", None) or props.pop("object_type", None)
    if object_type is None:
        object_type = "detection" if "Detection" in legacy_id else "annotation"
    object_type = str(object_type).lower()
    if object_type not in OBJECT_TYPES:
        object_type = "annotation"  # cells, tiles, TMA cores: kept as annotations
    name, color = _parse_classification(props.pop("classification", None), where)
    measurements = _parse_measurements(props.pop("measurements", None), where)
    fid = item.get("id")
    try:
        fid = str(uuid.UUID(str(fid)))
    except ValueError:
        fid = str(uuid.uuid4())  # QuPath 0.2 ids ("PathAnnotationObject") are not UUIDs
    label = props.pop("name", None)
    locked = props.pop("isLocked", None)
    return Feature(
        geometry=_parse_geometry(geometry, where),
        object_type=object_type,
        classification=name,
        color=color,
        measurements=measurements,
        name=str(label) if label is not None else None,
        id=fid,
        is_locked=bool(locked) if locked is not None else None,
        properties=props,
    )


def _color(value: Any, where: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):  # QuPath packed (A)RGB
        v = value & 0xFFFFFF
        return ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    if (isinstance(value, list) and len(value) >= 3
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in value[:3])):
        return tuple(int(max(0, min(255, round(c)))) for c in value[:3])  # type: ignore[return-value]
    raise AnnotationError(f"{where}: classification colour {value!r} is not [r, g, b]")


def _parse_classification(value: Any, where: str) -> tuple[str | None, tuple | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        name = value.get("name")
        if not isinstance(name, str):
            raise AnnotationError(f"{where}: classification has no 'name'")
        return name, _color(value.get("color", value.get("colorRGB")), where)
    raise AnnotationError(f"{where}: classification must be a name or {{name, color}}")


def _parse_measurements(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, list):  # QuPath 0.2: [{"name": ..., "value": ...}]
        try:
            value = {str(m["name"]): m["value"] for m in value}
        except (KeyError, TypeError) as exc:
            raise AnnotationError(f"{where}: malformed measurement list") from exc
    if not isinstance(value, dict):
        raise AnnotationError(f"{where}: 'measurements' must be an object of numbers")
    out = {}
    for k, v in value.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)] = float(v)
    return out


def _position(p: Any, where: str) -> list[float]:
    # Fast path (files with 10⁵-10⁶ vertices): plain numbers within bounds. NaN and ±inf
    # fail the comparisons and take the checked path below.
    if type(p) is list and len(p) >= 2:
        x, y = p[0], p[1]
        if type(x) in (float, int) and type(y) in (float, int):
            fx, fy = float(x), float(y)
            if -MAX_COORDINATE <= fx <= MAX_COORDINATE and -MAX_COORDINATE <= fy <= MAX_COORDINATE:
                return [fx, fy]
    if not isinstance(p, list) or len(p) < 2:
        raise AnnotationError(f"{where}: a position must be [x, y], found {p!r}")
    x, y = p[0], p[1]
    for v in (x, y):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise AnnotationError(f"{where}: coordinate {v!r} is not a finite number")
        if abs(v) > MAX_COORDINATE:
            raise AnnotationError(coordinate_too_large(where, v))
    return [float(x), float(y)]


def coordinate_too_large(where: str, value: float) -> str:
    return (
        f"{where}: coordinate {value:g} is beyond ±{MAX_COORDINATE:,} px; annotation "
        "coordinates are level-0 pixels and no slide is that large (the file uses other "
        "units or is damaged)"
    )


def _ring(ring: Any, where: str) -> list[list[float]]:
    if not isinstance(ring, list):
        raise AnnotationError(f"{where}: a polygon ring must be a list of positions")
    pts = [_position(p, where) for p in ring]
    if pts and pts[0] != pts[-1]:
        pts.append(list(pts[0]))  # close it (QuPath always does)
    if len(pts) < 4:
        raise AnnotationError(f"{where}: a polygon ring needs at least 3 distinct points")
    return pts


def _parse_geometry(geometry: dict[str, Any], where: str) -> dict[str, Any]:
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind not in GEOMETRY_TYPES:
        raise AnnotationError(
            f"{where}: geometry type {kind!r} is not supported "
            f"(use one of {', '.join(GEOMETRY_TYPES)})"
        )
    if not isinstance(coords, list):
        raise AnnotationError(f"{where}: {kind} has no coordinates")
    if kind == "Point":
        out: Any = _position(coords, where)
    elif kind in ("MultiPoint", "LineString"):
        out = [_position(p, where) for p in coords]
    elif kind == "MultiLineString":
        out = [[_position(p, where) for p in line] for line in _lists(coords, where)]
    elif kind == "Polygon":
        out = [_ring(r, where) for r in coords]
        if not out:
            raise AnnotationError(f"{where}: Polygon without rings")
    else:
        out = [[_ring(r, where) for r in _lists(poly, where)] for poly in coords]
        if not out or any(not p for p in out):
            raise AnnotationError(f"{where}: MultiPolygon with an empty polygon")
    return {"type": kind, "coordinates": out}


def _lists(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise AnnotationError(f"{where}: malformed coordinates")
    return value
