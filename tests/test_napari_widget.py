"""The WSI Detect dock widget in a real viewer, driven as a person drives it: buttons are
clicked with qtbot.mouseClick, values set on the visible spin boxes and combo boxes, file
dialogs answered through the widget's ask_* hooks (headless under Xvfb):
xvfb-run -a .venv/bin/pytest -q tests/test_napari_widget.py

A random-weight, narrow ScanNetFCN saved with models.io stands in for the demo model;
regions are small and ROIs tiny so a run takes seconds on a shared 2-core CPU. The tissue
mask is switched off (every ROI of the region is analysed) so the expected plan does not
depend on the tissue detector."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import napari_viewer  # noqa: E402
from napari_wsi_detect.engine.plan import MapGeometry, plan_rois  # noqa: E402

pytestmark = pytest.mark.gui
MPP = 0.243
REGION = (1024, 1024, 256, 256)  # level-0 x, y, w, h: 16 x 16 map cells at alpha 2


@pytest.fixture
def viewer(request):
    # Hidden: these tests need no pixels, and not drawing avoids sporadic Mesa crashes in
    # glDrawArrays when several shown viewers are torn down in one session.
    return napari_viewer(request, show=False)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model") / "tiny"
    # The legacy key "probability" must still load as the threshold.
    weights, _ = save_model(ScanNetFCN(width=0.0625), out,
                            {"mpp": MPP, "task": "metastases",
                             "thresholds": {"probability": 0.5, "opening_um": 0.0}})
    return weights


@pytest.fixture
def widget(viewer, phantom_small, tiny_model, tmp_path, monkeypatch):
    from napari_wsi_detect._napari.widget import DetectWidget

    monkeypatch.setenv("WSI_DETECT_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer.open(str(phantom_small), plugin="napari-wsi-detect")
    w = DetectWidget(viewer)
    viewer.window.add_dock_widget(w, name="WSI Detect")
    answer(monkeypatch, "ask_open_file", str(tiny_model))
    click(w.model_button)  # the "…" chooser, answered by the hook
    w.roi_cells = 8
    w.tissue_check.setChecked(False)
    _draw_region(viewer, REGION)
    w.region_combo.setCurrentText("Rectangle (Shapes layer)")
    return w


def answer(monkeypatch, hook: str, value) -> None:
    """Answer the widget's next file dialogs of kind `hook` with `value`."""
    from napari_wsi_detect._napari import widget as widget_module

    monkeypatch.setattr(widget_module, hook, lambda *a, **k: str(value) if value else "")


def click(button) -> None:
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    assert button.isVisibleTo(button.window()) and button.isEnabled(), button.text()
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


def set_value(widget, key: str, value) -> None:
    """Type a value into a parameter's visible spin box (or pick it in its combo)."""
    control = widget.controls[key]
    if hasattr(control, "spin"):
        control.spin.setValue(value)
    else:
        control.setCurrentIndex(control.findData(value))


def _draw_region(viewer, box, name="region") -> None:
    x, y, w, h = box
    # World = (level-0 corner - 0.5) * mpp on the slide layer's pixel-centre grid.
    y0, x0, y1, x1 = ((np.array([y, x, y + h, x + w]) - 0.5) * MPP).tolist()
    viewer.add_shapes([np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])],
                      shape_type="rectangle", name=name)


def _wait_idle(qtbot, w, timeout=120_000) -> None:
    qtbot.waitUntil(lambda: not w.running and not w.postprocessing
                    and not w._debounce.isActive(), timeout=timeout)


def _expected_cells(roi_cells: int) -> np.ndarray:
    g = MapGeometry.for_slide((3072, 4096), MPP, MPP, alpha=2)
    want = np.zeros(g.shape, dtype=bool)
    for roi in plan_rois((3072, 4096), g, roi_cells, None, REGION):
        want[roi.r0 : roi.r0 + roi.rows, roi.c0 : roi.c0 + roi.cols] = True
    return want


def _errors(monkeypatch) -> list:
    import napari.utils.notifications as notifications

    shown: list = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(msg))
    return shown


