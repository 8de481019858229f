"""The detection job behind the widget, and the heatmap layer it fills while it runs.

`detection_job` is a plain generator (no Qt): it opens the slide, loads the model,
plans the ROIs with the tissue mask and yields a `RunStarted` event, then one engine
`HeatmapTile` per ROI as the streaming runner finishes it. The widget runs it in a napari
`thread_worker`; every yielded value reaches the main thread, where `LiveHeatmap` copies
the tile into a preallocated float32 array backing an image layer and refreshes the
layer at most `max_rate_hz` times a second (a refresh re-uploads the texture, so doing it
per tile would stall the viewer on big maps).

The job writes every tile into a `HeatmapStore` (in memory unless the widget gives one
on disk) whose `computed` flags make a cancelled run resumable: the next Detect with the
same slide, model and density computes only the missing ROIs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from napari_wsi_detect._napari.heatmap_layer import HEATMAP_NAME, LiveHeatmap, heatmap_colormap  # noqa: F401
from napari_wsi_detect.engine.heatmap import HeatmapStore
from napari_wsi_detect.engine.plan import MapGeometry
from napari_wsi_detect.engine.run import HeatmapTile


@dataclass
class DetectionRequest:
    """What the widget asks for; `region` = level-0 (x, y, w, h) or None = whole slide."""

    slide_path: str
    model: str = "demo"
    device: str = "auto"
    alpha: int = 2
    region: tuple[int, int, int, int] | None = None
    store: HeatmapStore | None = None  # a previous run's store, resumed when it matches
    roi_cells: int | None = None  # None: the engine's default for the device
    use_tissue: bool = True  # False: every ROI of the region, background included


@dataclass
class RunStarted:
    """First event of a job: what will be computed."""

    geometry: MapGeometry
    store: HeatmapStore
    config: dict[str, Any]
    total: int  # ROIs in the plan
    todo: int  # ROIs this run computes (the rest were in the resumed store)
    device: str
    resumed: bool = False


@dataclass
class JobOutcome:
    """Last value of a job (the worker's `returned`)."""

    status: str  # "done" | "cancelled"
    store: HeatmapStore
    done: int
    total: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def model_fingerprint(config: dict[str, Any]) -> str:
    return str(config.get("weights_sha256") or config.get("_weights_path") or "")


def detection_job(request: DetectionRequest, cancel: threading.Event
                  ) -> Iterator[RunStarted | HeatmapTile | JobOutcome]:
    """Generator run in a worker thread; see the module docstring. Yields a final
    `JobOutcome` (so it can be read both as the last yield and by the caller)."""
    from napari_wsi_detect.engine.plan import default_roi_cells, plan_rois
    from napari_wsi_detect.engine.run import HeatmapRunner, Normalisation
    from napari_wsi_detect.errors import CancelledError
    from napari_wsi_detect.models.anchor import densify
    from napari_wsi_detect.models.device import resolve_device
    from napari_wsi_detect.models.io import geometry as model_geometry
    from napari_wsi_detect.models.io import load_model
    from napari_wsi_detect.slide import open_slide
    from napari_wsi_detect.slide.tissue import compute_tissue_mask

    start = time.perf_counter()
    device = resolve_device(request.device)
    slide = open_slide(request.slide_path)
    try:
        net, config = load_model(request.model, device)
        patch, stride = model_geometry(config)
        dense = densify(net, request.alpha).to(device).eval()
        shape0 = tuple(slide.levels[0].shape)
        geometry = MapGeometry.for_slide(shape0, slide.mpp, config.get("mpp"), request.alpha,
                                         patch, stride)
        roi_cells = request.roi_cells or default_roi_cells(str(device), request.alpha)
        tissue = compute_tissue_mask(slide) if request.use_tissue else None
        rois = plan_rois(shape0, geometry, roi_cells, tissue, request.region)
        norm = Normalisation.from_config(config)
        params = {"alpha": request.alpha, "model": model_fingerprint(config),
                  "normalisation": norm.to_dict()}
        store, resumed = _store_for(request.store, geometry, roi_cells, config, params)
        todo = store.pending(rois)
        yield RunStarted(geometry, store, config, len(rois), len(todo), str(device), resumed)
        runner = HeatmapRunner(slide, dense, geometry, todo, device=device, batch_size=1,
                               store=store, cancel_event=cancel, normalisation=norm)
        status = "done"
        try:
            yield from iter(runner)
        except CancelledError:
            status = "cancelled"
        yield JobOutcome(status, store, runner.stats.done, len(todo),
                         time.perf_counter() - start, runner.stats.to_dict())
    finally:
        slide.close()


def _store_for(previous: HeatmapStore | None, geometry: MapGeometry, roi_cells: int,
               config: dict[str, Any], params: dict[str, Any]) -> tuple[HeatmapStore, bool]:
    """Resume `previous` when it was made by the same slide geometry, ROI grid, model and
    density; otherwise a fresh in-memory store."""
    name = str(config.get("name") or config.get("_json_path") or "model")
    if previous is not None:
        same = (previous.geometry == geometry and previous.roi_cells == roi_cells
                and _json(previous.params) == _json(params))
        if same:
            return previous, True
    return HeatmapStore.create(None, geometry, roi_cells, name, params), False


def _json(obj: Any) -> str:
    """Canonical text of params, so tuples/lists and key order compare equal."""
    return json.dumps(obj, sort_keys=True)
