"""Annotation files: QuPath GeoJSON (read/write, `geojson`), ASAP/Camelyon XML and NCRF
JSON (read). Coordinates are level-0 pixels (x, y), origin top-left."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Feature": "napari_wsi_detect.annotations.geojson",
    "read_geojson": "napari_wsi_detect.annotations.geojson",
    "write_geojson": "napari_wsi_detect.annotations.geojson",
    "regions_to_features": "napari_wsi_detect.annotations.geojson",
    "points_to_features": "napari_wsi_detect.annotations.geojson",
    "check_qupath_geojson": "napari_wsi_detect.annotations.geojson",
    "read_asap_xml": "napari_wsi_detect.annotations.asap",
    "read_camelyon_json": "napari_wsi_detect.annotations.camelyon_json",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
