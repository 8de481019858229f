"""A run folder in napari with one action (issue 16): dropped on the canvas (the npe2 run
reader) or opened with the widget's "Open run…" on an empty viewer, it shows the slide,
the heatmap and the results; the widget's "Export for QuPath…" and "Export OME-Zarr…"
buttons write files third-party readers open. Headless under Xvfb:
xvfb-run -a .venv/bin/pytest -q tests/test_napari_runs.py
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import napari_viewer  # noqa: E402
from napari_wsi_detect.detectors.job import DetectionRequest, detect  # noqa: E402

pytestmark = pytest.mark.gui
MPP = 0.243
REGION = (0, 0, 1152, 768)


@pytest.fixture
def viewer(request):
    return napari_viewer(request, show=False)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    from napari_wsi_detect.phantom import write_phantom

    path = tmp_path_factory.mktemp("slide") / "p.tif"
    write_phantom(path, seed=7, size=(2048, 1536), mpp=MPP)
    return path


@pytest.fixture(scope="module")
def run(slide, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    res = detect(DetectionRequest("metastases", str(slide), device="cpu", out=str(out),
                                  roi_cells=24, region=REGION))
    assert res.regions
    return out


def _drop(viewer, path) -> None:
    """A real QDropEvent of a local folder on the canvas, through napari's dropEvent."""
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    viewer.window._qt_viewer.dropEvent(event)


def _reader_dialog(monkeypatch, choice: str) -> list[list[str]]:
    """Answers napari's "Choose reader" dialog with `choice`; returns what it offered."""
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    from qtpy.QtWidgets import QRadioButton

    offered: list[list[str]] = []

    def get_user_choices(dialog):
        offered.append(sorted(b.text() for b in dialog.findChildren(QRadioButton)))
        return (choice, False)

    monkeypatch.setattr(QtReaderDialog, "get_user_choices", get_user_choices)
    return offered


def _assert_run_layers(layers, run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    slide, heat, regions = layers[:3]
    assert slide.rgb and Path(slide.metadata["path"]) == Path(summary["slide"]["path"])
    assert tuple(slide.scale) == pytest.approx((MPP, MPP))
    assert heat.name == "metastasis heatmap"
    assert tuple(heat.scale) == pytest.approx((16 * MPP, 16 * MPP))
    assert tuple(heat.translate) == pytest.approx((7.5 * MPP, 7.5 * MPP))
    assert heat.data.shape == (96, 128)
    assert len(regions.data) >= summary["region_count"] >= 1
    # the peak cell's heatmap value is its probability, over its level-0 block
    peak = summary["regions"][0]
    world = np.array([(peak["peak_y"] - 0.5) * MPP, (peak["peak_x"] - 0.5) * MPP])
    r, c = np.round(heat.world_to_data(world)).astype(int)
    assert float(heat.data[r, c]) == pytest.approx(peak["max_probability"], abs=1e-6)


def test_dropped_run_folder_shows_slide_heatmap_and_results(viewer, run, monkeypatch):
    offered = _reader_dialog(monkeypatch, "WSI Detect")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _drop(viewer, run)
    # napari asks only when another reader also claims folders (napari's builtins do).
    assert all("WSI Detect" in names for names in offered)
    _assert_run_layers(list(viewer.layers), run)


def test_run_folder_whose_slide_moved_says_so(viewer, slide, tmp_path):
    moved = tmp_path / "s.tif"
    shutil.copyfile(slide, moved)
    out = tmp_path / "run"
    detect(DetectionRequest("metastases", str(moved), device="cpu", out=str(out),
                            roi_cells=24, region=(0, 0, 384, 384), use_tissue=False))
    moved.rename(tmp_path / "elsewhere.tif")
    with pytest.raises(Exception, match="not there any more"):
        viewer.open(str(out), plugin="napari-wsi-detect")
    assert len(viewer.layers) == 0


def _widget(viewer, tmp_path, monkeypatch):
    from napari_wsi_detect._napari.widget import DetectWidget

    monkeypatch.setenv("WSI_DETECT_CACHE", str(tmp_path / "cache"))
    w = DetectWidget(viewer)
    viewer.window.add_dock_widget(w, name="WSI Detect")
    return w


def answer(monkeypatch, hook: str, value) -> None:
    from napari_wsi_detect._napari import widget as widget_module

    monkeypatch.setattr(widget_module, hook, lambda *a, **k: str(value) if value else "")


def click(button) -> None:
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    assert button.isVisibleTo(button.window()) and button.isEnabled(), button.text()
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


def test_open_run_on_an_empty_viewer_opens_its_slide_too(viewer, run, tmp_path, monkeypatch):
    w = _widget(viewer, tmp_path, monkeypatch)
    answer(monkeypatch, "ask_folder", run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        click(w.open_button)
    _assert_run_layers(list(viewer.layers), run)
    assert w.slide_combo.currentText() == viewer.layers[0].name
    assert w.heatmap_layer is viewer.layers[1] and w.regions_layer is viewer.layers[2]
    # a second Open run… reuses the open slide instead of opening it again
    click(w.open_button)
    assert sum(1 for ly in viewer.layers if getattr(ly, "rgb", False)) == 1


def test_export_buttons_write_files_other_tools_open(viewer, run, tmp_path, monkeypatch):
    import tifffile
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    w = _widget(viewer, tmp_path, monkeypatch)
    answer(monkeypatch, "ask_folder", run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        click(w.open_button)
    w.regions_layer.selected_data = {0}
    w.regions_layer.remove_selected()  # an edit the QuPath GeoJSON must carry
    answer(monkeypatch, "ask_save_file", tmp_path / "qp" / "overlay.ome.tif")
    click(w.qupath_button)
    overlay = tmp_path / "qp" / "overlay.ome.tif"
    with tifffile.TiffFile(overlay) as tif:
        assert tif.is_ome and [lv.shape for lv in tif.series[0].levels] == [
            (96, 128, 4), (48, 64, 4)]
    feats = json.loads((tmp_path / "qp" / "regions.geojson").read_text())["features"]
    assert len(feats) == len(w.regions_layer.data)
    answer(monkeypatch, "ask_save_file", tmp_path / "maps.ome.zarr")
    click(w.ngff_button)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nodes = list(Reader(parse_url(str(tmp_path / "maps.ome.zarr")))())
    assert np.asarray(nodes[0].data[0]).shape == (96, 128)
    assert "Exported the maps" in w.status_label.text()


def test_export_without_a_result_is_a_notification(viewer, tmp_path, monkeypatch):
    w = _widget(viewer, tmp_path, monkeypatch)
    shown: list[str] = []
    monkeypatch.setattr(type(w), "_show_error", lambda self, exc: shown.append(str(exc)))
    click(w.qupath_button)
    click(w.ngff_button)
    assert len(shown) == 2 and all("no result to export" in s for s in shown)
