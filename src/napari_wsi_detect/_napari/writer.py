"""npe2 writers: Shapes / Points layers -> QuPath GeoJSON (`.geojson`, `.geojson.gz`).

Coordinates are written in level-0 pixels whatever the layer's scale/translate: data go
to world through the layer's transform, world to level-0 through the slide's µm/px (the
layer's `slide_mpp` metadata when it came from napari-wsi-detect, else the slide open in
the viewer, else world = pixels). The file is written atomically (temporary name, then
rename) by `annotations.geojson.write_geojson`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_wsi_detect._napari.annotation_reader import viewer_slide_mpp
from napari_wsi_detect._napari.shapes_export import points_to_features, shapes_to_features
from napari_wsi_detect.annotations.geojson import Feature, write_geojson
from napari_wsi_detect.errors import AnnotationError


def resolve_mpp(meta: dict[str, Any], mpp: float | None = None) -> float | None:
    """µm per level-0 pixel of the world the layer lives in (None = pixels)."""
    if mpp is not None:
        return mpp
    layer_meta = meta.get("metadata") or {}
    if "slide_mpp" in layer_meta:
        return layer_meta["slide_mpp"]
    return viewer_slide_mpp()[1]


def geojson_path(path: str | Path) -> Path:
    """`path` with a GeoJSON suffix (".geojson" added when it has neither)."""
    p = Path(path)
    return p if p.name.lower().endswith((".geojson", ".geojson.gz", ".json")) else (
        p.with_name(p.name + ".geojson"))


def write_features(path: str | Path, features: list[Feature]) -> Path:
    if not features:
        raise AnnotationError("nothing to export: the layer has no shapes or points")
    return write_geojson(geojson_path(path), features)


def write_shapes(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Shapes layers."""
    return [str(write_features(path, shapes_to_features(data, meta, resolve_mpp(meta))))]


def write_points(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Points layers."""
    return [str(write_features(path, points_to_features(data, meta, resolve_mpp(meta))))]


def write_layer(path: str | Path, layer: Any, mpp: float | None = None) -> Path:
    """Write a Shapes or Points layer object (the widget's "Export GeoJSON…")."""
    data, meta, kind = layer.as_layer_data_tuple()
    mpp = resolve_mpp(meta, mpp)
    if kind == "shapes":
        return write_features(path, shapes_to_features(data, meta, mpp))
    if kind == "points":
        return write_features(path, points_to_features(data, meta, mpp))
    raise AnnotationError(
        f"layer {layer.name!r} is a {kind} layer: choose a Shapes or Points layer to export"
    )
