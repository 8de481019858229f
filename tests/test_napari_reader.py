"""napari reader and tissue layer, through napari's own opening machinery in a real viewer
(headless under Xvfb). The sample data has tests/test_napari_sample_data.py."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import napari_viewer, shared_file
from napari_wsi_detect._napari.reader import napari_get_reader, read_slides

CMU = "slides/cmu-1-small-region.svs"
TCGA = "slides/tcga-cr-7395-01a-01-ts1.svs"
BROKEN = "slides/broken.svs"
PLUGIN = "napari-wsi-detect"


@pytest.fixture(autouse=True)
def _isolated_napari_settings(monkeypatch):
    """Fresh in-memory napari settings (never the user's file) and a reader that has not
    yet set its reader preference in this process."""
    pytest.importorskip("napari")
    from napari import settings
    from napari.settings import NapariSettings

    from napari_wsi_detect._napari import reader

    monkeypatch.setattr(settings, "_SETTINGS", NapariSettings(config_path=None))
    monkeypatch.setattr(reader, "_preference_checked", False)
    monkeypatch.delenv(reader.NO_PREFERENCE_ENV, raising=False)


@pytest.fixture
def viewer(request):
    # Shown: a hidden canvas under Xvfb draws nothing, so screenshots would be black.
    return napari_viewer(request, show=True)


def _process_events(ms: int) -> None:
    from qtpy.QtCore import QCoreApplication, QElapsedTimer

    timer = QElapsedTimer()
    timer.start()
    while timer.elapsed() < ms:
        QCoreApplication.processEvents()


# -- reader contract, no viewer needed ---------------------------------------------------
def _grey16(path):
    import tifffile

    data = (np.arange(300 * 400, dtype=np.uint32).reshape(300, 400) * 7 % 65535).astype(np.uint16)
    tifffile.imwrite(path, data, tile=(256, 256))  # tiled, so only the pixel type says "not a slide"
    return data


def _zstack(path):
    import tifffile

    data = np.random.default_rng(0).integers(0, 255, (5, 300, 400, 3), dtype=np.uint8)
    tifffile.imwrite(path, data, tile=(256, 256), photometric="rgb")  # RGB but 3-D
    return data


def test_reader_claims_slides_and_leaves_other_files(tmp_path, phantom_small) -> None:
    assert callable(napari_get_reader(str(shared_file(CMU))))
    assert callable(napari_get_reader(str(phantom_small)))  # pyramidal RGB TIFF
    assert callable(napari_get_reader("scan.NDPI"))  # vendor extension: always ours
    assert napari_get_reader(str(tmp_path / "annotations.geojson")) is None
    assert napari_get_reader([str(shared_file(CMU)), "x.geojson"]) is None
    assert napari_get_reader(str(tmp_path)) is None  # a folder
    assert napari_get_reader("missing.tif") is None  # a TIFF is sniffed; nothing to sniff


def test_reader_leaves_tiffs_that_are_not_slides(tmp_path) -> None:
    import tifffile

    _grey16(tmp_path / "grey16.tif")
    _zstack(tmp_path / "zstack.tif")
    tifffile.imwrite(tmp_path / "photo.tif", np.zeros((300, 400, 3), np.uint8))  # striped, small
    tifffile.imwrite(tmp_path / "chan.ome.tif", np.zeros((3, 300, 400), np.uint16), tile=(256, 256))
    (tmp_path / "text.tif").write_text("not a tiff")
    for name in ("grey16.tif", "zstack.tif", "photo.tif", "chan.ome.tif", "text.tif"):
        assert napari_get_reader(str(tmp_path / name)) is None, name
    tifffile.imwrite(tmp_path / "tiled-rgb.tiff", np.zeros((300, 400, 3), np.uint8), tile=(256, 256))
    assert callable(napari_get_reader(str(tmp_path / "tiled-rgb.tiff")))


def test_manifest_claims_no_png_or_jpeg_and_matches_the_reader() -> None:
    from npe2 import PluginManifest

    from napari_wsi_detect._napari.reader import SLIDE_SUFFIXES

    mf = PluginManifest.from_distribution(PLUGIN)
    [reader] = [r for r in mf.contributions.readers if r.command == f"{PLUGIN}.get_reader"]
    assert sorted(reader.filename_patterns) == sorted(f"*{s}" for s in SLIDE_SUFFIXES)
    assert not {"*.png", "*.jpg", "*.jpeg"} & set(reader.filename_patterns)


def test_reader_layer_data_without_napari_viewer() -> None:
    [(data, kwargs, kind)] = read_slides(str(shared_file(CMU)))
    assert kind == "image" and kwargs["rgb"] and kwargs["multiscale"]
    assert kwargs["name"] == "cmu-1-small-region"
    assert kwargs["scale"] == (0.499, 0.499)
    assert kwargs["contrast_limits"] == (0, 255)
    meta = kwargs["metadata"]
    assert meta["mpp"] == 0.499 and meta["vendor"] == "aperio" and meta["objective_power"] == 20
    assert len(meta["levels"]) == len(data) >= 2
    assert data[0].shape == (2967, 2220, 3) and data[0].dtype == np.uint8


def test_manifest_is_valid() -> None:
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution(PLUGIN)
    assert mf.display_name == "WSI Detect"
    readers = {r.command: r for r in mf.contributions.readers}
    assert "*.svs" in readers[f"{PLUGIN}.get_reader"].filename_patterns


def test_vendor_preference_settles_only_napari_s_builtins() -> None:
    from napari.settings import get_settings

    from napari_wsi_detect._napari.reader import prefer_for_vendor_slides

    settings = get_settings()
    settings.plugins.extension2reader = {"*.ndpi": "some-other-plugin"}
    added = prefer_for_vendor_slides()
    # builtins also claim .svs/.scn/.bif; .mrxs/.vms/.vmu/.svslide are ours alone (no
    # dialog anyway); the user's own .ndpi choice stays; TIFFs are never settled.
    assert sorted(added) == ["*.bif", "*.scn", "*.svs"]
    assert settings.plugins.extension2reader == {
        "*.ndpi": "some-other-plugin", "*.svs": PLUGIN, "*.scn": PLUGIN, "*.bif": PLUGIN,
    }
    assert prefer_for_vendor_slides() == []  # idempotent


def test_vendor_preference_can_be_switched_off(monkeypatch) -> None:
    from napari.settings import get_settings

    from napari_wsi_detect._napari import reader

    monkeypatch.setenv(reader.NO_PREFERENCE_ENV, "1")
    assert callable(reader.napari_get_reader(str(shared_file(CMU))))
    assert get_settings().plugins.extension2reader == {}


# -- in the viewer --------------------------------------------------------------------------
@pytest.mark.gui
def test_open_cmu_shows_tissue_in_micrometres(viewer) -> None:
    layers = viewer.open(str(shared_file(CMU)), plugin="napari-wsi-detect")
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = layers[0]
    assert layer.rgb and layer.multiscale and len(layer.data) >= 2
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.name == "cmu-1-small-region"
    viewer.reset_view()
    _process_events(200)  # let the multiscale tiles for this view load and draw
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert shot.std() > 20, "the canvas is blank"
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    pink = (r > g + 40) & (b > g + 10)  # eosin / haematoxylin: green absorbed most
    assert pink.mean() > 0.05, "no H&E-coloured pixels on screen"


@pytest.mark.gui
def test_tissue_mask_layer_lies_on_the_slide(viewer) -> None:
    from napari_wsi_detect._napari.layers import add_tissue_mask

    [slide_layer] = viewer.open(str(shared_file(CMU)), plugin="napari-wsi-detect")
    tissue = add_tissue_mask(viewer)
    d = tissue.metadata["downsample"]
    assert tuple(tissue.scale) == pytest.approx((d * 0.499, d * 0.499))
    # Mask pixel (r, c) covers level-0 [c·d, (c+1)·d): its centre is level-0 pixel
    # coordinate c·d + (d − 1)/2 in the slide layer's pixel-centre convention.
    r, c = 100, 70
    world = tissue.data_to_world((r, c))
    want = slide_layer.data_to_world((r * d + (d - 1) / 2, c * d + (d - 1) / 2))
    assert np.allclose(world, want)
    assert 0.25 < tissue.metadata["tissue_fraction"] < 0.45
    assert set(np.unique(tissue.data)) <= {0, 1}


@pytest.mark.gui
def test_broken_slide_gives_an_error_and_no_layer(viewer) -> None:
    with pytest.raises(Exception) as info:
        viewer.open(str(shared_file(BROKEN)), plugin="napari-wsi-detect")
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(type(e).__name__ == "SlideOpenError" for e in chain) or "cannot open" in str(
        info.value
    )
    assert len(viewer.layers) == 0


@pytest.mark.gui
def test_slide_without_pixel_size_opens_in_pixels_with_a_warning(viewer) -> None:
    with pytest.warns(UserWarning, match="no pixel size"):
        layers = viewer.open(str(shared_file(TCGA)), plugin="napari-wsi-detect")
    assert len(layers) == 1
    assert tuple(layers[0].scale) == (1.0, 1.0)
    assert layers[0].metadata["mpp"] is None


# -- through napari's opening machinery: drop events, reader choice, preferences -------------
class ReaderDialogAnswers:
    """Stands in for the person in front of napari's "Choose reader" dialog: records what
    each dialog offered (and its error text) and answers with `choice` (a display name)."""

    def __init__(self, monkeypatch, choice: str | None = None, remember: bool = False):
        from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog

        self.offered: list[list[str]] = []
        self.errors: list[str] = []
        answers = self

        def get_user_choices(dialog):
            from qtpy.QtWidgets import QLabel, QRadioButton

            answers.offered.append(sorted(b.text() for b in dialog.findChildren(QRadioButton)))
            answers.errors.append(" ".join(lb.text() for lb in dialog.findChildren(QLabel)))
            return (choice or "", remember)

        monkeypatch.setattr(QtReaderDialog, "get_user_choices", get_user_choices)


def _drop(viewer, path) -> None:
    """A real QDropEvent of a local file on the canvas (what dragging from a file manager
    sends), through napari's QtViewer.dropEvent."""
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    viewer.window._qt_viewer.dropEvent(event)


def _assert_cmu_layer(layer) -> None:
    assert layer.rgb and layer.multiscale and len(layer.data) >= 2
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert layer.metadata["vendor"] == "aperio"


@pytest.mark.gui
def test_dropped_svs_asks_once_then_opens_without_a_dialog(viewer, monkeypatch) -> None:
    cmu = shared_file(CMU)
    # Fresh napari settings: builtins and this plugin both match *.svs, so napari asks.
    dialog = ReaderDialogAnswers(monkeypatch, choice="WSI Detect")
    _drop(viewer, cmu)
    assert dialog.offered == [["WSI Detect", "napari builtins"]]
    [layer] = viewer.layers
    _assert_cmu_layer(layer)
    # Our reader ran once, so it saved itself as the .svs reader (the user did not tick
    # "Remember"): the next drop opens directly, and so does plugin=None from Python
    # (napari's GUI path for File > Open).
    viewer.layers.clear()
    _drop(viewer, cmu)
    assert len(dialog.offered) == 1, "a second dialog appeared"
    [layer] = viewer.layers
    _assert_cmu_layer(layer)
    [again] = viewer.open(str(cmu), plugin=None)
    _assert_cmu_layer(again)


@pytest.mark.gui
def test_svs_opens_without_a_dialog_once_any_plugin_code_ran(viewer, monkeypatch) -> None:
    from napari_wsi_detect._napari.reader import prefer_for_vendor_slides

    prefer_for_vendor_slides()  # what the first reader call / sample / widget does
    dialog = ReaderDialogAnswers(monkeypatch, choice=None)
    _drop(viewer, shared_file(CMU))
    assert dialog.offered == []
    [layer] = viewer.layers
    _assert_cmu_layer(layer)
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]


