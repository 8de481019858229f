"""The whole-slide engine shared by the detectors: `plan` (map geometry, ROI grid,
level-0 <-> map transforms: THE coordinate conventions), `run` (streaming runner),
`heatmap` (resumable zarr store of the map), `reader` (ROI windows in model pixels).

Names are imported lazily: `import napari_wsi_detect.engine` does not import torch.
"""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    "MapGeometry": "napari_wsi_detect.engine.plan",
    "ROI": "napari_wsi_detect.engine.plan",
    "plan_rois": "napari_wsi_detect.engine.plan",
    "default_roi_cells": "napari_wsi_detect.engine.plan",
    "HeatmapTile": "napari_wsi_detect.engine.run",
    "HeatmapRunner": "napari_wsi_detect.engine.run",
    "Normalisation": "napari_wsi_detect.engine.run",
    "run_heatmap": "napari_wsi_detect.engine.run",
    "stitch": "napari_wsi_detect.engine.run",
    "HeatmapStore": "napari_wsi_detect.engine.heatmap",
    "HeatmapStoreError": "napari_wsi_detect.engine.heatmap",
    "open_heatmap": "napari_wsi_detect.engine.heatmap",
    "open_run_store": "napari_wsi_detect.engine.heatmap",
    "read_roi": "napari_wsi_detect.engine.reader",
}

__getattr__, __all__ = attach(__name__, _LAZY)
