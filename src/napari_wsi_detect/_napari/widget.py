"""The "WSI Detect" dock widget: a thin skin over the detector registry and the one job.

* The task list, the run options (α) and the sliders come from the registered
  detectors' parameter schemas; the widget names no task.
* Detect runs `detectors.job.detection_events` in a napari worker into a run folder on
  disk (results/run_files.py), so a cancelled or crashed run resumes; finished ROIs are
  painted live into the slide's heatmap layer (throttled).
* Cancel stops before the next ROI; the computed ROIs stay and Detect resumes them.
  Errors become napari notifications and the failed run's new layers are removed.
* The sliders re-run only the detector's post-processing on the stored map (debounced,
  in a worker), never the network. Edits to the result layer are never overwritten
  (result_layers.py).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

from napari_wsi_detect._napari import result_layers as rl
from napari_wsi_detect._napari.region_choice import REGION_CHOICES, region_level0, slide_shape0
from napari_wsi_detect._napari.widget_controls import control_for
from napari_wsi_detect.errors import WsiDetectError

_log = logging.getLogger(__name__)
DEBOUNCE_MS = 100


# File dialogs go through these, so tests (and scripts) answer them with a hook.
def ask_open_file(parent: QWidget, title: str, filters: str) -> str:
    return QFileDialog.getOpenFileName(parent, title, "", filters)[0]


def ask_save_file(parent: QWidget, title: str, suggested: str, filters: str) -> str:
    return QFileDialog.getSaveFileName(parent, title, suggested, filters)[0]


def ask_folder(parent: QWidget, title: str) -> str:
    return QFileDialog.getExistingDirectory(parent, title)


def _notify_errors(method: Callable) -> Callable:
    """Run a button handler; show any exception as a napari notification instead."""

    @functools.wraps(method)
    def wrapper(self: DetectWidget, *args: Any, **kwargs: Any) -> Any:
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


class DetectWidget(QWidget):
    """Dock widget; `napari_viewer` is injected by napari (npe2 widget contribution)."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_wsi_detect.detectors import available

        self.viewer = napari_viewer
        self.detectors = available()
        self.roi_cells: int | None = None  # None: the detector's default (tests set it small)
        self.controls: dict[str, Any] = {}
        self._states: dict[int, rl.SlideResult] = {}
        self._running_state: rl.SlideResult | None = None
        self._worker: Any = None
        self._cancel: threading.Event | None = None
        self._progress: Any = None
        self._new_layers: list = []
        self._failed = False
        self._events: collections.deque = collections.deque()
        self._handling = False
        self._post_worker: Any = None
        self._post_pending = False
        self.last_outcome: Any = None
        self.callback_s: dict[str, float] = {}  # longest main-thread handling per event type
        self._build()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(lambda: self.update_regions())
        self.viewer.layers.events.inserted.connect(self._refresh_slides)
        self.viewer.layers.events.removed.connect(self._refresh_slides)
        self._refresh_slides()
        self._on_model_changed()

    # -- construction -------------------------------------------------------------------------
    def _build(self) -> None:
        form = QFormLayout()
        self.slide_combo = QComboBox()
        self.slide_combo.setToolTip("The slide image layer to analyse (opened with WSI Detect)")
        self.slide_combo.currentIndexChanged.connect(lambda _i: self._show_state())
        form.addRow("Slide", self.slide_combo)

        self.task_combo = QComboBox()
        self.task_combo.setToolTip("What to detect; each task has its own model and settings")
        for det in self.detectors:
            self.task_combo.addItem(det.title, det.task)
            problem = det.model_problem(det.default_model)
            if problem:  # listed, but not selectable until a model is there
                item = self.task_combo.model().item(self.task_combo.count() - 1)
                item.setEnabled(False)
                item.setToolTip(problem)
        self.task_combo.currentIndexChanged.connect(lambda _i: self._build_param_controls())
        form.addRow("Task", self.task_combo)

        self.model_combo = QComboBox()
        self.model_combo.addItem("demo (bundled)", "demo")
        self.model_combo.setToolTip("The model file to run ('demo' is bundled)")
        self.model_combo.currentIndexChanged.connect(lambda _i: self._on_model_changed())
        self.model_button = QToolButton()
        self.model_button.setText("…")
        self.model_button.setToolTip("Choose a model file (.safetensors or .json)")
        self.model_button.clicked.connect(lambda: self._choose_model())
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.model_button)
        form.addRow("Model", row)
        self.model_note = QLabel("")
        self.model_note.setWordWrap(True)
        self.model_note.setStyleSheet("color: #e0a040;")
        form.addRow(self.model_note)

        self.device_combo = QComboBox()
        self.device_combo.setToolTip("Where the network runs: auto picks a GPU when there is one")
        for label, dev in device_choices():
            self.device_combo.addItem(label, dev)
        form.addRow("Device", self.device_combo)
        self.options_form = QFormLayout()
        form.addRow(self.options_form)

        self.region_combo = QComboBox()
        self.region_combo.addItems(list(REGION_CHOICES))
        self.region_combo.setToolTip(
            "Whole slide, what is on screen now, or the last (selected) rectangle of a "
            "Shapes layer")
        form.addRow("Region", self.region_combo)
        self.tissue_check = QCheckBox("Skip background (tissue mask)")
        self.tissue_check.setChecked(True)
        self.tissue_check.setToolTip(
            "Analyse only ROIs holding tissue. Untick when the tissue detection misses "
            "faint tissue: every ROI of the region is then analysed (slower).")
        form.addRow("", self.tissue_check)

        self.detect_button = QPushButton("Detect")
        self.detect_button.setToolTip("Run the model over the region (resumes a cancelled run)")
        self.detect_button.clicked.connect(lambda: self.detect())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current ROI; the computed ROIs are kept")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.cancel())
        buttons = QHBoxLayout()
        buttons.addWidget(self.detect_button)
        buttons.addWidget(self.cancel_button)
        self.status_label = QLabel("Open a slide, then press Detect.")
        self.status_label.setWordWrap(True)

        post = QGroupBox("Results (from the heatmap; the network does not re-run)")
        post_layout = QVBoxLayout(post)
        self.params_form = QFormLayout()
        post_layout.addLayout(self.params_form)
        self.defaults_button = QPushButton("Restore defaults")
        self.defaults_button.setToolTip("Slider values from the model file")
        self.defaults_button.clicked.connect(lambda: self.restore_defaults())
        post_layout.addWidget(self.defaults_button)
        self.score_label = QLabel("Slide score: –")
        post_layout.addWidget(self.score_label)

        self.export_button = QPushButton("Export GeoJSON…")
        self.export_button.setToolTip(
            "Write the selected Shapes/Points layer (default: this slide's result layer) as "
            "QuPath GeoJSON in level-0 pixels")
        self.export_button.clicked.connect(lambda: self.export_geojson())
        self.save_button = QPushButton("Save run…")
        self.save_button.setToolTip(
            "Write heatmap.zarr, the result layer as edited, and summary.json into a folder")
        self.save_button.clicked.connect(lambda: self.save_run())
        self.open_button = QPushButton("Open run…")
        self.open_button.setToolTip(
            "Show a saved run folder (also one written by wsi-detect) on the chosen slide; "
            "Detect then resumes it")
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
        self._build_param_controls()

    def _build_param_controls(self) -> None:
        """Rebuild the run options and the sliders from the chosen detector's schema."""
        det = self.detector
        for form in (self.options_form, self.params_form):
            while form.rowCount():
                form.removeRow(0)
        self.controls = {}
        for param in det.options + det.params:
            control = control_for(param)
            (self.options_form if param.stage == "run" else self.params_form).addRow(
                param.label, control)
            if param.stage == "post":
                control.valueChanged.connect(self._schedule_update)
            self.controls[param.key] = control
        self.threshold = self.controls.get("threshold")  # the control scripts look for

    # -- choices -------------------------------------------------------------------------------
    @property
    def detector(self) -> Any:
        from napari_wsi_detect.detectors import get_detector

        return get_detector(self.task_combo.currentData() or self.detectors[0].task)

    def _refresh_slides(self, event: Any = None) -> None:
        current = self.slide_combo.currentText()
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        for layer in self.viewer.layers:
            if getattr(layer, "rgb", False) and "path" in (layer.metadata or {}):
                self.slide_combo.addItem(layer.name)
                if not getattr(layer, "_wsi_name_watched", False):  # a rename updates the list
                    layer.events.name.connect(self._refresh_slides)
                    layer._wsi_name_watched = True
        index = self.slide_combo.findText(current)
        active = self.viewer.layers.selection.active
        if index < 0 and active is not None:
            index = self.slide_combo.findText(active.name)
        self.slide_combo.setCurrentIndex(max(index, 0) if self.slide_combo.count() else -1)
        self.slide_combo.blockSignals(False)
        live = {id(ly) for ly in self.viewer.layers}
        for k in [k for k, s in self._states.items() if id(s.slide_layer) not in live]:
            if self._running_state is not self._states[k]:
                del self._states[k]

    def slide_layer(self) -> Any:
        """The slide layer chosen in the combo (WsiDetectError when there is none)."""
        name = self.slide_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        raise WsiDetectError(
            "no slide to analyse: open a whole-slide image with File > Open (WSI Detect "
            "reader) or File > Open Sample > WSI Detect > Phantom lymph node")

    def _state(self, layer: Any) -> rl.SlideResult:
        state = self._states.get(id(layer))
        if state is None or state.slide_layer is not layer:
            state = self._states[id(layer)] = rl.SlideResult(layer, self.detector.task)
        return state

    def _current_state(self) -> rl.SlideResult | None:
        try:
            layer = self.slide_layer()
        except WsiDetectError:
            return None
        return self._states.get(id(layer))

    def _show_state(self) -> None:
        state = self._current_state()
        if state is None or state.result is None:
            self.score_label.setText("Slide score: –")
        else:
            self._set_score(state)

    def set_model_path(self, path: str | os.PathLike) -> None:
        """Use the model file at `path` (NAME.safetensors or NAME.json)."""
        path = str(path)
        index = self.model_combo.findData(path)
        if index < 0:
            self.model_combo.addItem(Path(path).name, path)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)

    def _choose_model(self) -> None:
        path = ask_open_file(self, "Choose a model file", "Model files (*.safetensors *.json)")
        if path:
            self.set_model_path(path)

    def _on_model_changed(self) -> None:
        det = self.detector
        bundled = self.model_combo.currentData() == det.default_model
        self.model_note.setText(det.bundled_note if bundled else "")
        self.model_note.setVisible(bool(bundled and det.bundled_note))

    def values(self) -> dict[str, Any]:
        """The slider values, one key per schema parameter."""
        return {p.key: self.controls[p.key].value() for p in self.detector.params}

    def options(self) -> dict[str, Any]:
        return {p.key: self.controls[p.key].value() for p in self.detector.options}

    def _set_values(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            control = self.controls.get(key)
            if control is not None:
                control.blockSignals(True)
                control.setValue(value)
                control.blockSignals(False)

    # -- running --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    @_notify_errors
    def detect(self) -> None:
        from napari.qt.threading import create_worker

        from napari_wsi_detect._napari import run_files
        from napari_wsi_detect.detectors.job import DetectionRequest, detection_events

        if self.running:
            return
        det = self.detector
        layer = self.slide_layer()
        region = region_level0(self.viewer, layer, self.region_combo.currentText())
        model = str(self.model_combo.currentData())
        options = self.options()
        key = run_files.run_key(det, model, options)
        state = self._state(layer)
        notes = []
        if state.result is not None and (state.key != key or state.task != det.task):
            kept = rl.keep_as_previous(self.viewer, state, _describe(state))
            notes.append(f"The previous result was kept as {', '.join(kept)}.")
        if state.out_dir is None or state.key != key:
            state.out_dir = run_files.cache_run_dir(
                str(layer.metadata["path"]), slide_shape0(layer), det.task, key)
        state.key, state.task, state.notes = key, det.task, notes
        request = DetectionRequest(
            task=det.task, slide=str(layer.metadata["path"]), model=model,
            device=str(self.device_combo.currentData()), options=options,
            # No slider values: a fresh map starts from the model's defaults; the sliders
            # are applied to the result when it arrives (update_regions).
            params={}, region=region, out=str(state.out_dir),
            roi_cells=self.roi_cells, use_tissue=self.tissue_check.isChecked())
        self._running_state, self._new_layers, self._failed = state, [], False
        self._cancel = threading.Event()
        self.callback_s = {}
        # Connecting "errored" also stops superqt re-raising the error in the main thread.
        self._worker = create_worker(
            detection_events, request, self._cancel, _start_thread=False,
            _connect={"yielded": self._on_event, "errored": self._on_error,
                      "finished": self._on_finished})
        self.detect_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText("Preparing: loading the model, finding tissue…")
        self._worker.start()

    def cancel(self) -> None:
        """Stop the run before its next ROI; computed ROIs stay (and resume later)."""
        if self._cancel is not None:
            self._cancel.set()
            self.status_label.setText("Cancelling after the current ROI…")

    def _on_event(self, event: Any) -> None:
        """Handle worker events strictly in order: napari's progress bar may process Qt
        events, which would deliver the next tile re-entrantly; such events queue here."""
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
        from napari_wsi_detect.detectors.job import JobOutcome, RunStarted
        from napari_wsi_detect.engine.run import HeatmapTile

        if self._failed:  # queued before this run's error arrived
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
        key = type(event).__name__
        self.callback_s[key] = max(self.callback_s.get(key, 0.0), time.perf_counter() - t)

    def _on_started(self, ev: Any) -> None:
        from napari.utils import progress

        from napari_wsi_detect._napari.heatmap_layer import LiveHeatmap

        state, det = self._running_state, self.detector
        if not ev.resumed:
            self._set_values(ev.params)  # the model's defaults for a fresh map
        old = state.heatmap
        if not (old is not None and old.layer in self.viewer.layers
                and old.array.shape == ev.geometry.shape):
            if old is not None:
                old.remove()
            name = rl.unique_name(self.viewer, det.heatmap_name, state.slide_layer)
            state.heatmap = LiveHeatmap(self.viewer, ev.geometry, state.slide_layer, name=name,
                                        initial=ev.store.to_numpy() if ev.resumed else None)
            self._new_layers.append(state.heatmap.layer)
        rl.place_below_results(self.viewer, state.heatmap.layer, state.slide_layer)
        self._progress = progress(total=max(ev.todo, 1), desc=f"Detecting {det.task}")
        done = ev.total - ev.todo
        self.status_label.setText(
            f"Running on {ev.device}: {ev.todo} ROIs to compute"
            + (f" ({done} already done, resumed)" if done else "")
            + (" " + " ".join(state.notes) if state.notes else ""))

    def _on_tile(self, tile: Any) -> None:
        state = self._running_state
        if state is not None and state.heatmap is not None:
            state.heatmap.add_tile(tile)
        eta = f", about {tile.eta:.0f} s left" if tile.eta is not None else ""
        text = f"ROI {tile.done} of {tile.total}{eta}"
        bar = self._progress  # set_description may process events, "finished" included
        if bar is not None:
            bar.set_description(f"Detecting {self.detector.task}: {text}")
            bar.update(1)
        self.status_label.setText(text)

    def _on_outcome(self, out: Any) -> None:
        state = self._running_state
        self.last_outcome = out
        state.result = out.result
        if state.heatmap is not None:
            state.heatmap.flush()
        self._new_layers = []  # this run's layers are now a valid result
        self.update_regions(state)
        if out.status == "cancelled":
            self.status_label.setText(
                f"Cancelled after {out.done} of {out.total} ROIs; the heatmap shows those. "
                "Press Detect to compute the rest.")
        else:
            self.status_label.setText(f"Done: {out.done} ROIs in {out.seconds:.1f} s."
                                      + (" " + " ".join(state.notes) if state.notes else ""))

    def _on_error(self, exc: BaseException) -> None:
        self._failed = True
        state = self._running_state
        for layer in self._new_layers:  # no half-made result
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        if state is not None and state.heatmap is not None \
                and state.heatmap.layer in self._new_layers:
            state.heatmap, state.result = None, None
        self._new_layers = []
        self.status_label.setText(f"Failed: {exc}")
        self._show_error(exc)

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = self._cancel = None
        self.detect_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _show_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        _log.debug("WSI Detect error", exc_info=exc)
        if isinstance(exc, WsiDetectError):
            show_error(f"WSI Detect: {exc}")
        else:
            show_error(f"WSI Detect failed ({type(exc).__name__}): {exc}")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        self.cancel()
        super().closeEvent(event)

    def event(self, event: Any) -> bool:
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.cancel()  # napari removed the dock widget: its run stops too
        return super().event(event)

    # -- post-processing ------------------------------------------------------------------------
    def _schedule_update(self, *_: Any) -> None:
        if (state := self._current_state()) is not None and state.result is not None:
            self._debounce.start()

    def restore_defaults(self) -> None:
        """Slider values from the model file of the shown result (schema defaults else)."""
        self._debounce.stop()
        state = self._current_state()
        config = state.result.config if state is not None and state.result else None
        self._set_values(self.detector.defaults(config))
        self.update_regions()

    @property
    def postprocessing(self) -> bool:
        return self._post_worker is not None

    def update_regions(self, state: rl.SlideResult | None = None) -> None:
        """Re-run post-processing on the stored map in a worker, then swap the result
        layer on the main thread; moves made meanwhile coalesce into one more update."""
        from napari.qt.threading import create_worker

        state = state or self._current_state()
        if state is None or state.result is None:
            return
        if self._post_worker is not None:
            self._post_pending = True
            return
        if state.edited:
            kept = rl.freeze_edited(self.viewer, state)
            if kept:
                self.status_label.setText(
                    f"Your edited layer was kept as '{kept}'; the new values go to a new layer.")
        mpp = state.slide_layer.metadata.get("mpp")
        name = (state.regions_layer.name if state.regions_layer is not None
                else rl.unique_name(self.viewer, self.detector.layer_name, state.slide_layer))
        self._post_worker = create_worker(
            _postprocess, state.result, self.values(), mpp, name, _start_thread=False,
            _connect={"returned": functools.partial(self._on_regions, state),
                      "errored": self._show_error, "finished": self._on_post_finished})
        self._post_worker.start()

    def _on_regions(self, state: rl.SlideResult, layer_data: tuple) -> None:
        from napari.layers import Layer

        new = Layer.create(*layer_data)
        old = state.regions_layer
        state.updating = True
        try:
            if not (old is not None and old in self.viewer.layers and _refill(old, new)):
                if old is not None and old in self.viewer.layers:
                    self.viewer.layers.remove(old)
                self.viewer.add_layer(new)
                state.regions_layer = new
            rl.watch_edits(state, self._on_edited)
            rl.reset_feature_defaults(state.regions_layer)
        finally:
            state.updating = False
        if state.heatmap is not None:
            rl.place_below_results(self.viewer, state.heatmap.layer, state.slide_layer)
        self._set_score(state)

    def _on_edited(self, state: rl.SlideResult) -> None:
        self.status_label.setText(
            "Result layer edited: slider changes now go to a new layer (your edits stay).")

    def _set_score(self, state: rl.SlideResult) -> None:
        det = state.result.detections
        text = "–" if not math.isfinite(det.score) else f"{det.score:.3f}"
        n = len(det)
        what = self.detector.layer_name if n != 1 else self.detector.layer_name.rstrip("s")
        self.score_label.setText(f"Slide score: {text}   ·   {n} {what}"
                                 + ("" if state.result.complete else "   ·   (partial map)"))

    def _on_post_finished(self) -> None:
        self._post_worker = None
        if self._post_pending:
            self._post_pending = False
            self.update_regions()

    @property
    def regions_layer(self) -> Any:
        state = self._current_state()
        return state.regions_layer if state is not None else None

    @property
    def heatmap_layer(self) -> Any:
        state = self._current_state()
        return state.heatmap.layer if state is not None and state.heatmap is not None else None

    @property
    def result(self) -> Any:
        state = self._current_state()
        return state.result if state is not None else None

    # -- files ----------------------------------------------------------------------------------
    @_notify_errors
    def export_geojson(self) -> Path | None:
        """Write the selected Shapes/Points layer (else the result layer) as QuPath
        GeoJSON in level-0 pixels, to a file chosen in a dialog."""
        from napari.layers import Points, Shapes

        from napari_wsi_detect._napari.writer import write_layer

        layer = self.viewer.layers.selection.active
        if not isinstance(layer, (Shapes, Points)):
            layer = self.regions_layer
        if layer is None or layer not in self.viewer.layers:
            raise WsiDetectError("nothing to export: select a Shapes or Points layer")
        path = ask_save_file(self, "Export GeoJSON", f"{layer.name}.geojson",
                             "QuPath GeoJSON (*.geojson *.geojson.gz)")
        if not path:
            return None
        state = self._current_state()
        mpp = state.slide_layer.metadata.get("mpp") if state is not None else None
        out = write_layer(path, layer, mpp)
        self.status_label.setText(f"Exported {layer.name} to {out}")
        return out

    @_notify_errors
    def save_run(self) -> Path | None:
        """Write heatmap.zarr, the result layer as edited, and summary.json."""
        from napari_wsi_detect._napari.shapes_io import layer_to_features

        state = self._current_state()
        if state is None or state.result is None:
            raise WsiDetectError("no result to save yet: run Detect first")
        folder = ask_folder(self, "Save the run into a folder")
        if not folder:
            return None
        features = None
        if state.regions_layer is not None and state.regions_layer in self.viewer.layers:
            features = layer_to_features(state.regions_layer,
                                         state.slide_layer.metadata.get("mpp"))
        out = state.result.write(folder, features=features)
        self.status_label.setText(f"Saved the run to {out}")
        return out

    @_notify_errors
    def open_run(self) -> None:
        """Show a saved run folder on the chosen slide; Detect then resumes into it."""
        from napari_wsi_detect._napari import run_files
        from napari_wsi_detect._napari.heatmap_layer import LiveHeatmap
        from napari_wsi_detect._napari.shapes_io import KIND_REGIONS, features_to_layers
        from napari_wsi_detect.annotations.geojson import read_geojson
        from napari_wsi_detect.detectors import get_detector

        folder = ask_folder(self, "Open a saved run folder")
        if not folder:
            return
        folder = Path(folder)
        layer = self.slide_layer()
        result = run_files.load_run(folder, layer, slide_shape0(layer))
        det = get_detector(result.task)
        self.task_combo.setCurrentIndex(max(0, self.task_combo.findData(det.task)))
        state = self._state(layer)
        if state.result is not None:
            rl.keep_as_previous(self.viewer, state, _describe(state))
        if state.heatmap is not None:
            state.heatmap.remove()
        state.result, state.task, state.out_dir = result, det.task, folder
        state.key = run_files.store_key(result.store)
        self._set_values(result.values())
        self._set_values({k: result.parameters[k] for k in self.options()
                          if k in result.parameters})
        state.heatmap = LiveHeatmap(self.viewer, result.geometry, layer, initial=result.heatmap,
                                    name=rl.unique_name(self.viewer, det.heatmap_name, layer))
        state.heatmap.flush()
        saved = folder / det.results_file
        feats = read_geojson(saved) if saved.is_file() else []
        if feats:  # the result as saved (possibly edited), not re-computed
            data = features_to_layers(feats, layer.metadata.get("mpp"), name=rl.unique_name(
                self.viewer, det.layer_name, layer), metadata={"kind": KIND_REGIONS},
                color_by_score=True)
            state.updating = True
            state.regions_layer = self.viewer.add_layer(_layer(data[0]))
            rl.watch_edits(state, self._on_edited)
            state.updating = False
            state.edited = True  # saved layers may hold edits: sliders never overwrite them
            self._set_score(state)
        else:
            self.update_regions(state)
        self.status_label.setText(
            f"Opened the run in {folder}" + ("" if result.complete else
                                             "; its map is partial: Detect resumes it"))


def _describe(state: rl.SlideResult) -> str:
    p = state.result.parameters if state.result is not None else {}
    opts = ", ".join(f"{k} {p[k]}" for k in ("alpha",) if k in p)
    return f"{state.key[0]}{', ' + opts if opts else ''}, {time.strftime('%H:%M')}"


def _layer(data: tuple) -> Any:
    from napari.layers import Layer

    return Layer.create(*data)


def _postprocess(result: Any, values: dict[str, Any], mpp: float | None, name: str) -> tuple:
    """Worker-thread half of `update_regions`: detections and the layer data."""
    from napari_wsi_detect._napari.shapes_io import regions_to_layer_data

    result.postprocess(**values)
    return regions_to_layer_data(result.regions, mpp, name=name,
                                 metadata={"parameters": values,
                                           "slide_score": result.slide_score})


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


# The npe2 manifest's command id and older scripts use this name.
DetectMetastasesWidget = DetectWidget

__all__ = ["DetectMetastasesWidget", "DetectWidget", "device_choices"]
