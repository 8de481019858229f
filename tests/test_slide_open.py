"""Opening real slides and our own TIFFs: levels, mpp, associated images, pixels equal
to OpenSlide's (composited on white), thread-safe reads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from conftest import shared_file
from napari_wsi_detect import open_slide as top_level_open_slide
from napari_wsi_detect.errors import SlideReadError
from napari_wsi_detect.slide import open_slide
from napari_wsi_detect.slide.openslide_backend import OpenSlideSlide
from napari_wsi_detect.slide.tiff_backend import ImageSlide, TiffSlide

CMU = "slides/cmu-1-small-region.svs"
TCGA = "slides/tcga-cr-7395-01a-01-ts1.svs"


def openslide_on_white(path, level, x, y, w, h) -> np.ndarray:
    """Reference pixels straight from openslide-python, alpha composited on white."""
    import openslide

    with openslide.OpenSlide(str(path)) as osr:
        rgba = np.asarray(osr.read_region((x, y), level, (w, h))).astype(np.float64)
    a = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * a + 255.0 * (1 - a)).astype(np.uint8)


def test_cmu1_levels_mpp_associated():
    with open_slide(shared_file(CMU)) as s:
        assert isinstance(s, OpenSlideSlide)
        assert s.vendor == "aperio"
        assert s.levels[0].shape == (2967, 2220)
        assert s.native_level_count == 1
        assert s.mpp == pytest.approx(0.499)
        assert s.objective_power == 20
        assert s.associated_names == ["label", "macro", "thumbnail"]
        label = s.associated_image("label")
        assert label.shape == (463, 387, 3) and label.dtype == np.uint8
        with pytest.raises(SlideReadError, match="no associated image 'barcode'"):
            s.associated_image("barcode")


def test_tcga_has_no_mpp_and_two_native_levels():
    s = top_level_open_slide(shared_file(TCGA))
    try:
        assert s.mpp is None
        assert [lv.shape for lv in s.levels[:2]] == [(3567, 4443), (1783, 2221)]
        assert s.levels[1].downsample == pytest.approx(2.0005, abs=1e-3)
        assert not s.levels[1].synthetic
        assert s.associated_names == ["thumbnail"]
    finally:
        s.close()


@pytest.mark.parametrize(
    "level,x,y,w,h",
    [
        (0, 0, 0, 300, 200),  # corner
        (0, 1000, 1500, 257, 129),  # interior, straddling 240-px tiles
        (0, 2100, 2900, 300, 200),  # bottom-right edge: part outside reads white
        (0, -50, -20, 100, 60),  # negative origin
    ],
)
def test_cmu1_read_region_matches_openslide(level, x, y, w, h):
    path = shared_file(CMU)
    with open_slide(path) as s:
        ours = s.read_region(level, x, y, w, h)
    assert ours.shape == (h, w, 3) and ours.dtype == np.uint8
    ref = openslide_on_white(path, level, x, y, w, h)
    assert np.abs(ours.astype(int) - ref).max() <= 1
    if x + w > 2220:
        assert (ours[:, 2220 - x :] == 255).all()  # outside the slide is white


def test_tcga_level1_read_matches_openslide():
    path = shared_file(TCGA)
    with open_slide(path) as s:
        ours = s.read_region(1, 4000, 3000, 300, 300)  # runs off the bottom-right
    ref = openslide_on_white(path, 1, 4000, 3000, 300, 300)
    assert np.abs(ours.astype(int) - ref).max() <= 1
    assert (ours[-10:, -10:] == 255).all()


def test_reads_from_many_threads_agree():
    with open_slide(shared_file(CMU)) as s:
        boxes = [(0, (i * 97) % 2000, (i * 131) % 2800, 200, 150) for i in range(24)]
        serial = [s.read_region(*b) for b in boxes]
        with ThreadPoolExecutor(6) as pool:
            parallel = list(pool.map(lambda b: s.read_region(*b), boxes))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_closed_slide_refuses_reads():
    s = open_slide(shared_file(CMU))
    s.close()
    with pytest.raises(SlideReadError, match="closed"):
        s.read_region(0, 0, 0, 10, 10)


def _write_pyramid(
    path, img: np.ndarray, mpp_um: float | None, *, subifds: bool, unit="CENTIMETER"
):
    """A tiled JPEG pyramid the way our phantom writer and many tools write them."""
    levels = [img, img[::2, ::2], img[::4, ::4]]
    kw = {}
    if mpp_um is not None:
        per_unit = 1e4 / mpp_um if unit == "CENTIMETER" else 25400 / mpp_um
        kw = {"resolution": (per_unit, per_unit), "resolutionunit": unit}
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            extra = kw if i == 0 else {"subfiletype": 1}
            if i == 0 and subifds:
                extra = {**extra, "subifds": len(levels) - 1}
            tw.write(lv, tile=(256, 256), compression="jpeg", photometric="rgb", **extra)


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 230, (h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
    return np.repeat(np.repeat(small, 32, axis=0), 32, axis=1)[:h, :w]


@pytest.mark.parametrize("subifds", [True, False])
def test_tifffile_pyramid_with_resolution_tags(tmp_path, subifds):
    img = _smooth_image(1500, 2100)
    path = tmp_path / "pyr.tif"
    _write_pyramid(path, img, 0.243, subifds=subifds)
    with open_slide(path) as s:
        assert isinstance(s, TiffSlide)
        assert s.mpp == pytest.approx(0.243, rel=1e-6)
        assert [lv.shape for lv in s.levels] == [(1500, 2100), (750, 1050), (375, 525)]
        assert [lv.downsample for lv in s.levels] == [1.0, 2.0, 4.0]
        assert not any(lv.synthetic for lv in s.levels)
        with tifffile.TiffFile(path) as tif:  # tifffile's own decoding of each level
            ref0 = tif.series[0].levels[0].asarray()
            ref2 = tif.series[0].levels[2].asarray()
        np.testing.assert_array_equal(s.read_region(0, 100, 200, 300, 260), ref0[200:460, 100:400])
        lvl2 = s.read_region(2, 400, 400, 100, 80)  # origin in level-0 pixels
        np.testing.assert_array_equal(lvl2, ref2[100:180, 100:200])
        assert np.abs(ref0.astype(int) - img).mean() < 4  # and that is the image we wrote
        edge = s.read_region(0, 2000, 1400, 200, 200)
        assert (edge[100:, :] == 255).all() and (edge[:, 100:] == 255).all()


def test_tiff_resolution_in_inches_and_meaningless_72dpi(tmp_path):
    img = _smooth_image(300, 400)
    inch = tmp_path / "inch.tif"
    _write_pyramid(inch, img, 0.5, subifds=False, unit="INCH")
    with open_slide(inch) as s:
        assert s.mpp == pytest.approx(0.5)
    office = tmp_path / "office.tif"
    tifffile.imwrite(office, img, resolution=(72, 72), resolutionunit="INCH", tile=(256, 256))
    with open_slide(office) as s:
        assert s.mpp is None  # 72 dpi is a software default, not a microscope


def test_ome_tiff_physical_size(tmp_path):
    img = _smooth_image(600, 800)
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(
        path,
        img,
        tile=(256, 256),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25},
    )
    with open_slide(path) as s:
        assert s.vendor == "ome-tiff"
        assert s.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(s.read_region(0, 10, 20, 30, 40), img[20:60, 10:40])


def test_png_tile_opens_as_one_level_image(shared_data):
    path = shared_file("tiles/no-tissue.png")
    with open_slide(path) as s:
        assert isinstance(s, ImageSlide)
        assert s.native_level_count == 1 and len(s.levels) == 1
        assert s.levels[0].shape == (512, 512)
        assert s.mpp is None
        px = s.read_region(0, 0, 0, 512, 512)
    from PIL import Image

    rgba = np.asarray(Image.open(path).convert("RGBA")).astype(float)
    a = rgba[..., 3:] / 255
    ref = np.round(rgba[..., :3] * a + 255 * (1 - a))
    assert np.abs(px - ref).max() <= 1


def test_small_tiff_patch_opens(shared_data):
    tif = next((shared_data / "pcam" / "train").glob("*.tif"), None)
    if tif is None:
        pytest.skip("no PCam patch")
    with open_slide(tif) as s:
        assert s.levels[0].shape == (96, 96)
        assert s.read_region(0, 0, 0, 96, 96).shape == (96, 96, 3)
