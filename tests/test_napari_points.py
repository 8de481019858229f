"""Mitosis results in napari: the Points layer + hotspot the widget shows, their export
to QuPath Point detections through the npe2 writer, and point files opened in a viewer
(GeoJSON, ASAP Dot XML). Real layers in a real viewer (headless under Xvfb):
xvfb-run -a .venv/bin/pytest -q tests/test_napari_points.py"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import napari_viewer, shared_file  # noqa: E402
from napari_wsi_detect._napari.points_io import POINT_UM, mitoses_to_layer_data  # noqa: E402
from napari_wsi_detect._napari.result_kinds import layer_data  # noqa: E402
from napari_wsi_detect._napari.writer import write_points, write_shapes  # noqa: E402
from napari_wsi_detect.annotations.geojson import (  # noqa: E402
    read_geojson,
    write_geojson,
)
from napari_wsi_detect.annotations.points import (  # noqa: E402
    mitoses_to_features,
    read_mitosis_features,
)
from napari_wsi_detect.annotations.qupath_check import check_qupath_geojson  # noqa: E402
from napari_wsi_detect.detectors.base import Detections  # noqa: E402
from napari_wsi_detect.postprocess.blobs import Mitosis  # noqa: E402
from napari_wsi_detect.postprocess.mitotic_count import hotspot  # noqa: E402

pytestmark = pytest.mark.gui
MPP = 0.25
EXTENT = (40_000, 30_000)
ITEMS = [Mitosis(12_000.5, 8_000.25, 0.91, 55.0), Mitosis(12_100.0, 8_040.0, 0.62, 41.5),
         Mitosis(12_300.0, 8_500.0, 0.74, 38.0), Mitosis(35_000.0, 25_000.0, 0.55, 70.25)]


@pytest.fixture
def viewer(request):
    return napari_viewer(request, show=False)


def fake_result(items=ITEMS):
    spot = hotspot([(m.x, m.y) for m in items], MPP, EXTENT)
    det = Detections("points", list(items), max((m.score for m in items), default=np.nan),
                     extra={"hotspot": spot, "count_per_mm2": 1.5, "tissue_area_mm2": 2.0})
    return SimpleNamespace(detections=det, slide_score=det.score)


def add_result_layers(viewer, result):
    from napari.layers import Layer

    layers = [Layer.create(*t) for t in layer_data(result, {"min_score": 0.5}, MPP, "mitoses")]
    for layer in layers:
        viewer.add_layer(layer)
    return layers


def test_points_layer_and_hotspot_as_the_widget_adds_them(viewer):
    points, spot = add_result_layers(viewer, fake_result())
    assert points.name == "mitoses" and spot.name == "mitoses hotspot"
    assert type(points).__name__ == "Points" and type(spot).__name__ == "Shapes"
    # Data are level-0 (row, col) on the slide's µm grid.
    assert np.allclose(points.data, [(m.y, m.x) for m in ITEMS])
    assert tuple(points.scale) == (MPP, MPP)
    assert points.features["score"].tolist() == [m.score for m in ITEMS]
    assert points.features["area_um2"].tolist() == [m.area_um2 for m in ITEMS]
    # Size in µm; never drawn smaller than 7 screen px.
    assert np.allclose(points.size * MPP, POINT_UM)
    assert tuple(points.canvas_size_limits)[0] >= 7
    # The hotspot rectangle holds the 3 close mitoses and says so.
    (rect,) = spot.data
    ys, xs = rect[:, 0], rect[:, 1]
    assert xs.min() <= 12_000 and xs.max() >= 12_300 and ys.min() <= 8_000 and ys.max() >= 8_500
    assert spot.features["count"].tolist() == [3.0]
    assert spot.text.values[0] == "Hotspot: 3 mitoses / 2.37 mm²"


def test_no_mitoses_gives_an_empty_points_layer_and_no_hotspot():
    from napari.layers import Layer

    tuples = mitoses_to_layer_data(fake_result([]), {}, MPP, "mitoses")
    assert len(tuples) == 1
    layer = Layer.create(*tuples[0])
    assert len(layer.data) == 0 and list(layer.features.columns) == ["score", "area_um2"]


def test_points_stay_visible_zoomed_out_to_the_whole_slide(request):
    viewer = napari_viewer(request, show=True)  # pixels are needed here
    viewer.window._qt_window.resize(800, 600)
    points, _ = add_result_layers(viewer, fake_result())
    viewer.reset_view()  # whole 40k x 30k px (10 x 7.5 mm) in ~800 px: 14 µm = 1 px
    shot = viewer.screenshot(canvas_only=True, flash=False)
    green = (shot[..., 0] < 80) & (shot[..., 1] > 200) & (shot[..., 2] > 100)
    assert green.sum() >= 4 * 10, "mitosis rings vanish at whole-slide zoom"
    points.canvas_size_limits = (0, 10_000)  # without the floor they do shrink to dust
    shot = viewer.screenshot(canvas_only=True, flash=False)
    green2 = (shot[..., 0] < 80) & (shot[..., 1] > 200) & (shot[..., 2] > 100)
    assert green2.sum() < green.sum()


def test_points_layer_exports_as_qupath_mitosis_detections(viewer, tmp_path):
    import napari

    points, spot = add_result_layers(viewer, fake_result())
    points.add([[1_000.0, 2_000.0]])  # a mitosis the pathologist adds (row, col)
    [path] = napari.save_layers(str(tmp_path / "mitoses.geojson"), [points],
                                plugin="napari-wsi-detect")
    doc = json.loads(open(path).read())
    assert check_qupath_geojson(doc) == []
    feats = doc["features"]
    assert [f["geometry"]["coordinates"] for f in feats] == (
        [[m.x, m.y] for m in ITEMS] + [[2_000, 1_000]])
    for f, m in zip(feats, ITEMS, strict=False):
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": "Mitosis", "color": [255, 200, 0]}
        assert props["measurements"] == {"score": m.score, "area_um2": m.area_um2}
    assert feats[-1]["properties"]["measurements"] == {"score": 1.0}  # hand-added
    assert feats[-1]["properties"]["classification"]["name"] == "Mitosis"
    # The hotspot layer exports as a rectangle annotation with its count.
    [hpath] = write_shapes(str(tmp_path / "hotspot.geojson"), *spot.as_layer_data_tuple()[:2])
    (h,) = json.loads(open(hpath).read())["features"]
    assert h["properties"]["classification"]["name"] == "Hotspot"
    assert h["properties"]["name"] == "Hotspot: 3 mitoses / 2.37 mm²"
    assert h["properties"]["measurements"]["count"] == 3


def test_mitosis_file_opens_as_points_and_exports_back_unchanged(viewer, tmp_path):
    result = fake_result()
    src = write_geojson(tmp_path / "slide.mitoses.geojson",
                        mitoses_to_features(ITEMS, result.detections.extra["hotspot"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = viewer.open(str(src), plugin="napari-wsi-detect")
    kinds = {type(layer).__name__: layer for layer in layers}
    assert set(kinds) == {"Points", "Shapes"}
    pts = kinds["Points"]
    assert np.allclose(pts.data, [(m.y, m.x) for m in ITEMS])
    assert pts.features["score"].tolist() == [m.score for m in ITEMS]
    assert tuple(pts.canvas_size_limits)[0] >= 7
    out = write_points(str(tmp_path / "again.geojson"), *pts.as_layer_data_tuple()[:2])[0]
    back = read_mitosis_features(read_geojson(out))
    assert back.xy.tolist() == [[m.x, m.y] for m in ITEMS]
    assert back.scores.tolist() == [m.score for m in ITEMS]
    assert back.area_um2.tolist() == [m.area_um2 for m in ITEMS]
    assert {f.classification for f in read_geojson(out)} == {"Mitosis"}


@pytest.mark.parametrize("name, n", [("asap-dot.xml", 1), ("asap-pointset.xml", 5)])
def test_asap_dot_files_open_as_points_and_export_as_detections(viewer, tmp_path, name, n):
    path = shared_file(f"annotations/asap-format/{name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [layer] = viewer.open(str(path), plugin="napari-wsi-detect")
    assert type(layer).__name__ == "Points" and len(layer.data) == n
    out = write_points(str(tmp_path / "asap.geojson"), *layer.as_layer_data_tuple()[:2])[0]
    doc = json.loads(open(out).read())
    assert check_qupath_geojson(doc) == []
    assert len(doc["features"]) == n
    assert {f["properties"]["objectType"] for f in doc["features"]} == {"detection"}
    if n == 1:
        assert doc["features"][0]["geometry"]["coordinates"] == pytest.approx(
            [23071.5605, 16831.0098], abs=1e-3)


def test_a_point_added_in_the_widget_is_a_certain_mitosis(viewer, tmp_path):
    """The widget's edit rules (result_layers) applied to the mitoses layer: a point
    added by hand exports as a Mitosis detection with score 1, not NaN."""
    from napari_wsi_detect._napari import result_layers as rl

    points, _ = add_result_layers(viewer, fake_result())
    state = rl.SlideResult(slide_layer=None, task="mitoses", regions_layer=points)
    edits = []
    rl.watch_edits(state, edits.append)
    points.add([[500.0, 600.0]])
    assert edits, "adding a point is an edit"
    [path] = write_points(str(tmp_path / "m.geojson"), *points.as_layer_data_tuple()[:2])
    last = json.loads(open(path).read())["features"][-1]["properties"]
    assert last["measurements"] == {"score": 1.0}
    assert last["classification"]["name"] == "Mitosis" and last["objectType"] == "detection"


def test_mitoses_task_in_the_widget_shows_points_and_hotspot(request, qtbot, monkeypatch,
                                                               phantom_small, tmp_path):
    """Choose the Mitoses task, run a random-weight SegMitos model on a region of the
    phantom, open the sliders: the mitoses arrive as a Points layer with their hotspot,
    and the score line gives the count per mm²."""
    import torch

    from napari_wsi_detect._napari.widget import DetectWidget
    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.segmitos import SegMitosFCN
    from test_napari_widget import _draw_region, _wait_idle, answer, click, set_value

    torch.manual_seed(0)
    model = save_model(SegMitosFCN(width=0.0625), tmp_path / "model" / "m",
                       {"mpp": 0.25, "task": "mitoses"})[0]
    viewer = napari_viewer(request, show=False)
    monkeypatch.setenv("WSI_DETECT_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer.open(str(phantom_small), plugin="napari-wsi-detect")
    w = DetectWidget(viewer)
    viewer.window.add_dock_widget(w, name="WSI Detect")
    w.task_combo.setCurrentIndex(w.task_combo.findData("mitoses"))
    # the bundled model now is the mitosis one, and the note says what it was trained on
    assert "mitosis" in w.model_note.text() and "phantom" not in w.model_note.text()
    answer(monkeypatch, "ask_open_file", str(model))
    click(w.model_button)
    w.tissue_check.setChecked(False)
    _draw_region(viewer, (1024, 1024, 512, 512))
    w.region_combo.setCurrentText("Rectangle (Shapes layer)")
    click(w.detect_button)
    _wait_idle(qtbot, w)
    assert w.last_outcome.status == "done"
    set_value(w, "min_score", 0.0)  # random weights: keep every blob
    set_value(w, "min_area_um2", 0.0)
    _wait_idle(qtbot, w)
    points = viewer.layers["mitoses"]
    assert type(points).__name__ == "Points"
    items = w.result.detections.items
    assert len(points.data) == len(items) > 0
    assert np.allclose(points.data, [(m.y, m.x) for m in items])
    assert points.features["score"].tolist() == pytest.approx([m.score for m in items])
    spot = viewer.layers["mitoses hotspot"]
    assert spot.features["count"].tolist() == [w.result.detections.extra["hotspot"].count]
    assert "per mm²" in w.score_label.text()


def test_the_bundled_entry_of_the_model_list_means_the_chosen_tasks_model():
    """The widget's model list holds "demo (bundled)" for every task: for mitoses and
    tumour it must mean their own bundled model, not the metastasis one (a Detect on
    the Mitoses task with it once failed with "… is a 'metastases' model")."""
    from napari_wsi_detect._napari.run_files import run_key
    from napari_wsi_detect.detectors import get_detector

    for task in ("mitoses", "tumour"):
        det = get_detector(task)
        assert run_key(det, "demo", det.resolve_options()) == \
            run_key(det, det.default_model, det.resolve_options())
        assert det.model_problem("demo") is None
