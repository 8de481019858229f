"""Lazy dask pyramids: chunk sizes, one read per chunk, synthetic levels."""

from __future__ import annotations

import numpy as np
import tifffile

from conftest import shared_file
from napari_wsi_detect.slide import Level, open_slide
from napari_wsi_detect.slide.pyramid import chunk_size

CMU = "slides/cmu-1-small-region.svs"
TCGA = "slides/tcga-cr-7395-01a-01-ts1.svs"


def count_reads(monkeypatch, slide, attr="read_region"):
    calls = []
    original = getattr(slide, attr)

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(slide, attr, counting)
    return calls


def test_chunk_size_rule():
    assert chunk_size(Level((3000, 2000), 1.0, tile=(240, 240))) == 512  # small tile
    assert chunk_size(Level((3000, 2000), 1.0, tile=(256, 256))) == 256  # native tile
    assert chunk_size(Level((1500, 1000), 2.0005, tile=(256, 256))) == 512  # misaligned
    assert chunk_size(Level((3000, 2000), 1.0, tile=(16, 2000))) == 512  # strips
    assert chunk_size(Level((100_000, 200_000), 1.0)) == 1024  # huge level
    assert chunk_size(Level((1500, 1000), 2.0, synthetic=True)) == 512


def test_pyramid_shapes_and_chunks():
    with open_slide(shared_file(TCGA)) as s:
        pyr = s.pyramid()
        assert pyr is s.pyramid()  # built once
        assert [a.shape[:2] for a in pyr] == [lv.shape for lv in s.levels]
        assert all(a.dtype == np.uint8 and a.shape[2] == 3 for a in pyr)
        assert pyr[0].chunksize[:2] == (256, 256)  # TCGA's native JPEG 2000 tiles
        assert pyr[1].chunksize[:2] == (512, 512)  # downsample 2.0005: not tile-aligned
        assert max(pyr[-1].shape[:2]) < 1024  # napari's whole-slide view is small


def test_one_chunk_reads_exactly_its_region(monkeypatch):
    with open_slide(shared_file(CMU)) as s:
        pyr = s.pyramid()
        calls = count_reads(monkeypatch, s)
        block = pyr[0].blocks[1, 2].compute()
        assert calls == [(0, 1024, 512, 512, 512)]
        np.testing.assert_array_equal(block, s.read_region(0, 1024, 512, 512, 512))
        calls.clear()
        # Slicing as napari does reads only the chunks the slice touches.
        view = pyr[0][400:600, 450:700].compute()
        assert view.shape == (200, 250, 3)
        assert sorted(calls) == [
            (0, 0, 0, 512, 512),
            (0, 0, 512, 512, 512),
            (0, 512, 0, 512, 512),
            (0, 512, 512, 512, 512),
        ]
        calls.clear()
        corner = pyr[0][2900:, 2100:].compute()  # inside the ragged last chunk
        assert calls == [(0, 2048, 2560, 172, 407)]
        assert corner.shape == (67, 120, 3)


def test_cmu1_synthetic_levels_equal_area_downsample():
    with open_slide(shared_file(CMU)) as s:
        assert [(lv.shape, lv.downsample, lv.synthetic) for lv in s.levels] == [
            ((2967, 2220), 1.0, False),
            ((1484, 1110), 2.0, True),
            ((742, 555), 4.0, True),
        ]
        pyr = s.pyramid()
        level0 = pyr[0].compute().astype(np.float64)  # small slide: fine in a test
        top = pyr[2].compute().astype(np.float64)
    # Area mean of 4x4 blocks, the last (partial) block averaging only real pixels.
    h, w = 742, 555
    pad = np.zeros((h * 4, w * 4, 3))
    pad[:2967, :2220] = level0
    count = np.zeros((h * 4, w * 4))
    count[:2967, :2220] = 1
    sums = pad.reshape(h, 4, w, 4, 3).sum(axis=(1, 3))
    ref = sums / count.reshape(h, 4, w, 4).sum(axis=(1, 3))[:, :, None]
    diff = np.abs(top - ref)
    assert diff.max() <= 1.0  # two rounded 2x2 means vs one exact 4x4 mean
    assert diff[-1].max() <= 1.0 and diff[:, -1].max() <= 1.0  # edges not faded to white


def test_read_region_on_synthetic_level():
    with open_slide(shared_file(CMU)) as s:
        # Level-0 origin (800, 400) is level-2 pixel (200, 100).
        region = s.read_region(2, 800, 400, 100, 60)
        np.testing.assert_array_equal(region, s.pyramid()[2][100:160, 200:300].compute())
        outside = s.read_region(2, 2100, 2900, 50, 50)  # past the bottom-right corner
        assert (outside[20:, :] == 255).all() and (outside[:, 40:] == 255).all()


def test_tcga_synthetic_levels_come_from_native_level1(monkeypatch):
    with open_slide(shared_file(TCGA)) as s:
        assert [lv.synthetic for lv in s.levels] == [False, False, True, True]
        calls = count_reads(monkeypatch, s, "_read_native")
        s.pyramid()[2].blocks[0, 0].compute()
        assert {c[0] for c in calls} == {1}  # built from level 1, never level 0


def test_large_single_level_tiff_never_reads_a_whole_level(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    img = np.repeat(rng.integers(0, 255, (94, 128, 3), dtype=np.uint8), 32, axis=0)
    img = np.repeat(img, 32, axis=1)  # 3008 x 4096, flat 32-px blocks
    path = tmp_path / "single.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib")
    with open_slide(path) as s:
        assert s.native_level_count == 1
        assert [lv.shape for lv in s.levels] == [
            (3008, 4096),
            (1504, 2048),
            (752, 1024),
            (376, 512),
        ]
        calls = count_reads(monkeypatch, s, "_read_native")
        top = s.pyramid()[-1].compute()
        assert max(w * h for (_, _, _, w, h) in calls) <= 1024 * 1024
        # Flat 32-px blocks average exactly: the 8x downsample is the original subsampled.
        np.testing.assert_array_equal(top, img[::8, ::8])
