"""The "Detect metastases" dock widget: a thin skin over the engine and postprocess.

* Detect runs `live_heatmap.detection_job` in a napari `thread_worker`; every finished
  ROI arrives on the main thread and is painted into the "metastasis heatmap" layer
  (refreshes throttled to 10 Hz). napari's activity dock shows progress with the ETA.
* Cancel sets the runner's cancel event: it stops before the next ROI. The heatmap layer
  keeps the ROIs already computed (each one complete), the regions are extracted from
  them, and the store remembers which ROIs are done, so pressing Detect again with the
  same slide, model and density computes only the rest.
* An error (a `WsiDetectError` or anything else) becomes a napari error notification;
  the layers of the failed run are removed, so no half-made result is left behind.
* The sliders re-run only `postprocess.regions.extract_regions` on the stored map
  (debounced 100 ms), never the network, and replace the "metastases" Shapes layer.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_wsi_detect._napari.live_heatmap import (
    HEATMAP_NAME,
    DetectionRequest,
    JobOutcome,
    LiveHeatmap,
    RunStarted,
)
from napari_wsi_detect._napari.shapes_io import (
    KIND_REGIONS,
    features_to_layers,
    regions_to_layer_data,
)
from napari_wsi_detect._napari.widget_controls import FloatSlider
from napari_wsi_detect.engine.run import HeatmapTile
from napari_wsi_detect.errors import WsiDetectError

_log = logging.getLogger(__name__)
REGIONS_NAME = "metastases"
DEBOUNCE_MS = 100
FALLBACK_THRESHOLDS = {"probability": 0.5, "opening_um": 8.0, "min_area_um2": 0.0}
REGION_WHOLE, REGION_VIEW, REGION_RECT = "Whole slide", "Current field of view", \
    "Rectangle (Shapes layer)"


def _notify_errors(method: Callable) -> Callable:
    """Run a button handler; show any exception as a napari notification instead."""

    @functools.wraps(method)
    def wrapper(self: DetectMetastasesWidget, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._show_error(exc)
            return None

    return wrapper


def device_choices() -> list[tuple[str, str]]:
    """(label, device) pairs: auto, CPU, then each GPU torch can see."""
    import torch

    out = [("auto", "auto"), ("CPU", "cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.append((f"GPU {i}: {torch.cuda.get_device_name(i)}", f"cuda:{i}"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(("GPU: Apple MPS", "mps"))
    return out


class DetectMetastasesWidget(QWidget):
    """Dock widget; `napari_viewer` is injected by napari (npe2 widget contribution)."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.roi_cells: int | None = None  # None: the engine's default (tests set it small)
        self._worker: Any = None
        self._cancel: threading.Event | None = None
        self._heatmap: LiveHeatmap | None = None
        self._store: Any = None  # HeatmapStore of the current map
        self._store_slide: str | None = None
        self._geometry: Any = None
        self._prob: np.ndarray | None = None  # NaN = not computed
        self._regions_layer: Any = None
        self._regions: list = []
        self._slide_layer: Any = None
        self._progress: Any = None
        self._run_new_layers: list = []
        self._defaults = dict(FALLBACK_THRESHOLDS)
        self.last_outcome: JobOutcome | None = None
        self.max_callback_s = 0.0  # longest main-thread handling of one worker event
        self.callback_s: dict[str, float] = {}  # the same, per event type
        self.postprocess_s = 0.0  # duration of the last extract_regions
        self.max_swap_s = 0.0  # longest main-thread swap of the regions layer
        self._post_worker: Any = None
        self._post_pending = False
        self._failed = False
        self._events: collections.deque = collections.deque()
        self._handling = False

        self._build()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.update_regions)
        for slider in (self.threshold, self.opening, self.min_area):
            slider.valueChanged.connect(self._schedule_update)
        self.viewer.layers.events.inserted.connect(self._refresh_slides)
        self.viewer.layers.events.removed.connect(self._refresh_slides)
        self._refresh_slides()

    # -- construction ---------------------------------------------------------------------
    def _build(self) -> None:
        form = QFormLayout()
        self.slide_combo = QComboBox()
        self.slide_combo.setToolTip("The slide image layer to analyse (opened with WSI Detect)")
        form.addRow("Slide", self.slide_combo)

        self.task_combo = QComboBox()
        for text in ("Metastases", "Mitoses (coming)", "Tumour (coming)"):
            self.task_combo.addItem(text)
        for row in (1, 2):  # listed so users see what is planned, not selectable yet
            self.task_combo.model().item(row).setEnabled(False)
        form.addRow("Task", self.task_combo)

        self.model_combo = QComboBox()
        self.model_combo.addItem("demo (bundled)", "demo")
        self.model_button = QToolButton()
        self.model_button.setText("…")
        self.model_button.setToolTip("Choose a model file (.safetensors or .json)")
        self.model_button.clicked.connect(self._choose_model)
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.model_button)
        form.addRow("Model", row)

        self.device_combo = QComboBox()
        for label, dev in device_choices():
            self.device_combo.addItem(label, dev)
        form.addRow("Device", self.device_combo)

        self.alpha_combo = QComboBox()
        for a in (1, 2, 4):
            self.alpha_combo.addItem(f"α = {a}  (map every {32 // a} model px)", a)
        self.alpha_combo.setCurrentIndex(1)
        form.addRow("Density", self.alpha_combo)

        self.region_combo = QComboBox()
        for text in (REGION_WHOLE, REGION_VIEW, REGION_RECT):
            self.region_combo.addItem(text)
        form.addRow("Region", self.region_combo)
        self.tissue_check = QCheckBox("Skip background (tissue mask)")
        self.tissue_check.setChecked(True)
        self.tissue_check.setToolTip(
            "Analyse only ROIs holding tissue. Untick when the tissue detection misses "
            "faint tissue: every ROI of the region is then analysed (slower).")
        form.addRow("", self.tissue_check)

        self.detect_button = QPushButton("Detect")
        self.detect_button.clicked.connect(lambda: self.detect())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.detect_button)
        buttons.addWidget(self.cancel_button)
        self.status_label = QLabel("Open a slide, then press Detect.")
        self.status_label.setWordWrap(True)

        post = QGroupBox("Regions (from the heatmap; no network)")
        pform = QFormLayout(post)
        self.threshold = FloatSlider(0.0, 1.0, 0.01, 0.5, decimals=2)
        self.opening = FloatSlider(0.0, 100.0, 0.5, 8.0, decimals=1, suffix=" µm")
        self.min_area = FloatSlider(0.0, 200000.0, 100.0, 0.0, decimals=0, suffix=" µm²")
        pform.addRow("Probability ≥", self.threshold)
        pform.addRow("Opening radius", self.opening)
        pform.addRow("Minimum area", self.min_area)
        self.defaults_button = QPushButton("Restore defaults")
        self.defaults_button.clicked.connect(self.restore_defaults)
        pform.addRow(self.defaults_button)
        self.score_label = QLabel("Slide score: –")
        pform.addRow(self.score_label)

        self.export_button = QPushButton("Export GeoJSON…")
        self.export_button.setToolTip(
            "Write the selected Shapes/Points layer (default: metastases) as QuPath GeoJSON "
            "in level-0 pixels")
        self.export_button.clicked.connect(lambda: self.export_geojson())
        self.save_button = QPushButton("Save run…")
        self.save_button.clicked.connect(lambda: self.save_run())
        self.open_button = QPushButton("Open run…")
        self.open_button.clicked.connect(lambda: self.open_run())
        files = QHBoxLayout()
        for b in (self.export_button, self.save_button, self.open_button):
            files.addWidget(b)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        layout.addWidget(post)
        layout.addLayout(files)
        layout.addStretch(1)

    # -- slide / model / region --------------------------------------------------------------
    def _refresh_slides(self, event: Any = None) -> None:
        current = self.slide_combo.currentText()
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        for layer in self.viewer.layers:
            if getattr(layer, "rgb", False) and "path" in (layer.metadata or {}):
                self.slide_combo.addItem(layer.name)
        index = self.slide_combo.findText(current)
        active = self.viewer.layers.selection.active
        if index < 0 and active is not None:
            index = self.slide_combo.findText(active.name)
        self.slide_combo.setCurrentIndex(max(index, 0) if self.slide_combo.count() else -1)
        self.slide_combo.blockSignals(False)

    def slide_layer(self) -> Any:
        """The slide layer chosen in the combo (WsiDetectError when there is none)."""
        name = self.slide_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        raise WsiDetectError(
            "no slide to analyse: open a whole-slide image with File > Open (WSI Detect "
            "reader) or File > Open Sample > Phantom lymph node"
        )

    @staticmethod
    def _slide_shape0(layer: Any) -> tuple[int, int]:
        levels = layer.metadata.get("levels") or []
        if levels:
            return tuple(int(v) for v in levels[0]["shape"][:2])  # type: ignore[return-value]
        data = layer.data[0] if layer.multiscale else layer.data
        return tuple(int(v) for v in data.shape[:2])  # type: ignore[return-value]

    def set_model_path(self, path: str | os.PathLike) -> None:
        """Use the model file at `path` (NAME.safetensors or NAME.json)."""
        path = str(path)
        index = self.model_combo.findData(path)
        if index < 0:
            self.model_combo.addItem(Path(path).name, path)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)

    def _choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a model file", "", "Model files (*.safetensors *.json)")
        if path:
            self.set_model_path(path)

    def _level0_box(self, layer: Any, corners_world: np.ndarray) -> tuple[int, int, int, int]:
        """Level-0 (x, y, w, h) of world points, clipped to the slide."""
        idx = np.array([layer.world_to_data(p)[-2:] for p in corners_world], dtype=float)
        xy = idx[:, ::-1] + 0.5  # pixel index (centre) -> level-0 corner coordinates
        h0, w0 = self._slide_shape0(layer)
        eps = 1e-3  # float32 shape data: 1023.99998 means 1024
        x0, y0 = np.clip(np.floor(xy.min(axis=0) + eps), 0, [w0, h0]).astype(int)
        x1, y1 = np.clip(np.ceil(xy.max(axis=0) - eps), 0, [w0, h0]).astype(int)
        if x1 <= x0 or y1 <= y0:
            raise WsiDetectError("the chosen region does not overlap the slide")
        return int(x0), int(y0), int(x1 - x0), int(y1 - y0)

    def region_level0(self, layer: Any) -> tuple[int, int, int, int] | None:
        """The region choice as level-0 (x, y, w, h); None = whole slide."""
        choice = self.region_combo.currentText()
        if choice == REGION_VIEW:
            cy, cx = (float(v) for v in self.viewer.camera.center[-2:])
            size = getattr(getattr(self.viewer, "canvas", None), "size", None)
            if size is None:
                size = getattr(self.viewer, "_canvas_size", (600, 800))
            h, w = (float(v) for v in size[-2:])
            zoom = float(self.viewer.camera.zoom)
            hy, hx = h / 2 / zoom, w / 2 / zoom
            corners = np.array([[cy - hy, cx - hx], [cy + hy, cx + hx]])
            return self._level0_box(layer, corners)
        if choice == REGION_RECT:
            shapes = self._rectangle_layer()
            sel = sorted(shapes.selected_data)
            i = sel[-1] if sel else len(shapes.data) - 1
            verts = np.asarray(shapes.data[i])[:, -2:]
            corners = np.array([shapes.data_to_world(v) for v in verts])[:, -2:]
            return self._level0_box(layer, corners)
        return None

    def _rectangle_layer(self) -> Any:
        from napari.layers import Shapes

        active = self.viewer.layers.selection.active
        candidates = ([active] if isinstance(active, Shapes) else []) + [
            ly for ly in reversed(self.viewer.layers) if isinstance(ly, Shapes)]
        for ly in candidates:
            if ly.metadata.get("kind") != KIND_REGIONS and len(ly.data):
                return ly
        raise WsiDetectError(
            "region 'Rectangle' needs a Shapes layer with a rectangle: add a Shapes layer, "
            "draw a rectangle over the area to analyse, then press Detect"
        )

    # -- running ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    @_notify_errors
    def detect(self) -> None:
        if self.running:
            return
        if self.task_combo.currentIndex() != 0:
            raise WsiDetectError("only metastasis detection is available in this version")
        layer = self.slide_layer()
        region = self.region_level0(layer)
        path = str(layer.metadata["path"])
        request = DetectionRequest(
            slide_path=path,
            model=str(self.model_combo.currentData()),
            device=str(self.device_combo.currentData()),
            alpha=int(self.alpha_combo.currentData()),
            region=region,
            store=self._store if self._store_slide == path else None,
            roi_cells=self.roi_cells,
            use_tissue=self.tissue_check.isChecked(),
        )
        self._start(request, layer)

    def _start(self, request: DetectionRequest, layer: Any) -> None:
        from napari.qt.threading import create_worker

        from napari_wsi_detect._napari.live_heatmap import detection_job

        self._slide_layer = layer
        self._run_new_layers = []
        self._failed = False
        self._cancel = threading.Event()
        self.max_callback_s = 0.0
        self.callback_s = {}
        # Connecting "errored" here also stops superqt re-raising the error in the main
        # thread (which aborts a Qt application outside napari.run()).
        worker = create_worker(
            detection_job, request, self._cancel, _start_thread=False,
            _connect={"yielded": self._on_event, "errored": self._on_error,
                      "finished": self._on_finished},
        )
        self._worker = worker
        self._run_path = request.slide_path
        self.detect_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText("Preparing: loading the model, finding tissue…")
        worker.start()

    def cancel(self) -> None:
        """Stop the run before its next ROI; computed ROIs stay (and resume later)."""
        if self._cancel is not None:
            self._cancel.set()
            self.status_label.setText("Cancelling after the current ROI…")

    def _on_event(self, event: Any) -> None:
        """Handle worker events strictly in order. napari's progress bar (and a refresh)
        may process Qt events, which would deliver the next tile re-entrantly, before the
        current one is handled; such events are queued and drained here instead."""
        self._events.append(event)
        if self._handling:
            return
        self._handling = True
        try:
            while self._events:
                self._handle(self._events.popleft())
        finally:
            self._handling = False

    def _handle(self, event: Any) -> None:
        if self._failed:  # events queued before the error of this run arrived: drop them
            return
        t = time.perf_counter()
        try:
            if isinstance(event, HeatmapTile):
                self._on_tile(event)
            elif isinstance(event, RunStarted):
                self._on_started(event)
            elif isinstance(event, JobOutcome):
                self._on_outcome(event)
        except Exception as exc:  # a bug here must not leave a worker without a UI
            self._show_error(exc)
            if self._cancel is not None:
                self._cancel.set()
        dt = time.perf_counter() - t
        self.max_callback_s = max(self.max_callback_s, dt)
        key = type(event).__name__
        self.callback_s[key] = max(self.callback_s.get(key, 0.0), dt)

    def _on_started(self, ev: RunStarted) -> None:
        from napari.utils import progress

        self._geometry, self._store = ev.geometry, ev.store
        self._store_slide = self._run_path
        thresholds = ev.config.get("thresholds") or {}
        self._defaults = {**FALLBACK_THRESHOLDS, **{k: float(v) for k, v in thresholds.items()
                                                    if k in FALLBACK_THRESHOLDS}}
        if not ev.resumed:
            self._apply_defaults(update=False)
        old = self._heatmap
        reuse = (ev.resumed and old is not None and old.layer in self.viewer.layers
                 and old.array.shape == ev.geometry.shape)
        if not reuse:
            if old is not None:
                old.remove()
            initial = ev.store.to_numpy() if ev.resumed else None
            self._heatmap = LiveHeatmap(self.viewer, ev.geometry, self._slide_layer,
                                        initial=initial)
            self._run_new_layers.append(self._heatmap.layer)
        self._progress = progress(total=max(ev.todo, 1), desc="Detecting metastases")
        done_before = ev.total - ev.todo
        self.status_label.setText(
            f"Running on {ev.device}: {ev.todo} ROIs to compute"
            + (f" ({done_before} already done, resumed)" if done_before else ""))

    def _on_tile(self, tile: HeatmapTile) -> None:
        if self._heatmap is not None:
            self._heatmap.add_tile(tile)
        eta = f", about {tile.eta:.0f} s left" if tile.eta is not None else ""
        text = f"ROI {tile.done} of {tile.total}{eta}"
        bar = self._progress  # set_description may process events, "finished" included
        if bar is not None:
            bar.set_description(f"Detecting metastases: {text}")
            bar.update(1)
        self.status_label.setText(text)

    def _on_outcome(self, out: JobOutcome) -> None:
        self.last_outcome = out
        if self._heatmap is not None:
            self._heatmap.flush()
        self._store = out.store
        self._prob = out.store.to_numpy()
        self.update_regions()
        if out.status == "cancelled":
            self.status_label.setText(
                f"Cancelled after {out.done} of {out.total} ROIs; the heatmap shows those. "
                "Press Detect to compute the rest.")
        else:
            self.status_label.setText(f"Done: {out.done} ROIs in {out.seconds:.1f} s.")
        self._run_new_layers = []  # this run's layers are now a valid result

    def _on_error(self, exc: BaseException) -> None:
        self._failed = True
        # No half-made result: drop what this run added, and its store.
        for layer in self._run_new_layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        if self._heatmap is not None and self._heatmap.layer in self._run_new_layers:
            self._heatmap = None
            self._store, self._store_slide, self._prob = None, None, None
        self._run_new_layers = []
        self.status_label.setText(f"Failed: {exc}")
        self._show_error(exc)

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = None
        self._cancel = None
        self.detect_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _show_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        _log.debug("Detect metastases error", exc_info=exc)

        if isinstance(exc, WsiDetectError):
            show_error(f"Detect metastases: {exc}")
        else:
            show_error(f"Detect metastases failed ({type(exc).__name__}): {exc}")

    # -- post-processing ---------------------------------------------------------------------
    def _schedule_update(self, *_: Any) -> None:
        if self._prob is not None:
            self._debounce.start()

    def _apply_defaults(self, update: bool = True) -> None:
        for slider, key in ((self.threshold, "probability"), (self.opening, "opening_um"),
                            (self.min_area, "min_area_um2")):
            slider.blockSignals(True)
            slider.setValue(self._defaults[key])
            slider.blockSignals(False)
        if update:
            self.update_regions()

    def restore_defaults(self) -> None:
        """Slider values from the model's config ("thresholds")."""
        self._debounce.stop()
        self._apply_defaults(update=True)

    def thresholds(self) -> dict[str, float]:
        return {"probability": self.threshold.value(), "opening_um": self.opening.value(),
                "min_area_um2": self.min_area.value()}

    @property
    def postprocessing(self) -> bool:
        """True while regions are being re-computed in the background."""
        return self._post_worker is not None

    def update_regions(self) -> None:
        """Re-run post-processing on the stored map (never the network) in a worker
        thread, then swap in the new "metastases" layer on the main thread; moves made
        meanwhile are coalesced into one more update. (The Shapes layer itself is built
        on the main thread: building it in a worker crashed the GL drawing under Mesa.)"""
        from napari.qt.threading import create_worker

        if self._prob is None or self._geometry is None:
            return
        if self._post_worker is not None:
            self._post_pending = True
            return
        args = (self._prob, self._geometry, self.thresholds(), self._layer_mpp())
        worker = create_worker(
            _build_regions, *args, _start_thread=False,
            _connect={"returned": self._on_regions, "errored": self._show_error,
                      "finished": self._on_post_finished},
        )
        self._post_worker = worker
        worker.start()

    def _on_regions(self, built: tuple) -> None:
        t = time.perf_counter()
        from napari.layers import Layer

        self._regions, score, layer_data, self.postprocess_s = built
        self._swap_regions_layer(Layer.create(*layer_data))
        text = "–" if not math.isfinite(score) else f"{score:.3f}"
        n = len(self._regions)
        self.score_label.setText(f"Slide score: {text}   ·   {n} region{'s' if n != 1 else ''}")
        self.max_swap_s = max(self.max_swap_s, time.perf_counter() - t)

    def _on_post_finished(self) -> None:
        self._post_worker = None
        if self._post_pending:
            self._post_pending = False
            self.update_regions()

    def _layer_mpp(self) -> float | None:
        layer = self._slide_layer
        if layer is None or layer not in self.viewer.layers:
            return self._geometry.slide_mpp if self._geometry is not None else None
        return layer.metadata.get("mpp")

    def _set_regions_layer(self, layer_data: tuple) -> None:
        from napari.layers import Layer

        self._swap_regions_layer(Layer.create(*layer_data))

    def _swap_regions_layer(self, layer: Any) -> None:
        old = self._regions_layer
        if old is not None and old in self.viewer.layers and _refill(old, layer):
            return  # updated in place: no layer removal/creation (~1 s of Qt work)
        index = None
        if old is not None and old in self.viewer.layers:
            index = self.viewer.layers.index(old)
            self.viewer.layers.remove(old)
        self.viewer.add_layer(layer)
        if index is not None:
            self.viewer.layers.move(self.viewer.layers.index(layer), index)
        self._regions_layer = layer
        if self._worker is not None:
            self._run_new_layers.append(layer)

    @property
    def regions_layer(self) -> Any:
        return self._regions_layer

    @property
    def heatmap_layer(self) -> Any:
        return self._heatmap.layer if self._heatmap is not None else None

    # -- files ----------------------------------------------------------------------------------
    def _export_layer(self) -> Any:
        from napari.layers import Points, Shapes

        active = self.viewer.layers.selection.active
        if isinstance(active, (Shapes, Points)):
            return active
        if self._regions_layer is not None and self._regions_layer in self.viewer.layers:
            return self._regions_layer
        raise WsiDetectError("nothing to export: select a Shapes or Points layer")

    @_notify_errors
    def export_geojson(self, path: str | os.PathLike | None = None, layer: Any = None
                       ) -> Path | None:
        """Write `layer` (default: the selected Shapes/Points layer, else "metastases")
        as QuPath GeoJSON in level-0 pixels; asks for a file name when `path` is None."""
        from napari_wsi_detect._napari.writer import write_layer

        layer = layer or self._export_layer()
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export GeoJSON", f"{layer.name}.geojson",
                "QuPath GeoJSON (*.geojson *.geojson.gz)")
            if not path:
                return None
        mpp = self._layer_mpp() if self._slide_layer is not None else None
        out = write_layer(path, layer, mpp)
        self.status_label.setText(f"Exported {layer.name} to {out}")
        return out

    @_notify_errors
    def save_run(self, folder: str | os.PathLike | None = None) -> Path | None:
        """Write heatmap.zarr, regions.geojson (the layer as edited) and summary.json."""
        from napari_wsi_detect._napari.writer import write_layer

        if self._store is None:
            raise WsiDetectError("no heatmap to save yet: run Detect first")
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Save the run into a folder")
            if not folder:
                return None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._store.copy_to(folder / "heatmap.zarr")
        if self._regions_layer is not None and len(self._regions_layer.data):
            write_layer(folder / "regions.geojson", self._regions_layer, self._layer_mpp())
        else:  # an empty but valid FeatureCollection: "nothing found" is a result
            from napari_wsi_detect.annotations.geojson import write_geojson

            write_geojson(folder / "regions.geojson", [])
        summary = {
            "slide": self._store_slide,
            "slide_score": None if self._prob is None else _finite(np.nanmax(self._prob)
                                                                    if np.isfinite(
                                                                        self._prob).any()
                                                                    else math.nan),
            "regions": len(self._regions),
            "parameters": self.thresholds(),
            "model": self._store.model_name,
            "complete": bool(self._store.computed_blocks().all()),
        }
        tmp = folder / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder / "summary.json")
        self.status_label.setText(f"Saved the run to {folder}")
        return folder

    @_notify_errors
    def open_run(self, folder: str | os.PathLike | None = None) -> None:
        """Show a saved run (heatmap.zarr + regions.geojson) on the selected slide."""
        from napari_wsi_detect.annotations.geojson import read_geojson
        from napari_wsi_detect.engine.heatmap import open_heatmap

        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Open a saved run folder")
            if not folder:
                return
        folder = Path(folder)
        layer = self.slide_layer()
        store = open_heatmap(folder)
        g = store.geometry
        h0, w0 = self._slide_shape0(layer)
        if (g.height0, g.width0) != (h0, w0):
            raise WsiDetectError(
                f"the run in {folder} was made on a {g.width0} x {g.height0} px slide, but "
                f"{layer.name} is {w0} x {h0} px: open the slide it was made on")
        self._slide_layer, self._geometry, self._store = layer, g, store
        self._store_slide = str(layer.metadata["path"])
        self._prob = store.to_numpy()
        if self._heatmap is not None:
            self._heatmap.remove()
        self._heatmap = LiveHeatmap(self.viewer, g, layer, initial=self._prob)
        self._heatmap.flush()
        summary = folder / "summary.json"
        if summary.is_file():
            params = json.loads(summary.read_text(encoding="utf-8")).get("parameters") or {}
            for slider, key in ((self.threshold, "probability"), (self.opening, "opening_um"),
                                (self.min_area, "min_area_um2")):
                if key in params:
                    slider.blockSignals(True)
                    slider.setValue(float(params[key]))
                    slider.blockSignals(False)
        regions = folder / "regions.geojson"
        feats = read_geojson(regions) if regions.is_file() else []
        if feats:  # the regions as saved (possibly edited), not re-computed
            data = features_to_layers(feats, layer.metadata.get("mpp"), name=REGIONS_NAME,
                                      metadata={"kind": KIND_REGIONS}, color_by_score=True)
            self._set_regions_layer(data[0])
            from napari_wsi_detect.postprocess.regions import slide_score

            score = slide_score(self._prob)
            self.score_label.setText(
                f"Slide score: {score:.3f}   ·   {len(feats)} saved regions")
        else:
            self.update_regions()
        self.status_label.setText(f"Opened the run in {folder}")


