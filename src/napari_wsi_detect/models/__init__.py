"""Pure torch networks and their files.

Names are imported lazily so that importing the package (e.g. for the CLI's --help)
does not import torch.
"""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    "ScanNetFCN": "napari_wsi_detect.models.scannet",
    "PATCH": "napari_wsi_detect.models.scannet",
    "STRIDE": "napari_wsi_detect.models.scannet",
    "DEFAULT_CPU_WIDTH": "napari_wsi_detect.models.scannet",
    "densify": "napari_wsi_detect.models.anchor",
    "shift_and_stitch": "napari_wsi_detect.models.anchor",
    "patchwise": "napari_wsi_detect.models.anchor",
    "output_size": "napari_wsi_detect.models.anchor",
    "input_size": "napari_wsi_detect.models.anchor",
    "save_model": "napari_wsi_detect.models.io",
    "load_model": "napari_wsi_detect.models.io",
    "build_model": "napari_wsi_detect.models.io",
    "register_architecture": "napari_wsi_detect.models.io",
    "ARCHITECTURES": "napari_wsi_detect.models.io",
    "resolve_device": "napari_wsi_detect.models.device",
}

__getattr__, __all__ = attach(__name__, _LAZY)
