"""Python API: `detect_metastases(slide, ...)`, `detect_mitoses(slide, ...)`,
`segment_tumour(slide, ...)` -> `DetectionResult`.

A thin keyword front over the one job (detectors/job.py); sliders call
`result.postprocess(...)`, which never re-runs the network.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from .detectors.job import DetectionRequest, ProgressFn, detect
from .detectors.result import SUMMARY_KEYS, DetectionResult
from .models.backend_names import DEFAULT_BACKEND

# The metastasis result is the one result type every detector returns.
MetastasisResult = DetectionResult


def _run(task: str, slide: Any, model: Any, *, options: dict[str, Any],
         params: dict[str, Any], device: str, backend: str, region: Any, out: Any,
         batch_size: int | None, roi_cells: int | None, progress: ProgressFn | None,
         cancel: threading.Event | None, n_readers: int, overwrite: bool,
         on_tile: Callable[[Any], None] | None, tissue_mask: Any, use_tissue: bool,
         mpp: float | None = None) -> DetectionResult:
    """The one request every front builds: a path or an opened slide, a model name/path
    or a network in memory."""
    opened = None if isinstance(slide, (str, os.PathLike)) else slide
    in_memory = not isinstance(model, (str, os.PathLike))
    request = DetectionRequest(
        task=task,
        slide=os.fspath(slide) if opened is None else str(getattr(slide, "path", "")),
        model="in-memory" if in_memory else os.fspath(model),
        device=device, backend=backend, options=options, params=params,
        region=tuple(region) if region is not None else None,
        out=os.fspath(out) if out is not None else None,
        roi_cells=roi_cells, batch_size=batch_size, n_readers=n_readers,
        use_tissue=use_tissue, overwrite=overwrite, mpp=mpp,
    )
    return detect(request, cancel, progress=progress, on_tile=on_tile, slide=opened,
                  model=model if in_memory else None, tissue_mask=tissue_mask)


def detect_metastases(
    slide: Any,
    model: Any = "demo",
    alpha: int = 2,
    device: str = "auto",
    backend: str = DEFAULT_BACKEND,
    region: tuple[int, int, int, int] | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    roi_cells: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    threshold: float | None = None,
    opening_um: float | None = None,
    min_area_um2: float | None = None,
    n_readers: int = 2,
    overwrite: bool = False,
    on_tile: Callable[[Any], None] | None = None,
    tissue_mask: Any = None,
    use_tissue: bool = True,
    hysteresis: float | None = None,
    stain_normalisation: str | None = None,
    closing_um: float | None = None,
) -> DetectionResult:
    """Fast ScanNet metastasis detection on a whole slide (or a level-0 `region` x,y,w,h).

    `slide`: a path or an opened Slide. `model`: "demo", a model file path, a
    (module, config) pair or a module. With `out`, the heatmap streams into
    `out/heatmap.zarr.partial` (resumed if present) and the outputs are written at the
    end; a cancelled run (`cancel` set) raises CancelledError and keeps the partial
    store. `on_tile(HeatmapTile)` sees each tile as it finishes (live display).
    `tissue_mask`: a precomputed `TissueMask` (default: `compute_tissue_mask(slide)`).
    `stain_normalisation`: "none", "macenko" or "reinhard" (default: the model's, else
    none): the slide's stain mapped onto the model's reference before the network;
    `hysteresis`: regions grow down to threshold − hysteresis (0 = plain threshold).
    `closing_um`: a closing of that radius joins a lesion's fragments (0 = none).
    `backend`: how the network runs (models/backends.py): "fp32" exact, "auto" the
    fastest installed backend within 1e-2 of fp32, or a name ("bf16", "openvino", ...)."""
    return _run("metastases", slide, model,
                options={"alpha": alpha, "stain_normalisation": stain_normalisation},
                params={"threshold": threshold, "opening_um": opening_um,
                        "min_area_um2": min_area_um2, "hysteresis": hysteresis,
                        "closing_um": closing_um},
                device=device, backend=backend, region=region, out=out,
                batch_size=batch_size,
                roi_cells=roi_cells, progress=progress, cancel=cancel, n_readers=n_readers,
                overwrite=overwrite, on_tile=on_tile, tissue_mask=tissue_mask,
                use_tissue=use_tissue)


def detect_mitoses(
    slide: Any,
    model: Any = "mitoses",
    mpp: float | None = None,
    device: str = "auto",
    backend: str = DEFAULT_BACKEND,
    region: tuple[int, int, int, int] | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    roi_cells: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    min_score: float | None = None,
    min_area_um2: float | None = None,
    smoothing_um: float | None = None,
    n_readers: int = 2,
    overwrite: bool = False,
    on_tile: Callable[[Any], None] | None = None,
    tissue_mask: Any = None,
    use_tissue: bool = True,
) -> DetectionResult:
    """SegMitos mitosis detection on a slide or a plain image field (PNG/TIFF).

    `result.detections.items` are `postprocess.blobs.Mitosis` points (level-0 x, y,
    score, area_um2); `result.summary()` adds the count per mm² and per 10 HPF and the
    2.37 mm² hotspot. `mpp`: level-0 µm/px, replacing the slide's (a field without one
    needs it; otherwise the model's 0.25 is assumed with a warning). `model`: "mitoses"
    (bundled), a model file, a (module, config) pair or a module. The rest as for
    `detect_metastases`; sliders: `result.postprocess(min_score=..., min_area_um2=...)`."""
    opened = not isinstance(slide, (str, os.PathLike))
    if opened and mpp is not None:
        slide.mpp = float(mpp)
    return _run("mitoses", slide, model, options={},
                params={"min_score": min_score, "min_area_um2": min_area_um2,
                        "smoothing_um": smoothing_um},
                mpp=None if opened else mpp,
                device=device, backend=backend, region=region, out=out,
                batch_size=batch_size,
                roi_cells=roi_cells, progress=progress, cancel=cancel, n_readers=n_readers,
                overwrite=overwrite, on_tile=on_tile, tissue_mask=tissue_mask,
                use_tissue=use_tissue)


def segment_tumour(
    slide: Any,
    model: Any = "tumour",
    device: str = "auto",
    backend: str = DEFAULT_BACKEND,
    region: tuple[int, int, int, int] | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    roi_cells: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    threshold: float | None = None,
    min_area_um2: float | None = None,
    refine: int | None = None,
    n_readers: int = 2,
    overwrite: bool = False,
    on_tile: Callable[[Any], None] | None = None,
    tissue_mask: Any = None,
    use_tissue: bool = True,
) -> DetectionResult:
    """H2G-Net tumour segmentation: stage-1 patch heatmap (MobileNetV2, 256 px patches
    at ~1 µm/px), then the U-Net refinement once at the end of the run.

    `result.detections.items` are tumour regions with holes (postprocess.regions.Region,
    level-0 px); `result.detections.extra` has the boolean `mask` on its `geometry`'s
    grid, `tumour_area_mm2` and `tissue_fraction`. Sliders, never re-running a network:
    `result.postprocess(threshold=..., min_area_um2=..., refine=0 | 1)` (0 = stage 1
    alone). `model`: "tumour" (bundled), a model file, a (module, config) pair or a
    module. The rest as for `detect_metastases`."""
    return _run("tumour", slide, model, options={},
                params={"threshold": threshold, "min_area_um2": min_area_um2,
                        "refine": refine},
                device=device, backend=backend, region=region, out=out,
                batch_size=batch_size,
                roi_cells=roi_cells, progress=progress, cancel=cancel, n_readers=n_readers,
                overwrite=overwrite, on_tile=on_tile, tissue_mask=tissue_mask,
                use_tissue=use_tissue)


__all__ = ["SUMMARY_KEYS", "DetectionResult", "MetastasisResult", "detect_metastases",
           "detect_mitoses", "segment_tumour"]