def _build_regions(prob: np.ndarray, geometry: Any, th: dict[str, float],
                   layer_mpp: float | None) -> tuple[list, float, Any, float]:
    """Worker-thread half of `update_regions`: regions, slide score and the Shapes layer
    data (napari-free), plus the seconds extract_regions took."""
    from napari_wsi_detect.postprocess.regions import extract_regions, slide_score

    t = time.perf_counter()
    regions = extract_regions(prob, geometry, geometry.slide_mpp, th["probability"],
                              th["opening_um"], th["min_area_um2"])
    seconds = time.perf_counter() - t
    score = slide_score(prob)
    data = regions_to_layer_data(regions, layer_mpp, name=REGIONS_NAME,
                                 metadata={"thresholds": th, "slide_score": score})
    return regions, score, data, seconds


def _refill(old: Any, new: Any) -> bool:
    """Replace the shapes, features and colours of Shapes layer `old` by those of `new`;
    False (and `old` untouched) when they are not compatible."""
    if set(old.features.columns) != set(new.features.columns) or new.nshapes == 0:
        return False
    old.selected_data = set()
    old.data = []
    old.add(new.data, shape_type=new.shape_type, edge_width=new.edge_width,
            edge_color=new.edge_color, face_color=new.face_color)
    old.features = new.features
    old.metadata = dict(new.metadata)
    return True


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


__all__ = ["DetectMetastasesWidget", "HEATMAP_NAME", "REGIONS_NAME", "device_choices"]