def test_controls_come_from_the_registry_and_schema(widget) -> None:
    from napari_wsi_detect.detectors import available

    tasks = [widget.task_combo.itemData(i) for i in range(widget.task_combo.count())]
    assert tasks == [d.task for d in available()]
    det = available()[0]
    assert set(widget.controls) == {p.key for p in det.options + det.params}
    for p in det.options + det.params:
        assert widget.controls[p.key].toolTip(), p.key  # every control explains itself
    assert widget.controls["opening_um"].unit.text() == "µm"  # its own label, never clipped
    widget.model_combo.setCurrentIndex(0)  # the bundled model says what it was trained on
    assert "synthetic" in widget.model_note.text() and not widget.model_note.isHidden()


def test_clicking_detect_fills_the_planned_cells_then_sliders_redraw(widget, viewer, qtbot
                                                                    ) -> None:
    from napari_wsi_detect.postprocess.regions import extract_regions

    click(widget.detect_button)  # today's TypeError came from exactly this click
    assert not widget.detect_button.isEnabled()  # one run at a time
    _wait_idle(qtbot, widget)
    assert widget.detect_button.isEnabled() and widget.last_outcome.status == "done"
    want = _expected_cells(8)
    prob = widget.result.heatmap
    assert np.array_equal(np.isfinite(prob), want)
    heat = widget.heatmap_layer
    assert heat.name == "metastasis heatmap"
    assert np.all(heat.data[want] > 0) and np.all(heat.data[~want] == 0)
    g = widget.result.geometry
    assert tuple(heat.scale) == pytest.approx(g.napari_scale(MPP))
    assert tuple(heat.translate) == pytest.approx(g.napari_translate(MPP))
    names = [ly.name for ly in viewer.layers]
    assert names.index("metastasis heatmap") < names.index("metastases")  # contours on top
    # The model file's legacy "probability" became the threshold slider's value.
    assert widget.controls["threshold"].value() == pytest.approx(0.5)

    set_value(widget, "opening_um", 0.0)
    _wait_idle(qtbot, widget)
    vals = prob[want]
    counts = {}
    for q in (0.2, 0.5, 0.8, 0.95, 0.99):
        t = round(float(np.quantile(vals, q)), 2)
        counts[t] = len(extract_regions(prob, g, MPP, t, 0.0, 0.0))
    firsts = list(counts.items())
    (t1, n1), (t2, n2) = firsts[0], next((t, n) for t, n in firsts if n != firsts[0][1])
    done_before = widget.last_outcome.done
    for t, n in ((t1, n1), (t2, n2)):
        set_value(widget, "threshold", t)
        _wait_idle(qtbot, widget)
        layer = viewer.layers["metastases"]
        assert (len(set(layer.features["region"])) if layer.nshapes else 0) == n
        assert f"{n} metastasis region" in widget.score_label.text()
    # The closing slider joins fragments: the contours follow it, still without a run.
    joined = len(extract_regions(prob, g, MPP, t2, 0.0, 0.0, closing_um=40.0))
    set_value(widget, "closing_um", 40.0)
    _wait_idle(qtbot, widget)
    layer = viewer.layers["metastases"]
    assert (len(set(layer.features["region"])) if layer.nshapes else 0) == joined <= n2
    assert widget.last_outcome.done == done_before  # sliders never ran the network

    click(widget.defaults_button)
    _wait_idle(qtbot, widget)
    assert widget.controls["threshold"].value() == pytest.approx(0.5)
    assert widget.controls["opening_um"].value() == pytest.approx(0.0)
    assert widget.controls["closing_um"].value() == pytest.approx(0.0)


