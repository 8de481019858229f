"""The "Detect metastases" dock widget in a real viewer (headless under Xvfb):
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
from napari_wsi_detect.errors import WsiDetectError  # noqa: E402

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
    weights, _ = save_model(ScanNetFCN(width=0.0625), out,
                            {"mpp": MPP, "thresholds": {"probability": 0.5, "opening_um": 0.0}})
    return weights


@pytest.fixture
def widget(viewer, phantom_small, tiny_model):
    from napari_wsi_detect._napari.widget import DetectMetastasesWidget

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer.open(str(phantom_small), plugin="napari-wsi-detect")
    w = DetectMetastasesWidget(viewer)
    viewer.window.add_dock_widget(w, name="Detect metastases")
    w.set_model_path(tiny_model)
    w.roi_cells = 8
    w.tissue_check.setChecked(False)
    _draw_region(viewer, REGION)
    w.region_combo.setCurrentText("Rectangle (Shapes layer)")
    return w


def _draw_region(viewer, box) -> None:
    x, y, w, h = box
    # World = (level-0 corner - 0.5) * mpp on the slide layer's pixel-centre grid.
    y0, x0, y1, x1 = ((np.array([y, x, y + h, x + w]) - 0.5) * MPP).tolist()
    viewer.add_shapes([np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])],
                      shape_type="rectangle", name="region")


def _wait_idle(qtbot, w, timeout=120_000) -> None:
    qtbot.waitUntil(lambda: not w.running and not w.postprocessing
                    and not w._debounce.isActive(), timeout=timeout)


def _expected_cells(w, roi_cells: int) -> np.ndarray:
    g = MapGeometry.for_slide((3072, 4096), MPP, MPP, alpha=2)
    want = np.zeros(g.shape, dtype=bool)
    for roi in plan_rois((3072, 4096), g, roi_cells, None, REGION):
        want[roi.r0 : roi.r0 + roi.rows, roi.c0 : roi.c0 + roi.cols] = True
    return want


def test_region_from_rectangle_and_field_of_view(widget, viewer) -> None:
    layer = widget.slide_layer()
    assert widget.region_level0(layer) == REGION
    widget.region_combo.setCurrentText("Current field of view")
    viewer.camera.center = (500.0 * MPP, 800.0 * MPP)
    viewer.camera.zoom = 8.0
    x, y, w, h = widget.region_level0(layer)
    assert abs((x + w / 2) - 800.5) <= 1 and abs((y + h / 2) - 500.5) <= 1
    canvas_h, canvas_w = viewer.canvas.size
    assert w == pytest.approx(canvas_w / 8.0 / MPP, abs=2)


def test_detect_fills_the_planned_cells_then_sliders_redraw_regions(widget, viewer, qtbot
                                                                    ) -> None:
    from qtpy.QtCore import QTimer

    from napari_wsi_detect.postprocess.regions import extract_regions

    gaps, last = [], [None]

    def tick():
        import time

        now = time.perf_counter()
        if last[0] is not None:
            gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    widget.detect()
    assert not widget.detect_button.isEnabled()  # one run at a time
    _wait_idle(qtbot, widget)
    timer.stop()
    assert widget.detect_button.isEnabled() and widget.last_outcome.status == "done"
    want = _expected_cells(widget, 8)
    prob = widget._prob
    assert np.array_equal(np.isfinite(prob), want)
    heat = widget.heatmap_layer
    assert heat.name == "metastasis heatmap"
    assert np.all(heat.data[want] > 0) and np.all(heat.data[~want] == 0)
    g = widget._geometry
    assert tuple(heat.scale) == pytest.approx(g.napari_scale(MPP))
    assert tuple(heat.translate) == pytest.approx(g.napari_translate(MPP))
    assert "metastases" in viewer.layers and widget.regions_layer is viewer.layers["metastases"]
    print(f"\nlongest event-loop gap while detecting: {max(gaps) * 1000:.0f} ms; "
          f"longest tile callback {widget.max_callback_s * 1000:.0f} ms")

    # Pick two thresholds (from the map's own quantiles) that give different counts.
    widget.opening.setValue(0.0)
    widget.min_area.setValue(0.0)
    _wait_idle(qtbot, widget)
    vals = prob[want]
    counts = {}
    for q in (0.2, 0.5, 0.8, 0.95, 0.99):
        t = round(float(np.quantile(vals, q)), 2)
        counts[t] = len(extract_regions(prob, g, MPP, t, 0.0, 0.0))
    (t1, n1), (t2, n2) = [(t, n) for t, n in counts.items()][:1] + [
        (t, n) for t, n in counts.items() if n != list(counts.values())[0]][:1]
    assert n1 != n2, counts
    net_calls_before = widget.last_outcome.done
    for t, n in ((t1, n1), (t2, n2)):
        widget.threshold.setValue(t)
        _wait_idle(qtbot, widget)
        layer = viewer.layers["metastases"]
        assert len(set(layer.features["region"])) if layer.nshapes else 0 == n
        assert len(widget._regions) == n
        assert f"{n} region" in widget.score_label.text()
    assert widget.last_outcome.done == net_calls_before  # sliders never ran the network

    widget.restore_defaults()
    _wait_idle(qtbot, widget)
    assert widget.threshold.value() == pytest.approx(0.5)


def test_cancel_stops_within_one_roi_and_detect_resumes(widget, viewer, qtbot, monkeypatch
                                                        ) -> None:
    from napari_wsi_detect.engine.heatmap import HeatmapStore

    widget.roi_cells = 4  # 16 ROIs in the region
    seen, written_after_cancel = [], []
    original_write = HeatmapStore.write_tile

    def write_tile(self, r0, c0, probs):
        # Worker thread: was the cancel already asked for when this ROI landed?
        written_after_cancel.append(event.is_set())
        original_write(self, r0, c0, probs)

    monkeypatch.setattr(HeatmapStore, "write_tile", write_tile)

    def on_tile(ev):
        from napari_wsi_detect.engine.run import HeatmapTile

        if isinstance(ev, HeatmapTile):
            seen.append(ev)
            if len(seen) == 2:
                widget.cancel()

    widget.detect()
    event = widget._cancel
    widget._worker.yielded.connect(on_tile)
    _wait_idle(qtbot, widget)
    out = widget.last_outcome
    assert out.status == "cancelled" and 2 <= out.done < 16
    # The worker runs ahead of the main thread (tiles queue up as events), so count in
    # the worker's time: at most the ROI in flight lands after the cancel.
    assert sum(written_after_cancel) <= 1, "cancel must take effect within one ROI"
    store = widget._store
    assert int(store.computed_blocks().sum()) == out.done
    heat = widget.heatmap_layer.data
    assert np.array_equal(heat > 0, np.isfinite(widget._prob))  # layer == store
    assert "Cancelled" in widget.status_label.text()

    widget.detect()  # same slide, model and density: resumes
    _wait_idle(qtbot, widget)
    assert widget.last_outcome.status == "done"
    assert widget.last_outcome.total == 16 - out.done
    assert np.array_equal(np.isfinite(widget._prob), _expected_cells(widget, 4))
    assert sum(1 for ly in viewer.layers if ly.name.startswith("metastasis heatmap")) == 1


def test_errors_become_notifications_and_leave_no_layer(widget, viewer, qtbot, monkeypatch,
                                                        tmp_path) -> None:
    import napari.utils.notifications as notifications

    from napari_wsi_detect.engine import run

    shown = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(msg))
    widget.set_model_path(tmp_path / "missing.safetensors")
    widget.detect()
    _wait_idle(qtbot, widget)
    assert shown and "model file not found" in shown[-1]
    assert "metastasis heatmap" not in viewer.layers and "metastases" not in viewer.layers

    # A failure after the heatmap layer exists removes it again.
    from napari_wsi_detect.models.io import save_model  # noqa: F401  (model from fixture)

    widget.model_combo.setCurrentIndex(1)
    original = run.HeatmapRunner._run_batch
    calls = []

    def failing(self, batch, start):
        calls.append(1)
        if len(calls) > 1:
            raise WsiDetectError("tile 2 is unreadable (simulated)")
        yield from original(self, batch, start)

    monkeypatch.setattr(run.HeatmapRunner, "_run_batch", failing)
    widget.detect()
    _wait_idle(qtbot, widget)
    assert "simulated" in shown[-1]
    assert not any(ly.name.startswith("metastas") for ly in viewer.layers)
    assert widget.detect_button.isEnabled() and not widget.cancel_button.isEnabled()

    widget.region_combo.setCurrentText("Whole slide")
    viewer.layers.remove("region")
    widget.region_combo.setCurrentText("Rectangle (Shapes layer)")
    widget.detect()  # no rectangle: a clear message, nothing started
    assert "draw a rectangle" in shown[-1] and not widget.running


def test_export_import_and_saved_run(widget, viewer, qtbot, tmp_path) -> None:
    from napari_wsi_detect.annotations.geojson import check_qupath_geojson, load_geojson_object

    widget.detect()
    _wait_idle(qtbot, widget)
    # A synthetic result with a hole, on this slide's map.
    g = widget._geometry
    prob = np.full(g.shape, 0.1, dtype=np.float32)
    prob[70:90, 70:90] = 0.95
    prob[76:80, 76:80] = 0.05
    widget._prob = prob
    widget.opening.setValue(0.0)
    widget.threshold.setValue(0.5)
    widget.update_regions()
    _wait_idle(qtbot, widget)
    layer = widget.regions_layer
    assert layer.nshapes == 2 and list(layer.features["is_hole"]) == [False, True]
    path = widget.export_geojson(tmp_path / "regions.geojson", layer)
    obj = load_geojson_object(path)
    assert check_qupath_geojson(obj) == []
    geom = obj["features"][0]["geometry"]
    assert geom["type"] == "Polygon" and len(geom["coordinates"]) == 2
    # Level-0 pixels, whatever the layer transform: the hole is cells 76-79.
    hole = np.asarray(geom["coordinates"][1])
    assert hole.min(axis=0).tolist() == [76 * 16, 76 * 16]

    [back] = viewer.open(str(path), plugin="napari-wsi-detect")
    assert back.nshapes == 2 and list(back.features["is_hole"]) == [False, True]
    for a, b in zip(back.data, layer.data, strict=True):
        assert np.allclose(np.sort(a, axis=0), np.sort(b, axis=0))
    assert tuple(back.scale) == pytest.approx((MPP, MPP))  # on the slide's µm grid

    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}')
    n_layers = len(viewer.layers)
    with pytest.raises(Exception, match="no geometry"):
        viewer.open(str(bad), plugin="napari-wsi-detect")
    assert len(viewer.layers) == n_layers

    run_dir = widget.save_run(tmp_path / "run")
    assert (run_dir / "heatmap.zarr").is_dir() and (run_dir / "regions.geojson").is_file()
    assert check_qupath_geojson(load_geojson_object(run_dir / "regions.geojson")) == []
    saved_heat = widget.heatmap_layer.data.copy()
    for name in ("metastasis heatmap", "metastases"):
        viewer.layers.remove(name)
    widget._prob = widget._store = None
    widget.open_run(run_dir)
    _wait_idle(qtbot, widget)
    assert np.array_equal(widget.heatmap_layer.data, saved_heat)
    assert viewer.layers["metastases"].nshapes == 2


def test_open_run_refuses_another_slide(widget, qtbot, tmp_path) -> None:
    import napari.utils.notifications as notifications

    from napari_wsi_detect.engine.heatmap import HeatmapStore

    g = MapGeometry.for_slide((1000, 1000), MPP, MPP, alpha=2)
    HeatmapStore.create(None, g, 8, "m").copy_to(tmp_path / "heatmap.zarr")
    shown = []
    orig = notifications.show_error
    notifications.show_error = lambda msg: shown.append(msg)
    try:
        widget.open_run(tmp_path)
    finally:
        notifications.show_error = orig
    assert shown and "open the slide it was made on" in shown[-1]
    assert widget.heatmap_layer is None
