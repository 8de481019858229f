"""Heatmap -> detections: `regions` (metastases: opening, threshold, components, polygons
with holes, slide score). Re-run on every slider move; never touches the network."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Region": "napari_wsi_detect.postprocess.regions",
    "extract_regions": "napari_wsi_detect.postprocess.regions",
    "slide_score": "napari_wsi_detect.postprocess.regions",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
