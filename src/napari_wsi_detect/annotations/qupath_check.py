"""What QuPath will read: `check_qupath_geojson` lists every way a GeoJSON object departs
from the subset QuPath imports (annotations/geojson.py's docstring says what that is).
The exports and the tests run every file we write through it."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from typing import Any

from .geojson import _DEPTH, GEOMETRY_TYPES, OBJECT_TYPES


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_coords(kind: str, coords: Any, where: str, problems: list[str]) -> None:
    depth = _DEPTH[kind]

    def positions(c: Any, d: int) -> Iterable[Any]:
        if d == 0:
            yield c
            return
        if not isinstance(c, list):
            problems.append(f"{where}: {kind} coordinates are malformed")
            return
        for v in c:
            yield from positions(v, d - 1)

    for p in positions(coords, depth):
        if not (isinstance(p, list) and len(p) in (2, 3) and all(_is_number(v) for v in p)):
            problems.append(f"{where}: position {p!r} is not [x, y] finite numbers")
            return
    rings: list[Any] = []
    if kind == "Polygon" and isinstance(coords, list):
        rings = coords
    elif kind == "MultiPolygon" and isinstance(coords, list):
        rings = [r for poly in coords if isinstance(poly, list) for r in poly]
    for ring in rings:
        if not isinstance(ring, list) or len(ring) < 4:
            problems.append(f"{where}: a ring needs at least 4 positions (closed)")
        elif ring[0] != ring[-1]:
            problems.append(f"{where}: ring is not closed (first != last position)")


def check_qupath_geojson(obj: Any) -> list[str]:
    """Problems QuPath would have importing `obj` (our parsing rules, METHODS §5);
    an empty list means it imports cleanly with ids, types, classes and measurements."""
    problems: list[str] = []
    if not isinstance(obj, dict) or obj.get("type") != "FeatureCollection":
        return ["top level must be a GeoJSON FeatureCollection"]
    feats = obj.get("features")
    if not isinstance(feats, list):
        return ["FeatureCollection has no 'features' list"]
    seen: set[str] = set()
    for i, f in enumerate(feats):
        where = f"feature {i}"
        if not isinstance(f, dict) or f.get("type") != "Feature":
            problems.append(f"{where}: type must be 'Feature'")
            continue
        fid = f.get("id")
        try:
            uuid.UUID(str(fid))
            if not isinstance(fid, str):
                raise ValueError
        except ValueError:
            problems.append(f"{where}: 'id' {fid!r} is not a UUID string (QuPath drops it)")
        else:
            if fid in seen:
                problems.append(f"{where}: duplicate id {fid}")
            seen.add(fid)
        if "objectType" in f:
            problems.append(f"{where}: objectType must be inside 'properties'")
        geom = f.get("geometry")
        if not isinstance(geom, dict) or geom.get("type") not in GEOMETRY_TYPES:
            problems.append(f"{where}: geometry type must be one of {GEOMETRY_TYPES}")
        else:
            _check_coords(geom["type"], geom.get("coordinates"), where, problems)
        props = f.get("properties")
        if not isinstance(props, dict):
            problems.append(f"{where}: 'properties' object missing")
            continue
        if props.get("objectType") not in OBJECT_TYPES:
            problems.append(
                f"{where}: properties.objectType must be 'annotation' or 'detection', "
                f"found {props.get('objectType')!r}"
            )
        cls = props.get("classification")
        if cls is not None and not isinstance(cls, str):
            if not isinstance(cls, dict) or not isinstance(cls.get("name"), str):
                problems.append(f"{where}: classification needs a 'name'")
            else:
                col = cls.get("color")
                if not (isinstance(col, list) and len(col) == 3 and all(
                        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                        for c in col)):
                    problems.append(
                        f"{where}: classification colour must be [r, g, b] integers 0-255, "
                        f"found {col!r}"
                    )
        meas = props.get("measurements")
        if meas is not None:
            if not isinstance(meas, dict):
                problems.append(f"{where}: measurements must be a flat object")
            else:
                for k, v in meas.items():
                    if not _is_number(v):
                        problems.append(f"{where}: measurement {k!r} = {v!r} is not a finite number")
        if "name" in props and not isinstance(props["name"], str):
            problems.append(f"{where}: name must be a string")
        if "isLocked" in props and not isinstance(props["isLocked"], bool):
            problems.append(f"{where}: isLocked must be true/false")
    return problems
