"""Heatmap -> detections: `regions` (metastases: opening, threshold, components, polygons
with holes, slide score). Re-run on every slider move; never touches the network."""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    "Region": "napari_wsi_detect.postprocess.regions",
    "extract_regions": "napari_wsi_detect.postprocess.regions",
    "slide_score": "napari_wsi_detect.postprocess.regions",
}

__getattr__, __all__ = attach(__name__, _LAZY)
