"""Tumour segmentation results in napari: the editable contour Shapes layer and the
Labels mask the widget adds (through `result_kinds`, kind "mask"), placed on the slide's
µm grid, and the contours exported as QuPath "Tumor" annotations with holes. Real
layers in a real viewer (headless under Xvfb):
xvfb-run -a .venv/bin/pytest -q tests/test_napari_mask.py"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import napari_viewer  # noqa: E402
from napari_wsi_detect._napari.mask_io import KIND_TUMOUR_MASK, MASK_COLOR  # noqa: E402
from napari_wsi_detect._napari.result_kinds import layer_data  # noqa: E402
from napari_wsi_detect._napari.writer import write_shapes  # noqa: E402
from napari_wsi_detect.annotations.qupath_check import check_qupath_geojson  # noqa: E402
from napari_wsi_detect.detectors.base import Detections  # noqa: E402
from napari_wsi_detect.engine.plan import MapGeometry  # noqa: E402
from napari_wsi_detect.postprocess.regions import extract_regions  # noqa: E402

pytestmark = pytest.mark.gui
MPP = 0.5
SHAPE0 = (3000, 4000)  # level-0 (height, width)


@pytest.fixture
def viewer(request):
    return napari_viewer(request, show=False)


def geometry() -> MapGeometry:
    # 1 µm/px model, 256 px patches, α = 4: cells of 64 model px = 128 level-0 px
    g = MapGeometry.for_slide(SHAPE0, MPP, 1.0, alpha=4, patch=256, model_stride=256)
    assert g.cell_size0 == 128
    return g


def tumour_mask(g: MapGeometry) -> np.ndarray:
    """A 7 x 7 cell tumour with a one-cell hole at (10, 13), and one lone cell (3, 5)."""
    m = np.zeros(g.shape, bool)
    m[7:14, 10:17] = True
    m[10, 13] = False
    m[3, 5] = True
    return m


def fake_result(mask: np.ndarray, g: MapGeometry):
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    regions = extract_regions(prob, g, threshold=0.5, opening_um=0.0, min_area_um2=0.0)
    det = Detections("mask", regions, 0.9, extra={
        "mask": mask, "geometry": g, "tumour_area_mm2": 1.25, "tissue_fraction": 0.4,
        "refined": True})
    return SimpleNamespace(detections=det, slide_score=0.9, regions=regions, geometry=g)


def add_layers(viewer, result, mpp=MPP):
    from napari.layers import Layer

    layers = [Layer.create(*t) for t in layer_data(result, {"threshold": 0.5}, mpp, "tumour")]
    for layer in layers:
        viewer.add_layer(layer)
    return layers


def test_contours_first_then_a_mask_on_the_slide_grid(viewer):
    g = geometry()
    mask = tumour_mask(g)
    slide = viewer.add_image(np.zeros(SHAPE0, np.uint8), scale=(MPP, MPP), name="slide")
    contours, labels = add_layers(viewer, fake_result(mask, g))
    assert type(contours).__name__ == "Shapes" and contours.name == "tumour"
    assert type(labels).__name__ == "Labels" and labels.name == "tumour mask"
    assert labels.metadata["kind"] == KIND_TUMOUR_MASK
    assert np.array_equal(labels.data.astype(bool), mask)
    assert 0 < labels.opacity < 1
    assert np.allclose(labels.colormap.map(np.array([1]))[0][:3],
                       np.array([int(MASK_COLOR[i:i + 2], 16) for i in (1, 3, 5)]) / 255)
    assert labels.colormap.map(np.array([0]))[0][3] == 0  # background transparent

    s = g.cell_size0

    def label_at_level0(x: int, y: int) -> int:
        """The mask value napari shows over level-0 pixel (x, y) of the slide layer."""
        world = slide.data_to_world((y, x))
        return int(labels.get_value(world, world=True))

    # the lone cell (3, 5) covers level-0 x in [640, 768), y in [384, 512): its edges
    # are exact to the pixel on the slide, on all four sides
    r, c = 3, 5
    assert label_at_level0(c * s, r * s) == 1 and label_at_level0((c + 1) * s - 1, (r + 1) * s - 1) == 1
    assert label_at_level0(c * s - 1, r * s + 5) == 0 and label_at_level0((c + 1) * s, r * s + 5) == 0
    assert label_at_level0(c * s + 5, r * s - 1) == 0 and label_at_level0(c * s + 5, (r + 1) * s) == 0
    # the hole in the big region is empty in the mask too
    assert label_at_level0(13 * s + 64, 10 * s + 64) == 0
    assert label_at_level0(12 * s + 64, 10 * s + 64) == 1


def test_contours_cover_the_same_cells_as_the_mask(viewer):
    g = geometry()
    mask = tumour_mask(g)
    contours, labels = add_layers(viewer, fake_result(mask, g))
    s_um = g.cell_size0 * MPP
    scale, translate = np.asarray(contours.scale), np.asarray(contours.translate)
    worlds = [np.asarray(d) * scale + translate
              for d, hole in zip(contours.data, contours.features["is_hole"], strict=True)
              if not hole]
    # the lone cell's contour is that cell's square, centred on the labelled cell
    lone = min(worlds, key=lambda w: np.ptp(w[:, 0]))
    assert np.allclose(np.ptp(lone, axis=0), s_um)
    assert np.allclose((lone.min(0) + lone.max(0)) / 2, labels.data_to_world((3, 5)))
    big = max(worlds, key=lambda w: np.ptp(w[:, 0]))
    assert np.allclose(big.min(0), np.asarray(labels.data_to_world((7, 10))) - s_um / 2)
    assert np.allclose(big.max(0), np.asarray(labels.data_to_world((13, 16))) + s_um / 2)
    assert contours.features["name"].str.startswith("Tumour").all()


def test_contours_export_as_tumor_annotations_with_holes(viewer, tmp_path):
    g = geometry()
    contours, _ = add_layers(viewer, fake_result(tumour_mask(g), g))
    [path] = write_shapes(str(tmp_path / "tumour.geojson"), *contours.as_layer_data_tuple()[:2])
    doc = json.loads(open(path).read())
    assert check_qupath_geojson(doc) == []
    feats = doc["features"]
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Tumor"}
    from shapely.geometry import shape

    big = max(feats, key=lambda f: shape(f["geometry"]).area)["geometry"]
    # the big region keeps its one-cell hole as an inner ring, in level-0 px
    assert big["type"] == "Polygon" and len(big["coordinates"]) == 2
    assert shape(big).area == (7 * 7 - 1) * 128**2
    hole = np.array(big["coordinates"][1])
    assert np.allclose(hole.min(0), (13 * 128, 10 * 128)) and np.allclose(hole.max(0), (14 * 128, 11 * 128))


def test_mask_in_pixels_when_the_slide_has_no_pixel_size(viewer):
    g = geometry()
    _, labels = add_layers(viewer, fake_result(tumour_mask(g), g), mpp=None)
    s = g.cell_size0
    assert tuple(labels.scale) == (s, s)
    assert tuple(labels.translate) == ((s - 1) / 2, (s - 1) / 2)


def test_no_mask_layer_without_a_mask(viewer):
    g = geometry()
    result = fake_result(np.zeros(g.shape, bool), g)
    result.detections.extra.pop("mask")
    layers = add_layers(viewer, result)
    assert len(layers) == 1 and len(layers[0].data) == 0


def test_tumour_task_in_the_widget_shows_contours_and_mask(request, qtbot, monkeypatch,
                                                           phantom_small, tmp_path):
    """Choose the Tumour task, run a random-weight H2G-Net on a region of the phantom,
    move the threshold on its spin box: the contours (Shapes) and the mask (Labels)
    arrive, the mask on the slide's µm grid, matching the result's own mask."""
    import warnings

    import torch

    from napari_wsi_detect._napari.widget import DetectWidget
    from napari_wsi_detect.models.h2g import H2GNet
    from napari_wsi_detect.models.io import save_model
    from test_napari_widget import _draw_region, _wait_idle, answer, click, set_value

    torch.manual_seed(0)
    net = H2GNet(width=0.1, unet_width=2, refine_size=64, patch=32)
    model = save_model(net, tmp_path / "model" / "t", {"mpp": 0.243, "task": "tumour"})[0]
    viewer = napari_viewer(request, show=False)
    monkeypatch.setenv("WSI_DETECT_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer.open(str(phantom_small), plugin="napari-wsi-detect")
    w = DetectWidget(viewer)
    viewer.window.add_dock_widget(w, name="WSI Detect")
    w.task_combo.setCurrentIndex(w.task_combo.findData("tumour"))
    answer(monkeypatch, "ask_open_file", str(model))
    click(w.model_button)
    w.tissue_check.setChecked(False)
    _draw_region(viewer, (1024, 1024, 512, 512))
    w.region_combo.setCurrentText("Rectangle (Shapes layer)")
    click(w.detect_button)
    _wait_idle(qtbot, w)
    assert w.last_outcome.status == "done"
    probs = w.result.maps["refined"].values
    finite = probs[np.isfinite(probs)]
    # a threshold inside the random model's range, so both tumour and non-tumour exist
    set_value(w, "threshold", round(float(np.quantile(finite, 0.5)), 2))
    _wait_idle(qtbot, w)
    extra = w.result.detections.extra
    contours = viewer.layers["tumour"]
    labels = viewer.layers["tumour mask"]
    assert type(contours).__name__ == "Shapes" and type(labels).__name__ == "Labels"
    assert np.array_equal(labels.data.astype(bool), extra["mask"])
    assert 0 < extra["mask"].sum() < extra["mask"].size
    g = extra["geometry"]
    mpp = 0.243
    assert np.allclose(labels.scale, (g.cell_size0 * mpp,) * 2)
    assert np.allclose(labels.translate, ((g.cell_size0 - 1) / 2 * mpp,) * 2)
    assert len(contours.data) >= len(w.result.regions) > 0
    assert "mm²" in w.score_label.text()
