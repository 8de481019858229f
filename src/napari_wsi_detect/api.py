"""Python API: `detect_metastases(slide, ...)` -> `MetastasisResult`.

Plan (tissue-filtered ROIs on the map grid) -> run (streaming dense Fast ScanNet into a
zarr heatmap, resumable) -> postprocess (regions, slide score). Sliders call
`result.postprocess(...)`, which never re-runs the network.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CancelledError, WsiDetectError

SUMMARY_KEYS = (
    "task", "slide", "slide_score", "region_count", "regions", "model", "parameters",
    "geometry", "timings", "package_version", "created",
)

ProgressFn = Callable[[int, int, "float | None"], None]


def _finite(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@dataclass
class MetastasisResult:
    """Whole-slide metastasis detection. `heatmap` is the float32 map (rows, cols), NaN
    where nothing was computed (no tissue / outside the region); `regions` and
    `slide_score` come from the current post-processing parameters."""

    heatmap: np.ndarray
    geometry: Any  # engine.plan.MapGeometry
    regions: list[Any]
    slide_score: float
    timings: dict[str, Any]
    config: dict[str, Any]
    parameters: dict[str, Any]
    slide_info: dict[str, Any] = field(default_factory=dict)
    store: Any = None  # engine.heatmap.HeatmapStore
    out_dir: Path | None = None

    def postprocess(self, threshold: float | None = None, opening_um: float | None = None,
                    min_area_um2: float | None = None) -> list[Any]:
        """Re-run post-processing only (slider moves); updates and returns `regions`."""
        from .postprocess.regions import extract_regions

        p = self.parameters
        for key, value in (("threshold", threshold), ("opening_um", opening_um),
                           ("min_area_um2", min_area_um2)):
            if value is not None:
                p[key] = float(value)
        t = time.perf_counter()
        self.regions = extract_regions(self.heatmap, self.geometry, threshold=p["threshold"],
                                       opening_um=p["opening_um"],
                                       min_area_um2=p["min_area_um2"])
        self.timings["postprocess_s"] = round(time.perf_counter() - t, 4)
        return self.regions

    def features(self) -> list[Any]:
        from .annotations.geojson import regions_to_features

        return regions_to_features(self.regions)

    def summary(self) -> dict[str, Any]:
        from . import __version__

        model = {k: v for k, v in self.config.items()
                 if not str(k).startswith("_") and k not in ("training",)}
        model["path"] = self.config.get("_json_path")
        return {
            "task": "metastases",
            "slide": self.slide_info,
            "slide_score": self.slide_score,
            "region_count": len(self.regions),
            "regions": [r.to_dict() for r in self.regions],
            "model": model,
            "parameters": dict(self.parameters),
            "geometry": self.geometry.to_dict(),
            "timings": dict(self.timings),
            "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def write(self, out_dir: str | os.PathLike) -> Path:
        """Write DIR/heatmap.zarr, DIR/regions.geojson and DIR/summary.json, each
        atomically (temporary name, then rename). Returns DIR."""
        from .annotations.geojson import write_geojson
        from .engine.heatmap import FINAL_NAME

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        final = out / FINAL_NAME
        if self.store is None or self.store.path is None or \
                Path(self.store.path).resolve() != final.resolve():
            if self.store is not None:
                self.store = self.store.copy_to(final)
            else:
                raise WsiDetectError("this result has no heatmap store to write")
        write_geojson(out / "regions.geojson", self.features())
        write_json_atomic(out / "summary.json", self.summary())
        self.out_dir = out
        return out


def _model_identity(config: dict[str, Any], model_arg: Any) -> str:
    if config.get("name"):
        return str(config["name"])
    if config.get("_json_path"):
        return Path(config["_json_path"]).stem
    return str(model_arg) if isinstance(model_arg, (str, os.PathLike)) else "in-memory"


def detect_metastases(
    slide: Any,
    model: Any = "demo",
    alpha: int = 2,
    device: str = "auto",
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
) -> MetastasisResult:
    """Fast ScanNet metastasis detection on a whole slide (or a level-0 `region` x,y,w,h).

    `slide`: a path or an opened Slide. `model`: "demo", a model file path, or a
    (module, config) pair. With `out`, the heatmap streams into
    `out/heatmap.zarr.partial` (resumed if present) and the three outputs are written at
    the end; a cancelled run (`cancel` set) raises CancelledError and keeps the partial
    store. `on_tile(HeatmapTile)` sees each tile as it finishes (live display).
    `tissue_mask`: a precomputed `TissueMask` (default: `compute_tissue_mask(slide)`)."""
    import torch

    from .engine.heatmap import HeatmapStore, open_run_store
    from .engine.plan import MapGeometry, default_roi_cells, plan_rois
    from .engine.run import HeatmapRunner, Normalisation
    from .models.anchor import densify
    from .models.device import resolve_device
    from .models.io import DEFAULT_THRESHOLDS, load_model
    from .postprocess.regions import extract_regions, slide_score
    from .slide import open_slide
    from .slide.tissue import compute_tissue_mask

    timings: dict[str, Any] = {}
    t_start = time.perf_counter()
    owned = isinstance(slide, (str, os.PathLike))
    if owned:
        slide = open_slide(slide)
    try:
        dev = resolve_device(device)
        t = time.perf_counter()
        if isinstance(model, tuple):
            net, config = model
            config = dict(config)
        elif isinstance(model, torch.nn.Module):
            net = model
            config = dict(model.config()) if hasattr(model, "config") else {}
        else:
            net, config = load_model(model, dev)
        # channels_last: the runner feeds NHWC memory; convs then skip a transpose.
        net = net.to(dev).eval().to(memory_format=torch.channels_last)
        timings["model_load_s"] = round(time.perf_counter() - t, 4)

        patch, stride = int(config.get("patch", 244)), int(config.get("stride", 32))
        geometry = MapGeometry.for_slide(slide.levels[0].shape, slide.mpp, config.get("mpp"),
                                         alpha=alpha, patch=patch, model_stride=stride)
        t = time.perf_counter()
        tissue = tissue_mask if tissue_mask is not None else compute_tissue_mask(slide)
        timings["tissue_s"] = round(time.perf_counter() - t, 4)
        t_cells = int(roi_cells or default_roi_cells(dev.type, alpha))
        rois = plan_rois(slide.levels[0].shape, geometry, t_cells, tissue_mask=tissue,
                         region=region)
        bs = int(batch_size or (2 if dev.type == "cuda" else 1))
        norm = Normalisation.from_config(config)
        name = _model_identity(config, model)
        fingerprint = {
            "alpha": int(alpha),
            "weights_sha256": config.get("weights_sha256"),
            "architecture": config.get("architecture"),
            "width": config.get("width"),
            "normalisation": norm.to_dict(),
        }
        if out is not None:
            store = open_run_store(out, geometry, t_cells, name, fingerprint, overwrite=overwrite)
        else:
            store = HeatmapStore.create(None, geometry, t_cells, name, fingerprint)
        todo = store.pending(rois)
        dense = densify(net, alpha)
        runner = HeatmapRunner(slide, dense, geometry, todo, device=dev, batch_size=bs,
                               store=store, progress_cb=progress, cancel_event=cancel,
                               n_readers=n_readers, normalisation=norm)
        t = time.perf_counter()
        try:
            for tile in runner:
                if on_tile is not None:
                    on_tile(tile)
        except CancelledError as exc:
            where = (f"; the partial heatmap is kept in {store.path}: run the same command "
                     "again to resume") if store.path is not None else ""
            raise CancelledError(f"{exc}{where}") from exc
        timings["inference_s"] = round(time.perf_counter() - t, 4)
        stats = runner.stats.to_dict()
        timings.update({
            "io_wait_fraction": stats["io_wait_fraction"],
            "model_s": stats["model_s"],
            "rois_planned": len(rois),
            "rois_computed": len(todo),
            "rois_resumed": len(rois) - len(todo),
        })
        cell_area = geometry.cell_size0 ** 2
        tissue_px = sum(r.rows * r.cols * cell_area * r.tissue for r in todo)
        timings["tissue_megapixels"] = round(tissue_px / 1e6, 3)
        if timings["inference_s"] > 0:
            timings["tissue_mpx_per_s"] = round(tissue_px / 1e6 / timings["inference_s"], 3)

        heatmap = store.to_numpy()
        if store.path is not None:
            store = store.finalise()
        else:
            store.mark_complete()

        thresholds = {**DEFAULT_THRESHOLDS, **(config.get("thresholds") or {})}
        params = {
            "alpha": int(alpha),
            "device": str(dev),
            "roi_cells": t_cells,
            "roi_pixels": geometry.read_size(t_cells),
            "batch_size": bs,
            "region": list(region) if region is not None else None,
            "threshold": float(threshold if threshold is not None
                               else thresholds["probability"]),
            "opening_um": float(opening_um if opening_um is not None
                                else thresholds["opening_um"]),
            "min_area_um2": float(min_area_um2 if min_area_um2 is not None
                                  else thresholds["min_area_um2"]),
        }
        t = time.perf_counter()
        regions = extract_regions(heatmap, geometry, threshold=params["threshold"],
                                  opening_um=params["opening_um"],
                                  min_area_um2=params["min_area_um2"])
        timings["postprocess_s"] = round(time.perf_counter() - t, 4)
        timings["total_s"] = round(time.perf_counter() - t_start, 4)
        h0, w0 = slide.levels[0].shape
        slide_info = {
            "path": str(getattr(slide, "path", "")),
            "width": int(w0),
            "height": int(h0),
            "mpp": slide.mpp,
            "mpp_assumed": geometry.mpp_assumed,
            "tissue_fraction": round(float(tissue.tissue_fraction), 4),
        }
        result = MetastasisResult(heatmap, geometry, regions, slide_score(heatmap), timings,
                                  config, params, slide_info, store)
        if out is not None:
            result.write(out)
        return result
    finally:
        if owned:
            slide.close()
