"""Phantom slides: determinism, seamless tiles, truth that matches the pixels, readable
pyramids, the CLI and atomic writes. The 4096×3072 slide comes from the session fixture
`phantom_small` (seed 7, 0.243 µm/px); other tests render small regions directly."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import tifffile
from skimage.color import rgb2hed
from skimage.draw import polygon as draw_polygon
from skimage.measure import points_in_poly

from napari_wsi_detect.errors import AnnotationError, WsiDetectError
from napari_wsi_detect.phantom import (
    load_phantom_truth,
    phantom_layout,
    render_phantom_region,
    write_phantom,
)
from napari_wsi_detect.phantom import render as phantom_render
from napari_wsi_detect.phantom.pyramid import level_sizes, write_pyramid_tiff

SMALL = dict(seed=7, size=(4096, 3072), mpp=0.243)


def read_level0(path, x, y, w, h) -> np.ndarray:
    import zarr

    store = tifffile.imread(path, aszarr=True, level=0)
    try:
        return np.asarray(zarr.open(store, mode="r")[y : y + h, x : x + w])
    finally:
        store.close()


def lymphoid_point(layout, avoid: float = 400.0) -> tuple[int, int]:
    """A place deep in dense lymphoid tissue, away from tumour and follicle centres."""
    ys, xs = np.mgrid[256 : layout.height - 256 : 64, 256 : layout.width - 256 : 64]
    x, y = xs.ravel().astype(float), ys.ravel().astype(float)
    f = layout.fields(x, y)
    ok = (f["lymph"] > 0.95) & (f["density"] > 0.9) & (f["gc"] < 0.01) & (f["stroma"] < 0.01)
    for les in layout.lesions:
        c = les.polygon.mean(0)
        r = np.hypot(*(les.polygon - c).T).max() + avoid
        ok &= np.hypot(x - c[0], y - c[1]) > r
    assert ok.any(), "the phantom has no plain lymphoid tissue"
    i = np.nonzero(ok)[0][ok.sum() // 2]
    return int(x[i]), int(y[i])


def nuclear_stats(rgb: np.ndarray, mpp: float, inside: np.ndarray | None = None) -> dict[str, float]:
    """Pixel statistics a pathologist's eye uses, by colour deconvolution:
    `big`: share of haematoxylin pixels in nuclei wider than 8.4 µm (a disk of that size
    fits: granulometry by morphological opening); `dark`: share of very dark pixels
    (dense chromatin)."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    hed = ndi.gaussian_filter(rgb2hed(rgb)[..., 0], 1.0)
    nuc = ndi.binary_fill_holes(hed > 0.03)
    big = ndi.binary_opening(nuc, structure=disk(round(4.2 / mpp)))
    sel = np.ones(nuc.shape, bool) if inside is None else inside
    return {
        "big": float(big[sel].sum() / max(nuc[sel].sum(), 1)),
        "dark": float((rgb.mean(-1)[sel] < 110).mean()),
    }


# -- determinism and seams -------------------------------------------------------------
def test_same_seed_same_pixels_other_seed_differs():
    a = render_phantom_region(1500, 1200, 300, 200, **SMALL)
    b = render_phantom_region(1500, 1200, 300, 200, **SMALL)
    c = render_phantom_region(1500, 1200, 300, 200, seed=8, size=(4096, 3072), mpp=0.243)
    assert a.shape == (200, 300, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_any_window_split_renders_identically():
    layout, _ = phantom_layout(**SMALL)
    r = phantom_render.PhantomRenderer(layout)
    whole = r.render(2300, 1300, 400, 300)  # inside the micro-metastasis and around
    left = r.render(2300, 1300, 173, 300)
    right = r.render(2473, 1300, 227, 300)
    top = r.render(2300, 1300, 400, 111)
    assert np.array_equal(whole, np.concatenate([left, right], axis=1))
    assert np.array_equal(whole[:111], top)


def test_file_has_no_seams_at_tile_borders(phantom_small):
    x, y, w, h = 1024 - 150, 1536 - 150, 300, 300  # four 512 px tiles meet here
    direct = render_phantom_region(x, y, w, h, **SMALL).astype(int)
    stored = read_level0(phantom_small, x, y, w, h).astype(int)
    diff = np.abs(direct - stored)
    assert diff.mean() < 4.0, "file differs from the renderer beyond JPEG error"
    # the error just across the 512 px borders is no worse than elsewhere
    border = np.r_[diff[:, 148:152].mean(), diff[148:152].mean()]
    assert border.max() < 2.0 * diff.mean() + 1.0


# -- the file ---------------------------------------------------------------------------
def test_pyramid_levels_tiles_and_mpp(phantom_small):
    with tifffile.TiffFile(phantom_small) as tf:
        series = tf.series[0]
        shapes = [lv.shape for lv in series.levels]
        assert shapes == [(3072, 4096, 3), (1536, 2048, 3), (768, 1024, 3), (384, 512, 3)]
        page = series.levels[0].pages[0]
        assert page.is_tiled and (page.tilewidth, page.tilelength) == (512, 512)
        assert page.compression == tifffile.COMPRESSION.JPEG
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        num, den = page.tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(0.243, rel=1e-4)
        low = series.levels[-1].pages[0]
        num, den = low.tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(0.243 * 8, rel=1e-3)
    assert level_sizes(4096, 3072) == [(4096, 3072), (2048, 1536), (1024, 768), (512, 384)]


def test_openslide_reads_it_as_generic_tiff(phantom_small):
    openslide = pytest.importorskip("openslide")
    fmt = openslide.OpenSlide.detect_format(str(phantom_small))
    assert fmt == "generic-tiff"
    with openslide.OpenSlide(str(phantom_small)) as osr:
        assert osr.level_count == 4
        assert osr.level_downsamples[3] == pytest.approx(8.0)
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.243, rel=1e-4)
        region = np.asarray(osr.read_region((1000, 900), 0, (200, 150)))[..., :3].astype(int)
    ours = read_level0(phantom_small, 1000, 900, 200, 150).astype(int)
    assert np.abs(region - ours).max() <= 2  # same JPEG tiles, two decoders


