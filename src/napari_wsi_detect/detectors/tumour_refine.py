"""H2G-Net stage 2 and the mask post-processing, shared by the detector and training.

* `low_resolution_image`: the slide over the map's extent from the coarsest level whose
  long side is ≥ `size` px (so < 2·size px when the pyramid halves: bounded memory for
  any slide size), white outside the slide.
* `refine_input`: that image in [0, 1] + the stage-1 heatmap, both resized to size²
  (bilinear) → the U-Net's (4, size, size) input. Training builds its inputs with the
  same function, so the two cannot drift apart.
* `refine_store`: run the U-Net once and store ``refined`` and ``tissue`` maps.
* `segment`: threshold + minimum area → regions with holes (postprocess/regions.py) and
  the boolean mask they come from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

_EIGHT = np.ones((3, 3), dtype=bool)


def _level_for(slide: Any, extent0: tuple[float, float], size: int) -> int:
    """The coarsest level on which the extent's long side is still ≥ `size` px."""
    best = 0
    for i, lv in enumerate(slide.levels):
        if max(extent0) / lv.downsample >= size:
            best = i
    return best


def low_resolution_image(slide: Any, geometry: Any, size: int) -> tuple[np.ndarray, float]:
    """(RGB uint8 image of the map's extent, level-0 px per image px)."""
    rows, cols = geometry.shape
    ext_w, ext_h = cols * geometry.cell_size0, rows * geometry.cell_size0
    level = _level_for(slide, (ext_w, ext_h), size)
    ds = float(slide.levels[level].downsample)
    w, h = max(1, int(round(ext_w / ds))), max(1, int(round(ext_h / ds)))
    img = np.asarray(slide.read_region(level, 0, 0, w, h))[..., :3]
    return np.ascontiguousarray(img), ds


def resize(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map or an (h, w, 3) image (float32 out)."""
    import torch
    from torch.nn import functional as F

    a = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    a = a[None, None] if a.dim() == 2 else a.permute(2, 0, 1)[None]
    out = F.interpolate(a, size=tuple(int(s) for s in shape), mode="bilinear",
                        align_corners=False, antialias=a.shape[-1] > shape[1])
    out = out[0, 0] if values.ndim == 2 else out[0].permute(1, 2, 0)
    return out.numpy()


def refine_input(image: np.ndarray, heatmap: np.ndarray, size: int) -> np.ndarray:
    """(4, size, size) float32: RGB in [0, 1] and the heatmap (NaN = 0), both resized."""
    rgb = resize(np.asarray(image, np.float32) / 255.0, (size, size))
    heat = resize(np.nan_to_num(np.asarray(heatmap, np.float32), nan=0.0), (size, size))
    return np.concatenate([rgb.transpose(2, 0, 1), heat[None]], axis=0).clip(0.0, 1.0)


def refine_store(store: Any, slide: Any, net: Any, size: int) -> None:
    """Stage 2 on a finished store: write its ``refined`` and ``tissue`` maps."""
    import torch

    from ..engine.maps import write_map
    from ..slide.tissue import tissue_mask_from_rgb
    from .tumour import refined_geometry

    g = store.geometry
    heat = store.to_numpy()
    image, ds = low_resolution_image(slide, g, size)
    x = torch.from_numpy(refine_input(image, heat, size))[None]
    param = next(net.parameters())
    with torch.inference_mode():
        prob = torch.sigmoid(net.refiner(x.to(param.device)).float())[0, 0].cpu().numpy()
    rg = refined_geometry(g, size)
    k = rg.alpha
    full = (g.rows * k, g.cols * k)
    rows, cols = rg.shape
    write_map(store, "refined", resize(prob, full)[:rows, :cols], rg)
    tissue = tissue_mask_from_rgb(image, mpp=ds * g.slide_mpp).astype(np.float32)
    write_map(store, "tissue", resize(tissue, full)[:rows, :cols].clip(0, 1), rg)


def segment(prob: np.ndarray, geometry: Any, threshold: float, min_area_um2: float
            ) -> tuple[list[Any], np.ndarray]:
    """(regions with holes, boolean mask) of `prob` ≥ `threshold`, components of at
    least `min_area_um2` kept."""
    from ..postprocess.regions import extract_regions

    p = np.nan_to_num(np.asarray(prob, np.float32), nan=0.0)
    binary = p >= threshold
    labels, n = ndi.label(binary, structure=_EIGHT)
    cell_um2 = (geometry.cell_size0 * geometry.slide_mpp) ** 2
    keep = np.bincount(labels.ravel(), minlength=n + 1) * cell_um2 >= min_area_um2
    keep[0] = False
    mask = keep[labels]
    if not mask.any():
        return [], mask
    # -1 outside the kept mask: never ≥ any threshold in [0, 1], so regions = the mask.
    regions = extract_regions(np.where(mask, p, -1.0), geometry, threshold=threshold,
                              opening_um=0.0, min_area_um2=min_area_um2)
    return regions, mask


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


__all__ = ["dice", "low_resolution_image", "refine_input", "refine_store", "resize",
           "segment"]