def test_cancel_button_stops_within_one_roi_and_detect_resumes(widget, viewer, qtbot,
                                                               monkeypatch) -> None:
    from napari_wsi_detect.engine.heatmap import HeatmapStore
    from napari_wsi_detect.engine.run import HeatmapTile

    widget.roi_cells = 4  # 16 ROIs in the region
    seen, after_cancel = [], []
    original_write = HeatmapStore.write_tile

    def write_tile(self, r0, c0, probs):
        after_cancel.append(widget._cancel is not None and widget._cancel.is_set())
        original_write(self, r0, c0, probs)

    monkeypatch.setattr(HeatmapStore, "write_tile", write_tile)

    def on_tile(ev):
        if isinstance(ev, HeatmapTile):
            seen.append(ev)
            if len(seen) == 2:
                click(widget.cancel_button)

    click(widget.detect_button)
    widget._worker.yielded.connect(on_tile)
    _wait_idle(qtbot, widget)
    out = widget.last_outcome
    assert out.status == "cancelled" and 2 <= out.done < 16
    assert sum(after_cancel) <= 1, "cancel must take effect within one ROI"
    assert int(out.store.computed_blocks().sum()) == out.done
    assert out.store.path is not None  # on disk: a napari crash would leave it resumable
    assert np.array_equal(widget.heatmap_layer.data > 0, np.isfinite(widget.result.heatmap))
    assert "Cancelled" in widget.status_label.text()
    assert "partial" in widget.score_label.text()

    click(widget.detect_button)  # same slide, model and density: resumes
    _wait_idle(qtbot, widget)
    assert widget.last_outcome.status == "done"
    assert widget.last_outcome.total == 16 - out.done
    assert np.array_equal(np.isfinite(widget.result.heatmap), _expected_cells(4))
    assert sum(1 for ly in viewer.layers if ly.name.startswith("metastasis heatmap")) == 1


def test_errors_become_notifications_and_leave_no_layer(widget, viewer, qtbot, monkeypatch,
                                                        tmp_path) -> None:
    from napari_wsi_detect.engine import run
    from napari_wsi_detect.errors import WsiDetectError

    shown = _errors(monkeypatch)
    answer(monkeypatch, "ask_open_file", tmp_path / "missing.safetensors")
    click(widget.model_button)
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    assert shown and "model file not found" in shown[-1]
    assert not any(ly.name.startswith("metastas") for ly in viewer.layers)

    widget.model_combo.setCurrentIndex(1)  # the tiny model again
    original = run.HeatmapRunner._run_batch
    calls = []

    def failing(self, batch, start):
        calls.append(1)
        if len(calls) > 1:
            raise WsiDetectError("tile 2 is unreadable (simulated)")
        yield from original(self, batch, start)

    monkeypatch.setattr(run.HeatmapRunner, "_run_batch", failing)
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    assert "simulated" in shown[-1]
    assert not any(ly.name.startswith("metastas") for ly in viewer.layers)
    assert widget.detect_button.isEnabled() and not widget.cancel_button.isEnabled()

    viewer.layers.remove("region")
    click(widget.detect_button)  # no rectangle: a clear message, nothing started
    assert "draw a rectangle" in shown[-1] and not widget.running


def test_edits_survive_slider_moves_and_drawn_shapes_are_their_own(widget, viewer, qtbot,
                                                                  monkeypatch, tmp_path
                                                                  ) -> None:
    from napari_wsi_detect.annotations.geojson import load_geojson_object

    set_value(widget, "opening_um", 0.0)
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    vals = widget.result.heatmap[np.isfinite(widget.result.heatmap)]
    set_value(widget, "threshold", float(np.floor(np.quantile(vals, 0.9) * 100) / 100))
    _wait_idle(qtbot, widget)
    layer = widget.regions_layer
    n = layer.nshapes
    assert n >= 1
    # The pathologist draws a polygon after selecting a detection (napari copies the
    # selected shape's values into "current properties").
    layer.selected_data = {0}
    y0, x0 = (np.array([200.0, 200.0]) * MPP).tolist()
    square = np.array([[y0, x0], [y0, x0 + 20], [y0 + 20, x0 + 20], [y0 + 20, x0]])
    layer.add_polygons([square])
    assert layer.features["region"].iloc[-1] == -1  # a region of its own
    assert layer.features["max_probability"].iloc[-1] == pytest.approx(1.0)

    set_value(widget, "threshold", 0.05)  # would replace every shape of the layer
    _wait_idle(qtbot, widget)
    assert "metastases (edited)" in viewer.layers
    edited = viewer.layers["metastases (edited)"]
    assert edited.nshapes == n + 1  # the hand-drawn shape is still there
    assert widget.regions_layer is not edited and widget.regions_layer.name == "metastases"
    assert "kept" in widget.status_label.text()

    viewer.layers.selection.active = edited
    answer(monkeypatch, "ask_save_file", tmp_path / "edited.geojson")
    click(widget.export_button)
    feats = load_geojson_object(tmp_path / "edited.geojson")["features"]
    drawn = [f for f in feats if not f["properties"].get("measurements")
             or f["properties"]["measurements"].get("max_probability", 1.0) == 1.0]
    assert len(feats) == len({f["id"] for f in feats}) and drawn  # not merged into another