def test_package_open_slide_sees_levels_and_mpp(phantom_small):
    try:
        from napari_wsi_detect.slide import open_slide
    except ImportError:  # pragma: no cover - module of another layer
        pytest.skip("open_slide not available yet")
    with open_slide(phantom_small) as slide:
        assert slide.mpp == pytest.approx(0.243, rel=1e-3)
        assert [lv.shape for lv in slide.levels][:4] == [(3072, 4096), (1536, 2048), (768, 1024), (384, 512)]


# -- truth --------------------------------------------------------------------------------
def test_truth_file_and_classes(phantom_small):
    truth = load_phantom_truth(phantom_small)
    assert truth.size == (4096, 3072) and truth.mpp == pytest.approx(0.243) and truth.seed == 7
    classes = {t.size_class for t in truth.tumours}
    assert {"micro", "itc"} <= classes
    for t in truth.tumours:
        expected = "macro" if t.major_axis_um > 2000 else ("micro" if t.major_axis_um >= 200 else "itc")
        assert t.size_class == expected
        d = t.polygon[:, None] - t.polygon[None]
        assert np.sqrt((d**2).sum(-1)).max() * 0.243 == pytest.approx(t.major_axis_um, rel=1e-3)
    doc = json.loads(truth.geojson_path.read_text())
    names = [f["properties"]["classification"]["name"] for f in doc["features"]]
    assert names.count("Tumor") == len(truth.tumours)
    assert names.count("Mitosis") == len(truth.mitoses) > 0
    assert names.count("Imposter") == len(truth.imposters) > 0
    ids = [f["id"] for f in doc["features"]]
    assert len(set(ids)) == len(ids)
    tum = next(f for f in doc["features"] if f["properties"]["classification"]["name"] == "Tumor")
    assert tum["properties"]["objectType"] == "annotation"
    assert tum["properties"]["classification"]["color"] == [200, 0, 0]
    assert {"area_um2", "major_axis_um"} <= set(tum["properties"]["measurements"])
    ring = tum["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    try:
        from napari_wsi_detect.annotations.qupath_check import check_qupath_geojson
    except ImportError:  # pragma: no cover
        return
    assert check_qupath_geojson(doc) == []


def test_mask_agrees_with_polygons(phantom_small):
    truth = load_phantom_truth(phantom_small)
    mask = truth.read_mask()
    with tifffile.TiffFile(truth.mask_path) as tf:
        meta = json.loads(tf.pages[0].description)
    assert meta["downsample"] == 32
    assert mask.shape == (3072 // 32, 4096 // 32) and mask.dtype == np.uint8
    drawn = np.zeros_like(mask)
    for t in truth.tumours:
        # skimage puts pixel centres on integers; ours sit at (c + 0.5) * 32
        rr, cc = draw_polygon(t.polygon[:, 1] / 32 - 0.5, t.polygon[:, 0] / 32 - 0.5, mask.shape)
        drawn[rr, cc] = t.label
    inter = ((mask > 0) & (drawn > 0)).sum()
    union = ((mask > 0) | (drawn > 0)).sum()
    assert inter / union > 0.9
    for t in truth.tumours:
        if t.size_class != "itc":
            a, b = mask == t.label, drawn == t.label
            assert (a & b).sum() / (a | b).sum() > 0.9
    assert set(np.unique(mask)) == {0} | {t.label for t in truth.tumours}


def test_mitoses_lie_in_tumour_and_look_dark(phantom_small):
    truth = load_phantom_truth(phantom_small)
    inside = np.zeros(len(truth.mitoses), bool)
    for t in truth.tumours:
        inside |= points_in_poly(truth.mitoses, t.polygon)
    assert inside.all()
    # condensed chromatin: the darkest pixels at a mitosis are darker than the darkest
    # pixels of ordinary tumour nuclei at random places in the same lesions
    r = 16  # ≈ 4 µm
    dark_mit = []
    for x, y in truth.mitoses[:8]:
        patch = read_level0(phantom_small, int(x) - r, int(y) - r, 2 * r, 2 * r).mean(-1)
        dark_mit.append(np.percentile(patch, 5))
    micro = next(t for t in truth.tumours if t.size_class == "micro")
    cx, cy = micro.polygon.mean(0).astype(int)
    tumour = read_level0(phantom_small, cx - 128, cy - 128, 256, 256).mean(-1)
    assert np.median(dark_mit) < np.percentile(tumour, 1) + 5
    assert np.median(dark_mit) < 90


def test_tumour_differs_from_lymphoid_tissue(phantom_small):
    """Inside ITC/micro polygons nuclei are large and pale; lymphoid tissue is a sheet of
    small dark nuclei: a 244 px patch tells them apart."""
    truth = load_phantom_truth(phantom_small)
    layout, _ = phantom_layout(**SMALL)
    lx, ly = lymphoid_point(layout)
    lymph = nuclear_stats(read_level0(phantom_small, lx - 122, ly - 122, 244, 244), 0.243)
    assert lymph["big"] < 0.35 and lymph["dark"] > 0.2, lymph
    for t in truth.tumours:
        cx, cy = t.polygon.mean(0)
        x0, y0 = int(cx) - 122, int(cy) - 122
        yy, xx = np.mgrid[y0 : y0 + 244, x0 : x0 + 244] + 0.5
        inside = points_in_poly(np.c_[xx.ravel(), yy.ravel()], t.polygon).reshape(xx.shape)
        assert inside.sum() > 2000, "the lesion's centre should be tumour"
        tum = nuclear_stats(read_level0(phantom_small, x0, y0, 244, 244), 0.243, inside)
        assert tum["big"] > 0.35 and tum["big"] > 3 * lymph["big"], (t.size_class, tum, lymph)
        assert tum["dark"] < 0.5 * lymph["dark"], (t.size_class, tum, lymph)


def test_normal_slide_has_no_tumour(tmp_path):
    truth = write_phantom(tmp_path / "normal.tif", seed=3, size=(1024, 768), tumour=False)
    assert truth.tumours == [] and len(truth.mitoses) == 0
    assert truth.read_mask().max() == 0
    assert load_phantom_truth(tmp_path / "normal.tif").counts()["tumours"] == 0


# -- CLI, atomicity, bad input, memory -----------------------------------------------
def test_cli_writes_three_files(tmp_path, capsys):
    from napari_wsi_detect.cli import main

    out = tmp_path / "cli.tif"
    rc = main(["phantom", str(out), "--seed", "5", "--size", "2048", "1536", "--quiet"])
    assert rc == 0
    assert out.exists() and (tmp_path / "cli.geojson").exists()
    assert (tmp_path / "cli.tumour-mask.tif").exists()
    text = capsys.readouterr().out
    assert "cli.tif" in text and "counts:" in text
    counts = json.loads(text.split("counts: ")[1].splitlines()[0])
    assert counts == load_phantom_truth(out).counts()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.geojson", "cli.tif", "cli.tumour-mask.tif"]


def test_failure_mid_write_leaves_no_output(tmp_path, monkeypatch):
    out = tmp_path / "crash.tif"
    out.write_bytes(b"previous result")
    calls = {"n": 0}
    real = phantom_render.PhantomRenderer.render

    def flaky(self, x, y, w, h):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(self, x, y, w, h)

    monkeypatch.setattr(phantom_render.PhantomRenderer, "render", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_phantom(out, seed=1, size=(2048, 1024))
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crash.tif"]


def test_bad_input_raises_package_errors(tmp_path):
    with pytest.raises(WsiDetectError, match="too small"):
        write_phantom(tmp_path / "x.tif", size=(100, 100))
    with pytest.raises(WsiDetectError, match=".tif"):
        write_phantom(tmp_path / "x.png", size=(1024, 1024))
    with pytest.raises(WsiDetectError, match="lesions"):
        write_phantom(tmp_path / "x.tif", size=(1024, 1024), lesions={"huge": 1})
    with pytest.raises(AnnotationError, match="no phantom truth"):
        load_phantom_truth(tmp_path / "missing.tif")


def test_pyramid_writer_memory_is_bounded(tmp_path):
    """Streaming: peak Python/numpy memory stays far below one level 0 (here 302 MB)."""
    w, h = 12288, 8192

    def flat(x, y, tw, th):
        t = np.empty((th, tw, 3), np.uint8)
        t[...] = (x // 512 * 7 % 255, y // 512 * 13 % 255, 200)
        return t

    tracemalloc.start()
    try:
        write_pyramid_tiff(tmp_path / "big.tif", w, h, flat, mpp=0.5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.1 * w * h * 3
    with tifffile.TiffFile(tmp_path / "big.tif") as tf:
        levels = tf.series[0].levels
        assert len(levels) == 5 and levels[-1].shape == (512, 768, 3)
        small = levels[-1].asarray()
    # block colours survive the pyramid: level 4 pixel (x, y) covers level 0 (16x, 16y)
    assert abs(int(small[100, 300, 0]) - (300 * 16 // 512 * 7 % 255)) <= 3
