"""Read a ROI's window in model pixels (see plan.py for the conventions).

The model runs at its own mpp: one model pixel is d level-0 pixels. We read at the
coarsest pyramid level whose downsample is <= d (never upsampling when a finer level
exists) and resize to model pixels with area averaging. With d == 1 level 0 is read as is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import SlideReadError
from .plan import ROI, MapGeometry


def read_window(
    slide, geometry: MapGeometry, x: int, y: int, w: int, h: int
) -> np.ndarray:
    """(h, w, 3) uint8 RGB of the model-pixel window with top-left model pixel (x, y)."""
    d = geometry.d
    x0, y0 = round(x * d), round(y * d)
    if d == 1.0:
        out = slide.read_region(0, x0, y0, w, h)
    else:
        level = slide.best_level_for_downsample(d) if d > 1 else 0
        ds = slide.levels[level].downsample
        lw = max(1, round(w * d / ds))
        lh = max(1, round(h * d / ds))
        out = slide.read_region(level, x0, y0, lw, lh)
        if (lh, lw) != (h, w):
            # BOX = exact area average for whole ratios (d = 2 at level 0 -> 2x2 means).
            resample = Image.Resampling.BOX if lw > w else Image.Resampling.BILINEAR
            out = np.asarray(Image.fromarray(np.ascontiguousarray(out[..., :3])).resize(
                (w, h), resample=resample
            ))
    out = np.asarray(out)
    if out.shape[:2] != (h, w) or out.ndim != 3 or out.shape[2] < 3:
        raise SlideReadError(
            f"slide returned a {out.shape} region where ({h}, {w}, 3) was asked "
            f"(model window at {x},{y})"
        )
    return out[..., :3]


def read_roi(slide, geometry: MapGeometry, roi: ROI) -> np.ndarray:
    """(read_h, read_w, 3) uint8 RGB model-pixel input of one ROI."""
    return read_window(slide, geometry, roi.read_x, roi.read_y, roi.read_w, roi.read_h)
