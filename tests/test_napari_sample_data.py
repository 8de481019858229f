"""File > Open Sample > WSI Detect > Phantom lymph node: the slide and its truth layers,
written once into the cache without freezing the window (headless under Xvfb)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from conftest import napari_viewer

PLUGIN = "napari-wsi-detect"
SAMPLE = "phantom-lymph-node"
SMALL = (2048, 1536)  # keeps the tests fast; the contribution itself uses 8192 × 6144


@pytest.fixture(autouse=True)
def small_sample(tmp_path, monkeypatch):
    pytest.importorskip("napari")
    from napari import settings
    from napari.settings import NapariSettings

    from napari_wsi_detect._napari import sample_data

    monkeypatch.setattr(settings, "_SETTINGS", NapariSettings(config_path=None))
    monkeypatch.setenv("NAPARI_WSI_DETECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sample_data, "PHANTOM_SIZE", SMALL)
    return sample_data


@pytest.fixture
def viewer(request):
    return napari_viewer(request, show=True)


def _timed(fn):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn()
    return out, time.perf_counter() - t0


def _lesion_label_under(slide_layer, truth_layer, shape_index: int, mask) -> int:
    """Tumour-mask label at the slide pixel under the centre of a truth polygon, found by
    going truth data -> world -> slide data, so it checks the two layers' placement."""
    vertices = np.asarray(truth_layer.data[shape_index])
    world = truth_layer.data_to_world(vertices.mean(axis=0))
    row, col = np.asarray(slide_layer.world_to_data(world))[-2:]
    return int(mask[int(round(row)) // 32, int(round(col)) // 32])


def test_sample_command_returns_slide_and_truth(small_sample, capsys) -> None:
    from napari_wsi_detect.phantom import load_phantom_truth

    first, t_first = _timed(small_sample.phantom_lymph_node)
    second, t_second = _timed(small_sample.phantom_lymph_node)
    with capsys.disabled():
        print(f"\nphantom sample {SMALL[0]}x{SMALL[1]} without GUI: first call {t_first:.2f} s, "
              f"second call {t_second:.3f} s")
    [(image, ikw, ikind), (points, pkw, pkind), (shapes, skw, skind)] = first
    assert (ikind, skind, pkind) == ("image", "shapes", "points")
    assert ikw["name"] == "Phantom lymph node (synthetic)"
    assert skw["name"] == "phantom truth" and pkw["name"] == "phantom truth points"
    assert ikw["multiscale"] and image[0].shape == (SMALL[1], SMALL[0], 3)
    assert ikw["scale"] == pytest.approx((0.243, 0.243))
    assert skw["scale"] == pytest.approx((0.243, 0.243))
    assert pkw["visible"] is False  # mitoses and look-alikes: there, but not in the way
    truth = load_phantom_truth(ikw["metadata"]["path"])
    assert len(shapes) == len(truth.tumours) >= 1
    # data = level-0 (row, col): the truth polygon is the phantom's own polygon
    np.testing.assert_allclose(shapes[0][:, ::-1], truth.tumours[0].polygon, atol=0.01)
    assert [kw["name"] for _d, kw, _k in second] == [kw["name"] for _d, kw, _k in first]
    assert second[0][1]["metadata"]["path"] == ikw["metadata"]["path"]


@pytest.mark.gui
def test_open_sample_keeps_the_window_live_and_gives_aligned_truth(viewer, small_sample,
                                                                    capsys) -> None:
    from qtpy.QtCore import QTimer

    from napari_wsi_detect.phantom import load_phantom_truth

    # A 10 ms timer counts event-loop turns while the sample is written: a frozen window
    # would give none until open_sample returns.
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    layers, t_first = _timed(lambda: viewer.open_sample(PLUGIN, SAMPLE))
    timer.stop()
    gaps = np.diff(ticks) if len(ticks) > 1 else np.array([t_first])
    written = sorted(p.name for p in small_sample.cache_dir().iterdir())
    mtime = small_sample.cached_phantom().stat().st_mtime_ns
    viewer.layers.clear()
    again, t_second = _timed(lambda: viewer.open_sample(PLUGIN, SAMPLE))
    with capsys.disabled():
        print(f"\nFile > Open Sample {SMALL[0]}x{SMALL[1]} in napari: first {t_first:.2f} s "
              f"({len(ticks)} event-loop ticks, longest gap {gaps.max() * 1e3:.0f} ms), "
              f"second {t_second:.3f} s")
    assert len(ticks) > 5, "the event loop did not run while the phantom was written"
    assert small_sample.cached_phantom().stat().st_mtime_ns == mtime  # read, not rewritten
    assert any(n.endswith(".geojson") for n in written) and not any(".part" in n for n in written)

    slide, points, truth_layer = again
    assert [lay.name for lay in again] == [
        "Phantom lymph node (synthetic)", "phantom truth points", "phantom truth"]
    assert viewer.layers.selection.active is truth_layer
    assert [lay.name for lay in layers] == [lay.name for lay in again]
    assert slide.rgb and slide.multiscale
    assert (type(truth_layer).__name__, type(points).__name__) == ("Shapes", "Points")
    assert [str(u) for u in truth_layer.units] == ["micrometer", "micrometer"]
    # A truth vertex at level-0 (x, y) lies where the slide layer shows level-0 (x, y)
    # (pixel-corner convention: half a pixel before that pixel's centre).
    v = np.asarray(truth_layer.data[0][0])
    np.testing.assert_allclose(truth_layer.data_to_world(v), slide.data_to_world(v - 0.5))
    # ... and the middle of each truth polygon falls on that lesion in the phantom's mask.
    truth = load_phantom_truth(slide.metadata["path"])
    mask = truth.read_mask()
    labels = [int(lab) for lab in truth_layer.features["lesion"]]
    for i, label in enumerate(labels):
        assert _lesion_label_under(slide, truth_layer, i, mask) == label


@pytest.mark.gui
def test_cancelling_the_progress_bar_writes_nothing(viewer, small_sample, monkeypatch) -> None:
    from napari.utils import cancelable_progress

    from napari_wsi_detect.errors import WsiDetectError

    # Press Cancel on the activity-dock bar as soon as it exists.
    orig_init = cancelable_progress.__init__

    def init_and_cancel(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        self.cancel()

    monkeypatch.setattr(cancelable_progress, "__init__", init_and_cancel)
    with pytest.raises(WsiDetectError, match="cancelled"):
        viewer.open_sample(PLUGIN, SAMPLE)
    cache = small_sample.cache_dir()
    assert not small_sample.cached_phantom().exists()
    assert not [p for p in cache.iterdir() if ".part" in p.name] if cache.exists() else True
    assert len(viewer.layers) == 0


def test_manifest_sample_entry() -> None:
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution(PLUGIN)
    [sample] = mf.contributions.sample_data
    assert (sample.key, sample.display_name) == (SAMPLE, "Phantom lymph node")