@pytest.mark.gui
@pytest.mark.parametrize("make", [_grey16, _zstack], ids=["grey16", "zstack"])
def test_tiff_that_is_not_a_slide_is_left_to_napari_builtins(viewer, tmp_path, monkeypatch,
                                                             make) -> None:
    path = tmp_path / "image.tif"
    data = make(path)
    # Forcing our reader: refused, no layer (it never turns it into 8-bit RGB).
    with pytest.raises(ValueError, match="refused the file"):
        viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 0
    # A user who once ticked "Remember: .tif -> WSI Detect" drops it: our reader declines,
    # napari's dialog offers what is left, the builtins, which keep dtype and shape.
    from napari.settings import get_settings

    get_settings().plugins.extension2reader = {"*.tif": PLUGIN}
    dialog = ReaderDialogAnswers(monkeypatch, choice="napari builtins")
    _drop(viewer, path)
    assert dialog.offered == [["napari builtins"]]
    assert "refused the file" in dialog.errors[0]  # napari says why it asks
    [layer] = viewer.layers
    assert layer.data.dtype == data.dtype and layer.data.shape == data.shape
    np.testing.assert_array_equal(np.asarray(layer.data), data)


@pytest.mark.gui
def test_phantom_pyramidal_tiff_opens_with_our_reader(viewer, phantom_small, monkeypatch) -> None:
    # .tif is claimed by the builtins too and is never settled for the user: the drop asks.
    dialog = ReaderDialogAnswers(monkeypatch, choice="WSI Detect")
    _drop(viewer, phantom_small)
    assert dialog.offered == [["WSI Detect", "napari builtins"]]
    [layer] = viewer.layers
    [direct] = viewer.open(str(phantom_small), plugin=PLUGIN)
    for lay in (layer, direct):
        assert lay.rgb and lay.multiscale and len(lay.data) >= 2
        assert lay.data[0].shape == (3072, 4096, 3)
        assert tuple(lay.scale) == pytest.approx((0.243, 0.243))
        assert [str(u) for u in lay.units] == ["micrometer", "micrometer"]
