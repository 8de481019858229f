"""Mitotic-count figures: the 2.37 mm² 4:3 hotspot, density, per 10 HPF."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_wsi_detect.errors import WsiDetectError
from napari_wsi_detect.postprocess.mitotic_count import (
    GRID_CELLS,
    HOTSPOT_MM2,
    Hotspot,
    density_per_mm2,
    hotspot,
    per_10_hpf,
    window_size_px,
)
from napari_wsi_detect.slide.tissue import TissueMask

MPP = 0.25


def brute_max(pts: np.ndarray, w: float, h: float, extent: tuple[float, float]) -> int:
    """Most points in any w x h half-open rectangle inside the extent: an optimal
    rectangle can be slid right/down until a point sits on its left and top edges (or
    it meets the slide's far edge)."""
    xs = np.unique(np.concatenate([np.minimum(pts[:, 0], extent[0] - w), [0.0]]))
    ys = np.unique(np.concatenate([np.minimum(pts[:, 1], extent[1] - h), [0.0]]))
    best = 0
    for x in xs:
        inx = (pts[:, 0] >= x) & (pts[:, 0] < x + w)
        sub = pts[inx, 1]
        for y in ys:
            best = max(best, int(np.count_nonzero((sub >= y) & (sub < y + h))))
    return best


def test_window_is_237_mm2_at_4_to_3():
    w, h = window_size_px(MPP)
    assert w / h == pytest.approx(4 / 3)
    assert w * h * MPP**2 * 1e-6 == pytest.approx(2.37)
    # 1777.6 µm x 1333.2 µm
    assert w * MPP == pytest.approx(1777.6, abs=0.1)
    assert h * MPP == pytest.approx(1333.2, abs=0.1)


def test_hotspot_finds_the_cluster_and_counts_exactly():
    rng = np.random.default_rng(1)
    extent = (80_000, 60_000)
    background = rng.uniform((0, 0), extent, size=(40, 2))  # ~1 per 3 windows
    cluster = rng.normal((50_000, 20_000), 800, size=(12, 2))
    pts = np.vstack([background, cluster])
    hs = hotspot(pts, MPP, extent)
    assert isinstance(hs, Hotspot)
    assert hs.x <= cluster[:, 0].min() and cluster[:, 0].max() < hs.x + hs.w
    assert hs.y <= cluster[:, 1].min() and cluster[:, 1].max() < hs.y + hs.h
    inside = ((pts[:, 0] >= hs.x) & (pts[:, 0] < hs.x + hs.w)
              & (pts[:, 1] >= hs.y) & (pts[:, 1] < hs.y + hs.h))
    assert hs.count == int(inside.sum()) >= 12
    assert hs.area_mm2 == pytest.approx(HOTSPOT_MM2, rel=1e-9)
    assert hs.w / hs.h == pytest.approx(4 / 3)
    assert 0 <= hs.x and hs.x + hs.w <= extent[0] and 0 <= hs.y and hs.y + hs.h <= extent[1]
    d = hs.to_dict()
    assert d["count"] == hs.count and d["per_10_hpf"] == pytest.approx(hs.count)


@pytest.mark.parametrize("seed", range(6))
def test_hotspot_count_is_within_one_grid_step_of_the_exact_maximum(seed):
    rng = np.random.default_rng(seed)
    extent = (30_000.0, 22_000.0)
    n = int(rng.integers(5, 60))
    centres = rng.uniform((0, 0), extent, size=(3, 2))
    pts = np.clip(centres[rng.integers(0, 3, n)] + rng.normal(0, 2500, (n, 2)),
                  0, np.array(extent) - 1e-3)
    hs = hotspot(pts, MPP, extent)
    w, h = window_size_px(MPP)
    cell = w / GRID_CELLS
    # The grid search finds at least the best window one cell smaller (always contained
    # in a grid-aligned window) and never more than the best window of its own size.
    assert brute_max(pts, w - cell, h - cell, extent) <= hs.count <= brute_max(pts, w, h, extent)


def test_no_points_on_the_slide_gives_none_and_outside_points_are_ignored():
    assert hotspot(np.zeros((0, 2)), MPP, (10_000, 10_000)) is None
    assert hotspot([(-5, 10), (20_000, 3)], MPP, (10_000, 10_000)) is None
    hs = hotspot([(100, 100), (-50, 100), (100, 10_500)], MPP, (20_000, 10_000))
    assert hs is not None and hs.count == 1


def test_slide_smaller_than_the_window_gives_the_whole_slide_with_its_area():
    extent = (4000, 3000)  # 1 mm x 0.75 mm: smaller than 1.78 x 1.33 mm
    hs = hotspot([(10, 10), (3999, 2999), (2000, 1500)], MPP, extent)
    assert (hs.x, hs.y) == (0, 0) and hs.w == pytest.approx(4000) and hs.h == pytest.approx(3000)
    assert hs.count == 3
    assert hs.area_mm2 == pytest.approx(4000 * 3000 * MPP**2 * 1e-6)
    assert hs.per_10_hpf == pytest.approx(3 * 2.37 / hs.area_mm2)


def test_huge_extent_keeps_the_window_size_in_bounded_memory():
    # 10 million px square: a whole-slide count grid would be 8e9 cells; tiles with
    # detections only are computed.
    extent = (10_000_000, 10_000_000)
    pts = np.array([(9_000_000 + 30 * i, 100_000 + 20 * i) for i in range(7)] + [(5, 5)])
    hs = hotspot(pts, MPP, extent)
    assert hs.count == 7
    assert hs.area_mm2 == pytest.approx(HOTSPOT_MM2, rel=0.05)


def test_tissue_mask_steers_away_from_windows_off_the_section():
    extent = (64_000, 32_000)
    ds = 64.0
    mask = np.zeros((500, 1000), bool)
    mask[:, 500:] = True  # right half is tissue
    tissue = TissueMask(mask, ds, MPP, slide_shape=(32_000, 64_000))
    off = np.array([(5_000 + 50 * i, 10_000 + 30 * i) for i in range(8)], float)  # left
    on = np.array([(50_000 + 50 * i, 20_000 + 30 * i) for i in range(5)], float)  # right
    pts = np.vstack([off, on])
    assert hotspot(pts, MPP, extent).count == 8  # without a mask: the denser cluster
    hs = hotspot(pts, MPP, extent, tissue=tissue)
    assert hs.count == 5 and hs.x >= 32_000 * 0.9
    assert hs.tissue_fraction is not None and hs.tissue_fraction >= 0.5
    # Equal counts: the one on tissue wins the tie.
    hs2 = hotspot(np.vstack([off[:5], on]), MPP, extent, tissue=tissue, min_tissue=0.0)
    assert hs2.count == 5 and hs2.x >= 30_000
    # No tissue anywhere: no window qualifies, so the count decides.
    empty = TissueMask(np.zeros((500, 1000), bool), ds, MPP, slide_shape=(32_000, 64_000))
    assert hotspot(pts, MPP, extent, tissue=empty).count == 8


def test_density_and_per_10_hpf():
    assert density_per_mm2(30, 12.0) == pytest.approx(2.5)
    assert math.isnan(density_per_mm2(3, 0.0))
    assert math.isnan(density_per_mm2(3, math.nan))
    assert per_10_hpf(12, 2.37) == pytest.approx(12)
    assert per_10_hpf(6, 1.185) == pytest.approx(12)
    assert per_10_hpf(10, 2.37, hpf_mm2=0.196) == pytest.approx(10 * 1.96 / 2.37)
    assert math.isnan(per_10_hpf(1, 0.0))


@pytest.mark.parametrize("bad", [0, -0.25, math.nan, math.inf])
def test_bad_pixel_size_is_refused(bad):
    with pytest.raises(WsiDetectError, match="pixel size"):
        hotspot([(1, 1)], bad, (100, 100))
    with pytest.raises(WsiDetectError, match="extent"):
        hotspot([(1, 1)], MPP, (0, 100))


def test_windows_across_tile_boundaries_are_found():
    # Tiles are 1024 window positions (~114k px at 0.25 µm/px) wide: put the densest
    # cluster right across the corner of four tiles, lesser ones inside tiles.
    w, _ = window_size_px(MPP)
    corner = 1024 * w / GRID_CELLS
    rng = np.random.default_rng(7)
    extent = (300_000.0, 250_000.0)
    pts = np.vstack([
        rng.normal((corner, corner), 900, (15, 2)),
        rng.normal((40_000, 200_000), 900, (9, 2)),
        rng.uniform((0, 0), extent, (30, 2)),
    ])
    hs = hotspot(pts, MPP, extent)
    assert hs.x < corner < hs.x + hs.w and hs.y < corner < hs.y + hs.h
    cell = w / GRID_CELLS
    _, h = window_size_px(MPP)
    assert brute_max(pts, w - cell, h - cell, extent) <= hs.count <= brute_max(pts, w, h, extent)


def test_the_window_is_centred_on_the_points_it_counts():
    pts = np.array([(20_000, 15_000), (20_200, 15_100), (19_900, 15_050)], float)
    hs = hotspot(pts, MPP, (60_000, 40_000))
    w, h = window_size_px(MPP)
    cx, cy = hs.x + hs.w / 2, hs.y + hs.h / 2
    mid_x, mid_y = (pts[:, 0].min() + pts[:, 0].max()) / 2, (pts[:, 1].min() + pts[:, 1].max()) / 2
    assert abs(cx - mid_x) <= 2 * w / GRID_CELLS and abs(cy - mid_y) <= 2 * w / GRID_CELLS
