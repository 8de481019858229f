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
import logging
import os
import threading
import time
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
from napari_wsi_detect._napari.widget_files import RunFilesMixin, notify_errors
from napari_wsi_detect._napari.widget_run import RunEventsMixin
from napari_wsi_detect.errors import WsiDetectError
from napari_wsi_detect.models.backend_names import BACKEND_CHOICES, DEFAULT_BACKEND

_log = logging.getLogger(__name__)
DEBOUNCE_MS = 100


# File dialogs go through these, so tests (and scripts) answer them with a hook.
def ask_open_file(parent: QWidget, title: str, filters: str) -> str:
    return QFileDialog.getOpenFileName(parent, title, "", filters)[0]


def ask_save_file(parent: QWidget, title: str, suggested: str, filters: str) -> str:
    return QFileDialog.getSaveFileName(parent, title, suggested, filters)[0]


def ask_folder(parent: QWidget, title: str) -> str:
    return QFileDialog.getExistingDirectory(parent, title)


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


class DetectWidget(RunEventsMixin, RunFilesMixin, QWidget):
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
        self.task_combo.currentIndexChanged.connect(lambda _i: self._on_task_changed())
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
        self.backend_combo = QComboBox()
        self.backend_combo.setToolTip(
            "How the network runs: fp32 is exact; auto picks the fastest installed backend "
            "within 1e-2 of fp32 on this CPU (docs/models.md, Backends)")
        for name in BACKEND_CHOICES:
            self.backend_combo.addItem(name, name)
        self.backend_combo.setCurrentIndex(self.backend_combo.findData(DEFAULT_BACKEND))
        form.addRow("Backend", self.backend_combo)
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

        post = QGroupBox("Results (from the stored heatmap, no network)")
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
        self.qupath_button = QPushButton("Export for QuPath…")
        self.qupath_button.setToolTip(
            "Write the heatmap as a pyramidal OME-TIFF overlay (µm pixel size, the slide's "
            "origin) and the result layer as edited as QuPath GeoJSON beside it")
        self.qupath_button.clicked.connect(lambda: self.export_qupath())
        self.ngff_button = QPushButton("Export OME-Zarr…")
        self.ngff_button.setToolTip(
            "Write the maps and masks as OME-Zarr (NGFF 0.4, µm) for napari-ome-zarr, "
            "QuPath and other NGFF readers")
        self.ngff_button.clicked.connect(lambda: self.export_ngff())
        others = QHBoxLayout()
        for b in (self.qupath_button, self.ngff_button):
            others.addWidget(b)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        layout.addWidget(post)
        layout.addLayout(files)
        layout.addLayout(others)
        layout.addStretch(1)
        self._build_param_controls()

    def _on_task_changed(self) -> None:
        self._build_param_controls()
        self._on_model_changed()  # the bundled model (and its note) is the new task's

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
        bundled = det.resolve_model(self.model_combo.currentData()) == det.default_model
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

    @notify_errors
    def detect(self) -> None:
        from napari.qt.threading import create_worker

        from napari_wsi_detect._napari import run_files
        from napari_wsi_detect.detectors.job import DetectionRequest, detection_events
        from napari_wsi_detect.models.backends import resolve_backend

        if self.running:
            return
        det = self.detector
        layer = self.slide_layer()
        region = region_level0(self.viewer, layer, self.region_combo.currentText())
        model = str(self.model_combo.currentData())
        options = self.options()
        backend = str(self.backend_combo.currentData())
        device = str(self.device_combo.currentData())
        key = run_files.run_key(det, model, options, resolve_backend(backend, device, det.task))
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
            device=device, backend=backend, options=options,
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

def _describe(state: rl.SlideResult) -> str:
    p = state.result.parameters if state.result is not None else {}
    opts = ", ".join(f"{k} {p[k]}" for k in ("alpha",) if k in p)
    return f"{state.key[0]}{', ' + opts if opts else ''}, {time.strftime('%H:%M')}"


def _layer(data: tuple) -> Any:
    from napari.layers import Layer

    return Layer.create(*data)


# The npe2 manifest's command id and older scripts use this name.
DetectMetastasesWidget = DetectWidget

__all__ = ["DetectMetastasesWidget", "DetectWidget", "device_choices"]
