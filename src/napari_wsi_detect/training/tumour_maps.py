"""Stage-1 maps of whole slides for training and evaluating the refinement.

The heatmap comes from the detection job's own plan and runner (`prepare_run` +
`run_tiles`) with the tumour detector's stage-1 forward, so the U-Net trains on exactly
the heatmaps it will be given at inference; the low-resolution image and the 4-channel
input come from detectors/tumour_refine.py, as in the detector's `finish`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def stage1_heatmap(net: Any, slide: Any, patch: int, model_mpp: float,
                   norm_mean: Sequence[float], norm_std: Sequence[float],
                   device: Any = "cpu") -> tuple[np.ndarray, Any]:
    """(stage-1 map (rows, cols) float32, 0 where not computed, its MapGeometry)."""
    from ..detectors import get_detector
    from ..detectors.job import prepare_run, run_tiles
    from ..detectors.tumour import PatchForward
    from ..engine.run import stitch
    from ..errors import EmptyTissueError
    from ..slide.tissue import compute_tissue_mask

    det = get_detector("tumour")
    config = {"patch": patch, "stride": patch, "mpp": model_mpp,
              "normalisation": {"mean": list(norm_mean), "std": list(norm_std)}}
    forward = PatchForward(net, patch, tuple(norm_mean), tuple(norm_std))
    tissue = compute_tissue_mask(slide)
    try:
        prep = prepare_run(det, slide, net, config, options={}, device=device,
                           tissue=tissue, forward=forward)
    except EmptyTissueError:
        g = det.geometry(tuple(slide.levels[0].shape[:2]), slide.mpp, config, {})
        return np.zeros(g.shape, np.float32), g
    heat = stitch(iter(run_tiles(prep, slide, n_readers=1)), prep.geometry)
    return np.nan_to_num(heat, nan=0.0), prep.geometry


def truth_on_extent(annotation: str | None, slide_size: tuple[int, int], geometry: Any,
                    size: int) -> np.ndarray:
    """(size, size) bool tumour truth over the map's extent (as the refinement sees it)."""
    from ..detectors.tumour_refine import resize
    from .truth import load_truth

    truth = load_truth(annotation, slide_size)
    rows, cols = geometry.shape
    ext_w, ext_h = cols * geometry.cell_size0, rows * geometry.cell_size0
    ds = max(ext_w, ext_h) / (2 * size)
    shape = (int(np.ceil(ext_h / ds)), int(np.ceil(ext_w / ds)))
    raster = (truth.raster(ds, shape) if not truth.is_empty
              else np.zeros(shape, bool)).astype(np.float32)
    return resize(raster, (size, size)) >= 0.5


def refinement_set(model: Any, cfg: Any, paths: Sequence[Path], annotations: Sequence[Any],
                   device: Any, log: Callable[[str], None] = print
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (n, 4, S, S) float16, truths (n, S, S) uint8) of `paths`."""
    import torch

    from ..detectors.tumour_refine import low_resolution_image, refine_input
    from ..slide import open_slide

    size = int(cfg.refine_size)
    xs, ts = [], []
    for path, ann in zip(paths, annotations, strict=True):
        with open_slide(path) as slide, torch.no_grad():
            heat, g = stage1_heatmap(model, slide, cfg.patch, cfg.model_mpp, cfg.norm_mean,
                                     cfg.norm_std, device)
            image, _ = low_resolution_image(slide, g, size)
            xs.append(refine_input(image, heat, size).astype(np.float16))
            ts.append(truth_on_extent(ann, slide.dimensions, g, size).astype(np.uint8))
        log(f"  stage-1 map of {Path(path).name}: {heat.shape[0]}x{heat.shape[1]} cells, "
            f"max {heat.max():.2f}")
    return np.stack(xs), np.stack(ts)


__all__ = ["refinement_set", "stage1_heatmap", "truth_on_extent"]
