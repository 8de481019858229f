"""phantom/rescan.py: a slide re-rendered as if scanned elsewhere keeps its geometry and
truth aligned, changes colour as asked, streams in bounded memory and lands atomically."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_wsi_detect.errors import WsiDetectError
from napari_wsi_detect.phantom import load_phantom_truth, write_phantom
from napari_wsi_detect.phantom.rescan import (
    Rescan,
    _Renderer,
    od_transform,
    rescan_slide,
    slide_stain_matrix,
)
from napari_wsi_detect.slide import open_slide


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """2048 x 1536 phantom with one micro-metastasis."""
    path = tmp_path_factory.mktemp("rescan") / "src.tif"
    write_phantom(path, seed=7, size=(2048, 1536), lesions={"macro": 0, "micro": 1, "itc": 0})
    return path


def _level0(path: Path) -> np.ndarray:
    return tifffile.imread(path, level=0).astype(np.float64)


def _box2(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    return img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))


def test_same_pixel_size_copies_the_truth_and_changes_little(source, tmp_path) -> None:
    out = tmp_path / "same.tif"
    info = rescan_slide(source, out, Rescan(jpeg_quality=95))
    assert info["size"] == [2048, 1536]
    for suffix in (".geojson", ".tumour-mask.tif"):
        a = source.with_name(source.stem + suffix).read_bytes()
        assert out.with_name(out.stem + suffix).read_bytes() == a
    diff = np.abs(_level0(out) - _level0(source)).mean()
    assert diff < 2.0  # a JPEG re-encoding only


def test_pixel_size_change_rescales_slide_and_truth_in_register(source, tmp_path) -> None:
    out = tmp_path / "coarse.tif"
    info = rescan_slide(source, out, Rescan(mpp=0.486))
    assert info["size"] == [1024, 768]
    with open_slide(out) as s:
        assert s.mpp == pytest.approx(0.486, rel=1e-3)
    src_t, out_t = load_phantom_truth(source), load_phantom_truth(out)
    assert out_t.mpp == pytest.approx(0.486) and out_t.size == (1024, 768)
    a, b = src_t.tumours[0], out_t.tumours[0]
    np.testing.assert_allclose(b.polygon, a.polygon / 2, atol=0.01)
    assert b.area_um2 == a.area_um2  # µm² do not change with the pixel size
    assert np.allclose(out_t.imposters, src_t.imposters / 2, atol=0.01)
    # the mask is rasterised on the new grid: ceil(size / 32) and the same µm²
    mask_a, mask_b = src_t.read_mask() > 0, out_t.read_mask() > 0
    assert mask_b.shape == (24, 32)
    area_a = mask_a.sum() * (32 * 0.243) ** 2
    area_b = mask_b.sum() * (32 * 0.486) ** 2
    assert area_b == pytest.approx(area_a, rel=0.15)
    # the pixels are the source's, 2x coarser, in register: closer to the 2x2 average
    # of the source than to the same average shifted by 3 output pixels
    img, ref = _level0(out), _box2(_level0(source))
    err = np.abs(img - ref).mean()
    err_shift = np.abs(img[:, 3:] - ref[:, :-3]).mean()
    assert err < 6.0 and err < 0.6 * err_shift


def test_stain_gains_scale_the_concentrations(source, tmp_path) -> None:
    out = tmp_path / "h.tif"
    rescan_slide(source, out, Rescan(h_gain=1.5, e_gain=0.8, jpeg_quality=100))
    with open_slide(source) as s:
        m = slide_stain_matrix(s)
    inv = np.linalg.inv(m)

    def conc(img):
        od = -np.log((img.reshape(-1, 3) + 1.0) / 256.0)
        return od @ inv

    a, b = conc(_level0(source)), conc(_level0(out))
    tissue = a[:, 0] + a[:, 1] > 0.3
    ratio_h = np.median(b[tissue, 0]) / np.median(a[tissue, 0])
    ratio_e = np.median(b[tissue, 1]) / np.median(a[tissue, 1])
    assert ratio_h == pytest.approx(1.5, rel=0.1)
    assert ratio_e == pytest.approx(0.8, rel=0.1)


def test_od_transform_without_rotation_is_stain_jitters_model() -> None:
    from napari_wsi_detect.training.augment import RUIFROK_HED, stain_jitter

    rng = np.random.default_rng(0)
    img = rng.uniform(30, 250, (16, 16, 3))
    t = od_transform(RUIFROK_HED, 1.3, 0.7)
    od = -np.log((img.reshape(-1, 3) + 1.0) / 256.0)
    ours = (256.0 * np.exp(-(od @ t)) - 1.0).reshape(img.shape)
    ref = stain_jitter(img, np.array([1.3, 0.7]), np.zeros(2), RUIFROK_HED)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    turned = od_transform(RUIFROK_HED, 1.0, 1.0, 10.0)
    assert not np.allclose(turned, np.eye(3), atol=1e-3)


def test_tiles_are_seamless_whatever_the_tiling(source) -> None:
    params = Rescan(h_gain=1.2, blur_sigma_px=1.5, gamma=0.9, mpp=0.3)
    with open_slide(source) as s:
        r = _Renderer(s, params, 0.3 / 0.243, od_transform(slide_stain_matrix(s), 1.2))
        whole = r(200, 150, 300, 200)
        top = np.concatenate([r(200, 150, 170, 90), r(370, 150, 130, 90)], axis=1)
        bottom = np.concatenate([r(200, 240, 170, 110), r(370, 240, 130, 110)], axis=1)
    assert np.array_equal(whole, np.concatenate([top, bottom], axis=0))


def test_memory_is_bounded_by_tiles_not_the_slide(tmp_path, monkeypatch) -> None:
    import napari_wsi_detect.slide.tiff_backend as tb

    # the reader's decoded-tile cache is bounded on its own (64 MB); shrunk here so the
    # peak measures the rescan's own buffers
    monkeypatch.setattr(tb, "_TILE_CACHE_BYTES", 2 * 2**20)
    src = tmp_path / "big.tif"
    write_phantom(src, seed=3, size=(4096, 3072), tumour=False)
    level0_bytes = 4096 * 3072 * 3
    tracemalloc.start()
    try:
        rescan_slide(src, tmp_path / "big-out.tif", Rescan(h_gain=1.2, blur_sigma_px=1.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * level0_bytes


def test_a_failed_rescan_leaves_the_old_output_and_no_temporaries(source, tmp_path,
                                                                  monkeypatch) -> None:
    out = tmp_path / "atomic.tif"
    out.write_bytes(b"old")
    calls = {"n": 0}
    real = _Renderer.__call__

    def failing(self, *a):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("disk gone")
        return real(self, *a)

    monkeypatch.setattr(_Renderer, "__call__", failing)
    with pytest.raises(RuntimeError):
        rescan_slide(source, out, Rescan(blur_sigma_px=1.0))
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.tif"]


def test_bad_parameters_are_refused(source, tmp_path) -> None:
    with pytest.raises(WsiDetectError):
        rescan_slide(source, tmp_path / "x.tif", Rescan(jpeg_quality=0))
    with pytest.raises(WsiDetectError):
        rescan_slide(source, source, Rescan())
    with pytest.raises(WsiDetectError):
        rescan_slide(source, tmp_path / "x.png", Rescan())


def test_cli_rescan(source, tmp_path, capsys) -> None:
    from napari_wsi_detect.cli import main

    out = tmp_path / "cli.tif"
    rc = main(["rescan", str(source), str(out), "--e-gain", "0.7", "--blur", "1",
               "--jpeg-quality", "70", "--mpp", "0.486", "--quiet"])
    assert rc == 0
    assert "1024×768 px at 0.486 µm/px" in capsys.readouterr().out
    assert load_phantom_truth(out).mpp == pytest.approx(0.486)
