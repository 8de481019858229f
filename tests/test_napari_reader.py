"""napari reader, tissue layer and sample data, in a real viewer (headless under Xvfb)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import napari_viewer, shared_file
from napari_wsi_detect._napari.reader import napari_get_reader, read_slides

CMU = "slides/cmu-1-small-region.svs"
TCGA = "slides/tcga-cr-7395-01a-01-ts1.svs"
BROKEN = "slides/broken.svs"



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
def test_reader_claims_slides_and_leaves_other_files(tmp_path) -> None:
    assert callable(napari_get_reader(str(shared_file(CMU))))
    assert callable(napari_get_reader("scan.OME.TIF"))
    assert napari_get_reader(str(tmp_path / "annotations.geojson")) is None
    assert napari_get_reader([str(shared_file(CMU)), "x.geojson"]) is None
    assert napari_get_reader(str(tmp_path)) is None  # a folder


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

    mf = PluginManifest.from_distribution("napari-wsi-detect")
    assert mf.display_name == "WSI Detect"
    readers = {r.command: r for r in mf.contributions.readers}
    assert "*.svs" in readers["napari-wsi-detect.get_reader"].filename_patterns
    assert mf.contributions.sample_data[0].display_name == "Phantom lymph node"


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


@pytest.mark.gui
def test_phantom_sample_data(viewer, tmp_path, monkeypatch) -> None:
    pytest.importorskip("napari_wsi_detect.phantom", reason="phantom package not available")
    from napari_wsi_detect._napari import sample_data

    monkeypatch.setenv("NAPARI_WSI_DETECT_CACHE", str(tmp_path))
    # A smaller phantom keeps the test fast; the contribution itself uses 8192 × 6144.
    monkeypatch.setattr(sample_data, "PHANTOM_SIZE", (2048, 1536))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = viewer.open_sample("napari-wsi-detect", "phantom-lymph-node")
    assert len(layers) == 1 and layers[0].rgb
    assert layers[0].scale[0] == pytest.approx(0.243)
    assert len(list(tmp_path.glob("phantom-lymph-node-*.tif"))) >= 1
