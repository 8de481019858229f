"""Phantom whole-slide images: synthetic H&E lymph-node sections with exact ground truth.

This package writes slides (`slide/` reads them). `write_phantom(path, seed, size, mpp)`
writes a pyramidal JPEG TIFF, its QuPath GeoJSON truth and a level-5 tumour mask;
`load_phantom_truth(path)` reads the truth back (see `phantom.writer`). The modules:
`layout` (the plan decided once per seed), `render` (any level-0 window from the plan),
`noise` (position-addressed randomness), `geometry` (polygon helpers), `pyramid` (the
streaming pyramidal TIFF writer).
"""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    name: "napari_wsi_detect.phantom.writer"
    for name in (
        "DEFAULT_SIZE",
        "MASK_DOWNSAMPLE",
        "PhantomLesion",
        "PhantomTruth",
        "load_phantom_truth",
        "phantom_layout",
        "render_phantom_region",
        "truth_paths",
        "tumour_mask",
        "write_phantom",
    )
}
_LAZY["write_pyramid_tiff"] = "napari_wsi_detect.phantom.pyramid"

__getattr__, __all__ = attach(__name__, _LAZY)
