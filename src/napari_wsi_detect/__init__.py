"""napari-wsi-detect: whole-slide detection for napari and the command line.

Public names are imported lazily so that `import napari_wsi_detect` stays fast and never
imports torch, Qt or napari until they are needed.
"""

# No `from __future__ import annotations` here: it binds the name `annotations` in this
# module, which then shadows the `annotations` subpackage (`from napari_wsi_detect import
# annotations` returned `__future__.annotations`).
from ._lazy import attach

__version__ = "0.1.0"

_LAZY = {
    "open_slide": "napari_wsi_detect.slide",
    "Slide": "napari_wsi_detect.slide.base",
    "detect_metastases": "napari_wsi_detect.api",
    "detect_mitoses": "napari_wsi_detect.api",
    "segment_tumour": "napari_wsi_detect.api",
    "run_batch": "napari_wsi_detect.batch.run",
    "WsiDetectError": "napari_wsi_detect.errors",
}

# Subpackages reachable as attributes without importing them first.
_SUBPACKAGES = ("annotations", "evaluation", "models", "slide", "engine", "postprocess",
                "training", "phantom", "errors", "batch")

__getattr__, __all__ = attach(__name__, _LAZY, _SUBPACKAGES)
__all__ = __all__ + ["__version__"]
