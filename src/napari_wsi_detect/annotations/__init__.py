"""Annotation files: QuPath GeoJSON (read/write, `geojson`), ASAP/Camelyon XML and NCRF
JSON (read). Coordinates are level-0 pixels (x, y), origin top-left."""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    "read_tumour_polygons": "napari_wsi_detect.annotations.truth",
    "Feature": "napari_wsi_detect.annotations.geojson",
    "read_geojson": "napari_wsi_detect.annotations.geojson",
    "write_geojson": "napari_wsi_detect.annotations.geojson",
    "regions_to_features": "napari_wsi_detect.annotations.geojson",
    "points_to_features": "napari_wsi_detect.annotations.geojson",
    "check_qupath_geojson": "napari_wsi_detect.annotations.qupath_check",
    "read_asap_xml": "napari_wsi_detect.annotations.asap",
    "read_camelyon_json": "napari_wsi_detect.annotations.camelyon_json",
    "PointSet": "napari_wsi_detect.annotations.point_truth",
    "read_point_sets": "napari_wsi_detect.annotations.point_truth",
    "mitoses_to_features": "napari_wsi_detect.annotations.points",
    "read_mitosis_features": "napari_wsi_detect.annotations.points",
}

__getattr__, __all__ = attach(__name__, _LAZY)
