"""napari-wsi-detect: whole-slide detection for napari and the command line.

Public names are imported lazily so that `import napari_wsi_detect` stays fast and never
imports torch, Qt or napari until they are needed.
"""

from __future__ import annotations

from ._lazy import attach

__version__ = "0.1.0"

_LAZY = {
    "open_slide": "napari_wsi_detect.slide",
    "Slide": "napari_wsi_detect.slide.base",
    "detect_metastases": "napari_wsi_detect.api",
    "WsiDetectError": "napari_wsi_detect.errors",
}

__getattr__, __all__ = attach(__name__, _LAZY)
__all__ = __all__ + ["__version__"]
