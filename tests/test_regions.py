"""Post-processing of the whole-slide map into regions (opening, threshold, components,
polygons with holes in level-0 px, scores)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon

from napari_wsi_detect.engine.plan import MapGeometry
from napari_wsi_detect.errors import WsiDetectError
from napari_wsi_detect.postprocess.regions import (
    _disk,
    binary_close_disk,
    binary_open_disk,
    extract_regions,
    hysteresis_mask,
    opening_radius_cells,
    slide_score,
)


def geom(rows=60, cols=80, mpp=0.25):
    # alpha = 2, d = 1: cells are 16 level-0 px; the slide is exactly rows x cols cells.
    return MapGeometry.for_slide((rows * 16, cols * 16), mpp, mpp, alpha=2)


def test_ring_gives_one_polygon_with_one_hole_and_the_right_area():
    g = geom()
    p = np.zeros(g.shape, np.float32)
    p[10:30, 20:50] = 0.9  # 20 x 30 cells
    p[15:25, 30:40] = 0.1  # 10 x 10 hole
    p[12, 22] = 0.97
    regions = extract_regions(p, g, threshold=0.5, opening_um=0)
    assert len(regions) == 1
    reg = regions[0]
    assert isinstance(reg.geometry, Polygon) and reg.geometry.is_valid
    assert len(reg.geometry.interiors) == 1
    cells = 20 * 30 - 10 * 10
    assert reg.n_cells == cells
    assert reg.area_um2 == pytest.approx(cells * (16 * 0.25) ** 2)
    # Edges follow cell boundaries in level-0 px.
    assert reg.bbox == (20 * 16, 10 * 16, 50 * 16, 30 * 16)
    hole = Polygon(reg.geometry.interiors[0])
    assert hole.bounds == (30 * 16, 15 * 16, 40 * 16, 25 * 16)
    # GeoJSON right-hand rule: outer ring counter-clockwise, hole clockwise (x, y axes).
    assert reg.geometry.exterior.is_ccw and not reg.geometry.interiors[0].is_ccw
    # Score = max probability, peak = centre of that cell in level-0 px.
    assert reg.max_prob == pytest.approx(0.97)
    assert (reg.peak_x, reg.peak_y) == g.cell_to_level0(12, 22) == (22.5 * 16, 12.5 * 16)
    outer, holes = reg.polygons[0]
    assert (outer[0] == outer[-1]).all() and len(holes) == 1


def test_opening_removes_single_cell_outliers_but_keeps_real_regions():
    g = geom()
    p = np.zeros(g.shape, np.float32)
    p[30:45, 10:25] = 0.8
    for r, c in [(5, 5), (50, 70), (20, 60)]:
        p[r, c] = 0.99  # isolated false positives
    assert len(extract_regions(p, g, opening_um=0)) == 4
    r1 = opening_radius_cells(8.0, g)  # 8 µm at 4 µm/cell = 2 cells
    assert r1 == 2
    kept = extract_regions(p, g, opening_um=8.0)
    assert len(kept) == 1 and kept[0].max_prob == pytest.approx(0.8)
    assert slide_score(p) == pytest.approx(0.99)  # the slide score is the raw map maximum


def test_threshold_changes_the_number_of_regions():
    g = geom()
    p = np.zeros(g.shape, np.float32)
    p[5:15, 5:15] = 0.6
    p[20:30, 20:30] = 0.75
    p[40:50, 40:50] = 0.95
    counts = [len(extract_regions(p, g, threshold=t, opening_um=0)) for t in (0.5, 0.7, 0.9)]
    assert counts == [3, 2, 1]
    regions = extract_regions(p, g, threshold=0.5, opening_um=0)
    assert [r.label for r in regions] == [1, 2, 3]
    assert [round(r.max_prob, 2) for r in regions] == [0.95, 0.75, 0.6]  # best first


def test_min_area_and_diagonal_touch_is_one_8_connected_region():
    g = geom()
    p = np.zeros(g.shape, np.float32)
    p[10:12, 10:12] = 0.9
    p[12:14, 12:14] = 0.9  # touches the first only at a corner
    regions = extract_regions(p, g, opening_um=0)
    assert len(regions) == 1 and isinstance(regions[0].geometry, MultiPolygon)
    assert regions[0].geometry.is_valid and regions[0].n_cells == 8
    assert extract_regions(p, g, opening_um=0, min_area_um2=8 * 16.0 + 1) == []


def test_polygons_are_clipped_to_the_slide_and_nan_is_not_positive():
    # 1000 x 1000 px slide: 63 x 63 cells, the last cell only 8 px wide.
    g = MapGeometry.for_slide((1000, 1000), 0.25, 0.25, alpha=2)
    p = np.full(g.shape, np.nan, np.float32)
    p[60:, 60:] = 0.9
    (reg,) = extract_regions(p, g, opening_um=0)
    assert reg.bbox == (960.0, 960.0, 1000.0, 1000.0)
    assert reg.area_um2 == pytest.approx(40 * 40 * 0.25**2)
    assert np.isnan(slide_score(np.full((3, 3), np.nan)))


def test_fast_opening_equals_scipy():
    rng = np.random.default_rng(0)
    for radius in (1, 2, 3, 5):
        m = rng.random((73, 91)) < 0.85
        np.testing.assert_array_equal(
            binary_open_disk(m, radius), ndi.binary_opening(m, structure=_disk(radius))
        )


def test_bad_inputs():
    g = geom()
    with pytest.raises(WsiDetectError, match="shape"):
        extract_regions(np.zeros((3, 3)), g)
    with pytest.raises(WsiDetectError, match="threshold"):
        extract_regions(np.zeros(g.shape), g, threshold=2)


def test_hysteresis_keeps_a_speckled_lesion_whole_and_never_seeds_weak_specks():
    # A 20 x 20-cell lesion whose map is speckled between 0.55 and 0.95 (a stain shift):
    # at a hard 0.7 threshold it shatters; grown down to 0.5 it is one region of its
    # full area. A separate patch that never reaches 0.7 stays out either way.
    g = geom()
    rng = np.random.default_rng(0)
    p = np.zeros(g.shape, np.float32)
    p[10:30, 10:30] = rng.choice([0.55, 0.95], size=(20, 20), p=[0.6, 0.4])
    p[40:50, 50:60] = 0.65  # weak everywhere: no seed
    hard = extract_regions(p, g, threshold=0.7, opening_um=0)
    grown = extract_regions(p, g, threshold=0.7, opening_um=0, hysteresis=0.2)
    assert len(hard) > 5
    assert len(grown) == 1
    assert grown[0].n_cells == 400
    assert grown[0].max_prob == pytest.approx(0.95)
    assert sum(r.n_cells for r in hard) < 400
    # 0 is the plain threshold, exactly.
    same = extract_regions(p, g, threshold=0.7, opening_um=0, hysteresis=0.0)
    assert [r.n_cells for r in same] == [r.n_cells for r in hard]
    # The mask: 8-connected growth, inclusive thresholds, NaN never positive.
    q = np.array([[0.7, 0.0, 0.5], [0.0, 0.5, 0.0], [np.nan, 0.0, 0.49]], np.float32)
    np.testing.assert_array_equal(
        hysteresis_mask(q, 0.7, 0.5),
        [[True, False, True], [False, True, False], [False, False, False]])
    with pytest.raises(WsiDetectError):
        extract_regions(p, g, threshold=0.7, hysteresis=1.5)


def test_fast_closing_equals_scipy_on_a_background_margin_and_keeps_every_cell():
    rng = np.random.default_rng(1)
    for radius in (1, 2, 4):
        m = rng.random((67, 83)) < 0.3
        m[:, 0] = True  # touching the map edge: the edge must not erode the closing
        ref = ndi.binary_closing(np.pad(m, radius), structure=_disk(radius))
        closed = binary_close_disk(m, radius)
        np.testing.assert_array_equal(closed, ref[radius:-radius, radius:-radius] | m)
        assert closed[m].all()
    np.testing.assert_array_equal(binary_close_disk(m, 0), m)


def test_closing_joins_the_fragments_of_one_lesion_but_not_two_lesions_far_apart():
    # A 30 x 30-cell lesion cut into 4 pieces by 2-cell-wide gaps (what a blurred scan
    # leaves), and a second lesion 20 cells away. Cells are 4 µm (16 px at 0.25 µm/px).
    g = geom()
    p = np.zeros(g.shape, np.float32)
    p[10:40, 10:40] = 0.9
    p[24:26, 10:40] = 0.3
    p[10:40, 24:26] = 0.3
    p[10:20, 60:70] = 0.8
    plain = extract_regions(p, g, threshold=0.5, opening_um=0)
    joined = extract_regions(p, g, threshold=0.5, opening_um=0, closing_um=8.0)
    assert len(plain) == 5
    assert len(joined) == 2
    big = max(joined, key=lambda r: r.n_cells)
    # The gaps are bridged and count in the area; where a gap meets the outline a
    # 2-cell notch stays (a disk from outside reaches into it): 4 mouths x 2 cells.
    assert big.n_cells == 900 - 8
    assert big.area_um2 == pytest.approx((900 - 8) * 16.0)
    assert big.max_prob == pytest.approx(0.9)
    assert isinstance(big.geometry, Polygon) and not big.geometry.interiors
    # 0 is no closing, exactly.
    same = extract_regions(p, g, threshold=0.5, opening_um=0, closing_um=0.0)
    assert [r.n_cells for r in same] == [r.n_cells for r in plain]
