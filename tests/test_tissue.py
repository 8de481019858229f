"""Tissue masks: real tiles and slides from ../shared/data, plus exact area fractions."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_file
from napari_wsi_detect.errors import EmptyTissueError, WsiDetectError
from napari_wsi_detect.slide.tissue import (
    TissueMask,
    compute_tissue_mask,
    pen_mask,
    tissue_mask_from_rgb,
)


def _tile(name: str) -> np.ndarray:
    from PIL import Image

    path = shared_file(f"tiles/{name}.png")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _pen_reference(rgb: np.ndarray) -> np.ndarray:
    """Independent definition of ink for the tests: hues H&E never has.

    Green/teal/blue marker (hue 100–220°) and saturated pure red (±15° of red, S > 0.5);
    eosin is pink-magenta (hue 300–345°) and haematoxylin purple (255–300°).
    """
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(rgb)
    hue, sat = hsv[..., 0] * 360, hsv[..., 1]
    return ((hue > 100) & (hue < 220) & (sat > 0.15)) | (((hue >= 345) | (hue <= 15)) & (sat > 0.5))


# -- real tiles --------------------------------------------------------------------------
TISSUE_TILES = [
    "tissue-level0-4302-10273-4814-10785",
    "tissue-level0-7352-11762-7864-12274",
    "tissue-level2-1784-6289-5880-10386",
    "tissue-level2-3000-7666-7096-11763",
    "tissue-level2-4640-4649-8736-8746",
    "tissue-level2-4760-5241-8856-9338",
    "high-nuclei-score-level0",
    "medium-nuclei-score-level0",
    "medium-nuclei-score-level1-2",
    "very-low-nuclei-score-level0",  # pale, even pink: no background for Otsu to split on
]
EMPTY_TILES = ["no-tissue", "no-tissue2", "no-tissue-line", "almost-white-1", "almost-white-2"]
PEN_ONLY_TILES = ["no-tissue-green-pen", "no-tissue-red-pen"]
TISSUE_AND_PEN_TILES = [
    "high-nuclei-score-red-pen-level1",
    "medium-nuclei-score-green-pen-level1",
    "very-low-nuclei-score-red-pen-level1",
]


@pytest.mark.parametrize("name", TISSUE_TILES)
def test_tissue_tiles_are_mostly_tissue(name: str) -> None:
    assert tissue_mask_from_rgb(_tile(name)).mean() > 0.30


@pytest.mark.parametrize("name", EMPTY_TILES)
def test_empty_and_almost_white_tiles_have_no_tissue(name: str) -> None:
    assert tissue_mask_from_rgb(_tile(name)).mean() < 0.05


@pytest.mark.parametrize("name", PEN_ONLY_TILES)
def test_pen_only_tiles_have_no_tissue(name: str) -> None:
    rgb = _tile(name)
    assert tissue_mask_from_rgb(rgb, exclude_pen=False).mean() > 0.5  # the ink is saturated
    assert tissue_mask_from_rgb(rgb).mean() < 0.05


@pytest.mark.parametrize("name", TISSUE_AND_PEN_TILES)
def test_pen_pixels_are_excluded_from_tissue(name: str) -> None:
    rgb = _tile(name)
    ink = _pen_reference(rgb)
    assert ink.mean() > 0.01, "the tile should hold visible ink"
    mask = tissue_mask_from_rgb(rgb)
    assert (mask & ink).sum() / ink.sum() < 0.05
    assert pen_mask(rgb)[ink].mean() > 0.9


def test_tissue_beside_pen_is_kept() -> None:
    # High-nuclei tile crossed by a red smear: the tissue around it stays tissue.
    assert tissue_mask_from_rgb(_tile("high-nuclei-score-red-pen-level1")).mean() > 0.8
    # Green-pen tile: the lower half is clean tissue.
    mask = tissue_mask_from_rgb(_tile("medium-nuclei-score-green-pen-level1"))
    assert mask[300:].mean() > 0.5


def test_methods_agree_on_background_and_od_misses_pale_tissue() -> None:
    pale = _tile("very-low-nuclei-score-level0")
    assert tissue_mask_from_rgb(pale, method="saturation").mean() > 0.9
    assert tissue_mask_from_rgb(_tile("no-tissue"), method="od").mean() < 0.05
    with pytest.raises(WsiDetectError):
        tissue_mask_from_rgb(pale, method="hue")  # type: ignore[arg-type]


def test_blank_and_noisy_white_images_give_no_tissue() -> None:
    rng = np.random.default_rng(0)
    white = np.full((300, 300, 3), 250, np.uint8)
    noisy = np.clip(white + rng.normal(0, 3, white.shape), 0, 255).astype(np.uint8)
    assert not tissue_mask_from_rgb(white).any()
    assert tissue_mask_from_rgb(noisy).mean() < 0.01


def test_rgba_transparency_reads_as_white() -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200  # saturated red but fully transparent
    assert not tissue_mask_from_rgb(rgba).any()


def test_specks_removed_and_small_holes_filled_in_um2() -> None:
    img = np.full((200, 200, 3), 245, np.uint8)
    pink = (200, 120, 180)
    img[20:180, 20:180] = pink
    img[90:93, 90:93] = 245  # a 3×3 px hole: 9 px × 64 µm² < 50,000 µm²
    img[5:7, 190:192] = pink  # a 2×2 speck: 256 µm² < 10,000 µm²
    mask = tissue_mask_from_rgb(img, mpp=8.0)
    assert mask[91, 91] and not mask[6, 191]
    # the square is found to within the 1-px blur of the score
    assert 158**2 <= mask.sum() <= 162**2


# -- real slides ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        # Fractions checked against docs/images/tissue-*.png: CMU-1 crop is a strip of skin
        # on white glass (≈ 1/3); the TCGA frozen section fills most of its frame.
        ("cmu-1-small-region.svs", 0.25, 0.45),
        ("tcga-cr-7395-01a-01-ts1.svs", 0.5, 0.75),
    ],
)
def test_real_slides(name: str, low: float, high: float, tmp_path) -> None:
    from napari_wsi_detect.slide import open_slide

    with open_slide(shared_file(f"slides/{name}")) as slide:
        tm = compute_tissue_mask(slide, require_tissue=True)
        h0, w0 = slide.levels[0].shape
        assert max(tm.shape) <= 4096
        assert tm.slide_shape == (h0, w0)
        assert abs(tm.shape[0] * tm.downsample - h0) <= tm.downsample
        assert low < tm.tissue_fraction < high
        x, y, w, h = tm.level0_bbox()
        assert 0 <= x and 0 <= y and x + w <= w0 and y + h <= h0
        assert tm.fraction(x, y, w, h) > tm.tissue_fraction  # the box is denser than the slide
        if slide.mpp:
            assert tm.mpp == slide.mpp
            assert tm.downsample * slide.mpp == pytest.approx(8.0, rel=0.1)
        # a level-0 corner that is glass in both slides
        assert tm.fraction(0, 0, 64, 64) < 0.2
        for suffix in (".npz", ".png"):
            back = TissueMask.load(tm.save(tmp_path / f"mask{suffix}"))
            assert np.array_equal(back.mask, tm.mask)
            assert back.downsample == pytest.approx(tm.downsample)
            assert back.slide_shape == tm.slide_shape and back.mpp == tm.mpp


class _BlankSlide:
    """The Slide surface compute_tissue_mask uses, on a white 4096² 'slide'."""

    from napari_wsi_detect.slide.base import Level

    levels = [Level((4096, 4096), 1.0), Level((256, 256), 16.0)]
    mpp = 0.5
    objective_power = 20.0
    path = "blank.tif"

    def best_level_for_downsample(self, d: float) -> int:
        return 1 if d >= 16 else 0

    def read_region(self, level, x, y, w, h):
        assert level == 1, "should read the small level, not level 0"
        return np.full((h, w, 3), 247, np.uint8)


def test_empty_slide_raises_when_tissue_is_required() -> None:
    tm = compute_tissue_mask(_BlankSlide())
    assert tm.is_empty and tm.tissue_fraction == 0 and tm.level0_bbox() is None
    with pytest.raises(EmptyTissueError, match="no tissue"):
        compute_tissue_mask(_BlankSlide(), require_tissue=True)


# -- fraction(): exact, O(1) -----------------------------------------------------------------
def _brute_fraction(mask: np.ndarray, d: int, slide_shape, x, y, w, h) -> float:
    """Mean over level-0 pixels of the rectangle, mask blown up to level 0, outside = 0."""
    big = np.repeat(np.repeat(mask, d, axis=0), d, axis=1)[: slide_shape[0], : slide_shape[1]]
    pad = 1000
    canvas = np.zeros((big.shape[0] + 2 * pad, big.shape[1] + 2 * pad))
    canvas[pad : pad + big.shape[0], pad : pad + big.shape[1]] = big
    return float(canvas[pad + y : pad + y + h, pad + x : pad + x + w].mean())


def test_fraction_matches_brute_force_on_random_rectangles() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.6
    d = 4
    slide_shape = (37 * d - 3, 53 * d - 2)  # the last mask row/column overhangs the slide
    tm = TissueMask(mask, d, 0.25, slide_shape)
    for _ in range(300):
        w, h = rng.integers(1, 120, 2)
        x = int(rng.integers(-150, slide_shape[1] + 20))
        y = int(rng.integers(-150, slide_shape[0] + 20))
        want = _brute_fraction(mask, d, slide_shape, x, y, int(w), int(h))
        assert tm.fraction(x, y, int(w), int(h)) == pytest.approx(want, abs=1e-9)
    assert tm.tissue_fraction == pytest.approx(
        _brute_fraction(mask, d, slide_shape, 0, 0, slide_shape[1], slide_shape[0])
    )


def test_fraction_with_fractional_downsample_is_area_exact() -> None:
    # d = 2.5: in half-pixel units every mask pixel is a 5×5 block, so brute force is exact.
    rng = np.random.default_rng(2)
    mask = rng.random((20, 30)) > 0.5
    tm = TissueMask(mask, 2.5, None, (50, 75))
    xs, ys = rng.integers(-20, 80, 200), rng.integers(-20, 60, 200)
    ws, hs = rng.integers(1, 40, 200), rng.integers(1, 40, 200)
    got = tm.fractions(xs / 2, ys / 2, ws / 2, hs / 2)  # half-pixel rectangles
    for i in range(200):
        want = _brute_fraction(mask, 5, (100, 150), xs[i], ys[i], ws[i], hs[i])
        assert got[i] == pytest.approx(want, abs=1e-9)


def test_fraction_edge_cases() -> None:
    tm = TissueMask(np.ones((10, 10), bool), 8.0)
    assert tm.fraction(0, 0, 80, 80) == 1.0
    assert tm.fraction(-80, 0, 160, 80) == pytest.approx(0.5)  # half outside the slide
    assert tm.fraction(100, 100, 10, 10) == 0.0  # wholly outside
    assert tm.fraction(5, 5, 0, 10) == 0.0  # empty rectangle
    assert tm.level0_bbox() == (0, 0, 80, 80)
    with pytest.raises(WsiDetectError):
        TissueMask(np.ones((2, 2, 2), bool), 1.0)


def test_scalar_and_vectorised_fractions_agree() -> None:
    rng = np.random.default_rng(3)
    tm = TissueMask(rng.random((50, 40)) > 0.5, 3.7, 0.5, (183, 150))
    xs, ys = rng.uniform(-50, 200, 500), rng.uniform(-50, 230, 500)
    ws, hs = rng.uniform(0.5, 90, 500), rng.uniform(0.5, 90, 500)
    many = tm.fractions(xs, ys, ws, hs)
    one = [tm.fraction(*r) for r in zip(xs, ys, ws, hs, strict=True)]
    assert np.allclose(many, one, atol=1e-12)
