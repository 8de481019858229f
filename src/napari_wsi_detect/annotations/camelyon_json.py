"""Camelyon16 annotations as JSON, the NCRF project's conversion of the official XML:
`{"positive": [{"name": ..., "vertices": [[x, y], ...]}], "negative": [...]}`
in level-0 pixels. `positive` = tumour (`_0`, `_1`), `negative` = exclusion (`_2`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import AnnotationError
from .asap import Annotation
from .geojson import MAX_COORDINATE, coordinate_too_large, parse_json_bytes


def read_camelyon_json(path: str | os.PathLike) -> list[Annotation]:
    """Polygons of an NCRF JSON file; group 'positive' (tumour) or 'negative' (exclusion)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise AnnotationError(f"annotation file not found: {path}") from exc
    except OSError as exc:
        raise AnnotationError(f"cannot read annotation file {path}: {exc}") from exc
    data = parse_json_bytes(raw, path)
    if not isinstance(data, dict) or not ({"positive", "negative"} & set(data)):
        raise AnnotationError(
            f"{path.name}: expected a Camelyon JSON object with 'positive' and/or "
            "'negative' polygon lists (NCRF format)"
        )
    out = []
    for group in ("positive", "negative"):
        items = data.get(group) or []
        if not isinstance(items, list):
            raise AnnotationError(f"{path.name}: '{group}' must be a list of polygons")
        for i, item in enumerate(items):
            name = str(item.get("name", f"{group} {i}")) if isinstance(item, dict) else ""
            try:
                coords = np.asarray(item["vertices"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as exc:
                raise AnnotationError(
                    f"{path.name}: {group} polygon {i} needs 'vertices': [[x, y], ...]"
                ) from exc
            if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) < 3:
                raise AnnotationError(
                    f"{path.name}: {group} polygon {name!r} must have >= 3 [x, y] vertices"
                )
            if not np.all(np.isfinite(coords)):
                raise AnnotationError(
                    f"{path.name}: {group} polygon {name!r} has non-finite coordinates")
            if float(np.abs(coords).max()) > MAX_COORDINATE:
                raise AnnotationError(coordinate_too_large(
                    f"{path.name}: {group} polygon {name!r}", float(np.abs(coords).max())))
            out.append(
                Annotation(name=name, group=group, kind="polygon", coords=coords,
                           type="Polygon")
            )
    return out


def split_camelyon_json(annotations: list[Annotation]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(tumour polygons, exclusion polygons) of `read_camelyon_json`'s result."""
    tumour = [a.coords for a in annotations if a.group == "positive"]
    exclusion = [a.coords for a in annotations if a.group == "negative"]
    return tumour, exclusion