def test_results_stay_with_their_slide_and_previous_runs_are_kept(widget, viewer, qtbot,
                                                                 phantom_small) -> None:
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    first_heat = widget.heatmap_layer
    set_value(widget, "alpha", 1)  # other settings: a new map, the old one is kept
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    assert any(ly.name.startswith("metastasis heatmap (previous") for ly in viewer.layers)
    assert first_heat in viewer.layers and widget.heatmap_layer is not first_heat
    assert "previous result was kept" in widget.status_label.text()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [second] = viewer.open(str(phantom_small), plugin="napari-wsi-detect")
    second.name = "second slide"
    widget.slide_combo.setCurrentText("second slide")
    first_regions = viewer.layers["metastases"]
    n_first = first_regions.nshapes
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    assert widget.regions_layer is not first_regions
    assert widget.regions_layer.name == "metastases (second slide)"
    assert first_regions.nshapes == n_first


def test_export_save_and_open_run_through_the_buttons(widget, viewer, qtbot, monkeypatch,
                                                      tmp_path) -> None:
    import json

    from napari_wsi_detect.annotations.geojson import load_geojson_object
    from napari_wsi_detect.annotations.qupath_check import check_qupath_geojson

    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    vals = widget.result.heatmap[np.isfinite(widget.result.heatmap)]
    t = float(np.floor(np.quantile(vals, 0.9) * 100) / 100)  # some cells at or above
    set_value(widget, "threshold", t)
    _wait_idle(qtbot, widget)
    layer = widget.regions_layer
    assert layer.nshapes, (t, widget.values(), vals.max(), len(widget.result.regions))
    viewer.layers.selection.active = layer
    answer(monkeypatch, "ask_save_file", tmp_path / "regions.geojson")
    click(widget.export_button)
    assert check_qupath_geojson(load_geojson_object(tmp_path / "regions.geojson")) == []

    answer(monkeypatch, "ask_folder", tmp_path / "run")
    click(widget.save_button)
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] is True  # every planned ROI was computed
    assert summary["parameters"]["threshold"] == pytest.approx(t)
    assert "probability" not in summary["parameters"]
    assert check_qupath_geojson(load_geojson_object(run_dir / "regions.geojson")) == []
    saved_heat = widget.heatmap_layer.data.copy()
    n_saved = layer.nshapes

    set_value(widget, "threshold", 0.9)
    _wait_idle(qtbot, widget)
    click(widget.open_button)  # same folder (hook)
    _wait_idle(qtbot, widget)
    assert np.array_equal(widget.heatmap_layer.data, saved_heat)
    assert widget.regions_layer.nshapes == n_saved
    assert widget.controls["threshold"].value() == pytest.approx(t)  # from the summary
    set_value(widget, "threshold", 0.8)
    click(widget.defaults_button)  # the model's defaults, not a fallback
    _wait_idle(qtbot, widget)
    assert widget.controls["threshold"].value() == pytest.approx(0.5)


