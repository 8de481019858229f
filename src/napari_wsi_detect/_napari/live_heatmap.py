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

import numpy as np

from napari_wsi_detect.engine.heatmap import HeatmapStore
from napari_wsi_detect.engine.plan import MapGeometry
from napari_wsi_detect.engine.run import HeatmapTile

HEATMAP_NAME = "metastasis heatmap"


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


def heatmap_colormap() -> Any:
    """Inferno with transparency: below 0.1 (not computed, or normal: a model trained
    with label smoothing puts normal tissue near 0.03, not 0) is fully transparent, so
    the slide shows through; from 0.2 up an inferno colour at 55-80 % opacity (as in the
    demo overview). (Additive blending vanishes on the bright H&E background.)"""
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.colormap_utils import ensure_colormap

    inferno = ensure_colormap("inferno")
    controls = np.array([0.0, 0.1, 0.2, 0.5, 0.75, 1.0])
    colors = inferno.map(np.maximum(controls, 0.15)).copy()
    colors[:, 3] = [0.0, 0.0, 0.55, 0.65, 0.75, 0.8]
    return Colormap(colors=colors, controls=controls, name="wsi-detect probability")


class LiveHeatmap:
    """An image layer on the slide that fills as tiles arrive (main thread only)."""

    def __init__(self, viewer: Any, geometry: MapGeometry, slide_layer: Any,
                 name: str = HEATMAP_NAME, max_rate_hz: float = 10.0,
                 initial: np.ndarray | None = None) -> None:
        self.viewer = viewer
        self.geometry = geometry
        self.min_interval = 1.0 / max_rate_hz
        self._last_refresh = 0.0
        self._dirty = False
        # Uncomputed cells show 0 (black = nothing under additive blending); the NaN map
        # the post-processing needs lives in the store.
        self.array = np.zeros(geometry.shape, dtype=np.float32)
        if initial is not None:
            np.copyto(self.array, np.nan_to_num(initial, nan=0.0))
        k = float(slide_layer.scale[-1])
        ty, tx = (float(v) for v in slide_layer.translate[-2:])
        sy, sx = geometry.napari_scale(k)
        oy, ox = geometry.napari_translate(k)
        from napari_wsi_detect._napari.layers import supports_units

        extra: dict[str, Any] = {}
        if supports_units():  # same units as the slide, or napari stops using units
            extra["units"] = tuple(str(u) for u in slide_layer.units[-2:])
        self.layer = viewer.add_image(
            self.array,
            **extra,
            name=name,
            colormap=heatmap_colormap(),
            contrast_limits=(0.0, 1.0),
            opacity=1.0,
            blending="translucent",
            scale=(sy, sx),
            translate=(ty + oy, tx + ox),
            interpolation2d="nearest",
            metadata={"geometry": geometry.to_dict(), "kind": "napari-wsi-detect heatmap"},
        )

    def add_tile(self, tile: HeatmapTile) -> None:
        n, m = tile.probs.shape
        self.array[tile.r0 : tile.r0 + n, tile.c0 : tile.c0 + m] = np.nan_to_num(tile.probs)
        self._dirty = True
        now = time.perf_counter()
        if now - self._last_refresh >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        if self._dirty and self.layer in self.viewer.layers:
            self.layer.refresh()
            self._last_refresh = time.perf_counter()
        self._dirty = False

    def remove(self) -> None:
        if self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