def test_a_cli_run_opens_and_resumes_in_the_widget(widget, viewer, qtbot, monkeypatch,
                                                   tmp_path, phantom_small, tiny_model) -> None:
    import threading

    from napari_wsi_detect.detectors.job import DetectionRequest, detection_events
    from napari_wsi_detect.engine.run import HeatmapTile

    out = tmp_path / "cli-run"
    cancel = threading.Event()
    req = DetectionRequest("metastases", str(phantom_small), model=str(tiny_model),
                           device="cpu", region=REGION, out=str(out), roi_cells=4,
                           use_tissue=False)
    tiles = 0
    for ev in detection_events(req, cancel):  # what `wsi-detect metastases --out` runs
        if isinstance(ev, HeatmapTile):
            tiles += 1
            if tiles == 3:
                cancel.set()
    assert (out / "heatmap.zarr.partial").is_dir()

    widget.roi_cells = 4
    answer(monkeypatch, "ask_folder", out)
    click(widget.open_button)
    _wait_idle(qtbot, widget)
    assert "partial" in widget.status_label.text()
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    assert widget.last_outcome.status == "done"
    assert widget.last_outcome.total == 16 - 3  # resumed, in the CLI's own folder
    assert (out / "heatmap.zarr").is_dir() and (out / "summary.json").is_file()


def test_open_run_refuses_another_slide(widget, monkeypatch, tmp_path) -> None:
    from napari_wsi_detect.engine.heatmap import HeatmapStore

    g = MapGeometry.for_slide((1000, 1000), MPP, MPP, alpha=2)
    HeatmapStore.create(None, g, 8, "m").copy_to(tmp_path / "heatmap.zarr")
    shown = _errors(monkeypatch)
    answer(monkeypatch, "ask_folder", tmp_path)
    click(widget.open_button)
    assert shown and "open the slide it was made on" in shown[-1]
    assert widget.heatmap_layer is None


def test_closing_the_widget_cancels_its_run(widget, viewer, qtbot, monkeypatch) -> None:
    import time

    from napari_wsi_detect.engine import run

    original = run.HeatmapRunner._run_batch

    def slow(self, batch, start):
        time.sleep(0.2)  # still running when the widget goes
        yield from original(self, batch, start)

    monkeypatch.setattr(run.HeatmapRunner, "_run_batch", slow)
    widget.roi_cells = 2
    click(widget.detect_button)
    qtbot.waitUntil(lambda: widget.heatmap_layer is not None, timeout=60_000)
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.last_outcome is not None and widget.last_outcome.status == "cancelled"


def test_stain_normalisation_chosen_in_its_combo_runs_and_is_recorded(
        widget, viewer, qtbot, phantom_small, tmp_path, monkeypatch) -> None:
    import torch

    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN
    from napari_wsi_detect.slide import open_slide
    from napari_wsi_detect.stain import fit_reference

    with open_slide(phantom_small) as slide:
        ref = fit_reference([slide])
    torch.manual_seed(0)
    weights, _ = save_model(ScanNetFCN(width=0.0625), tmp_path / "stained",
                            {"mpp": MPP, "task": "metastases", "stain_reference": ref})
    answer(monkeypatch, "ask_open_file", str(weights))
    click(widget.model_button)
    combo = widget.controls["stain_normalisation"]
    assert combo.isVisibleTo(widget.window()) and combo.value() == "none"
    assert [combo.itemData(i) for i in range(combo.count())] == ["none", "macenko", "reinhard"]
    set_value(widget, "stain_normalisation", "macenko")
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    assert widget.last_outcome.status == "done"
    assert widget.result.parameters["stain_normalisation"] == "macenko"
    assert widget.result.slide_info["stain"]["method"] == "macenko"


def test_backend_chosen_in_its_combo_runs_and_is_recorded(widget, qtbot) -> None:
    combo = widget.backend_combo
    assert combo.isVisibleTo(widget.window()) and combo.currentData() == "fp32"
    assert combo.findData("auto") >= 0 and combo.findData("openvino") >= 0
    # bf16 autocast needs no optional package: it runs on every CPU (slowly without
    # native bf16), so this test runs in CI as well
    combo.setCurrentIndex(combo.findData("bf16"))
    click(widget.detect_button)
    _wait_idle(qtbot, widget)
    assert widget.last_outcome.status == "done"
    assert widget.result.parameters["backend"] == {"requested": "bf16", "resolved": "bf16"}
    cells = np.isfinite(np.asarray(widget.result.heatmap))
    assert (cells == _expected_cells(8)).all()
