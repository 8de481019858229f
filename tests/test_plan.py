"""Map geometry and ROI plan: the package's coordinate conventions (engine/plan.py),
tested with impulses through the full plan -> read -> model -> stitch path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_wsi_detect.engine.plan import (
    MapGeometry,
    default_roi_cells,
    plan_rois,
)
from napari_wsi_detect.engine.run import run_heatmap, stitch
from napari_wsi_detect.engine.testing import ArraySlide, BoxModel, FractionMask
from napari_wsi_detect.errors import EmptyTissueError, WsiDetectError


def geom(h=1000, w=1200, alpha=2, slide_mpp=0.25, model_mpp=0.25):
    return MapGeometry.for_slide((h, w), slide_mpp, model_mpp, alpha=alpha)


def test_geometry_numbers_follow_the_paper():
    g = geom(alpha=2)
    assert (g.stride, g.offset, g.d) == (16, 114, 1.0)
    assert g.read_size(166) == 2884  # L'_r at alpha = 2 (METHODS Eq. 1)
    assert 166 * g.stride == 2656  # ROI stride S_r (Eq. 2)
    g1 = geom(alpha=1)
    assert (g1.stride, g1.offset, g1.read_size(83)) == (32, 106, 2868)
    assert g.shape == (math.ceil(1000 / 16), math.ceil(1200 / 16))
    assert default_roi_cells("cuda", 2) == 166
    assert geom(alpha=2).read_size(default_roi_cells("cpu", 2)) == 1892


def test_cell_level0_transforms_and_napari():
    g = geom(slide_mpp=0.25, model_mpp=0.5)  # d = 2 -> cells are 32 level-0 px
    assert g.d == 2.0 and g.cell_size0 == 32
    assert g.cell_to_level0(0, 0) == (16.0, 16.0)
    assert g.cell_to_level0(3, 5) == (5.5 * 32, 3.5 * 32)
    assert g.level0_to_cell(*g.cell_to_level0(3, 5)) == (3, 5)
    assert g.level0_to_cell(31.99, 32.0) == (1, 0)  # (x, y) in, (r, c) out
    # napari: slide layer scale mpp; heatmap cell c's centre at world (c*S*d + (S*d-1)/2)*mpp
    assert g.napari_scale() == (32 * 0.25, 32 * 0.25)
    assert g.napari_translate() == (15.5 * 0.25, 15.5 * 0.25)
    assert g.napari_scale(1.0) == (32.0, 32.0)
    assert MapGeometry.from_dict(g.to_dict()) == g


def test_unknown_slide_mpp_assumes_model_mpp_and_warns():
    with pytest.warns(UserWarning, match="no pixel size"):
        g = MapGeometry.for_slide((100, 100), None, 0.5, alpha=2)
    assert g.mpp_assumed and g.slide_mpp == 0.5 and g.d == 1.0


def test_d_snaps_near_whole_ratios():
    assert MapGeometry.for_slide((100, 100), 0.25, 0.243).d == 1.0
    assert MapGeometry.for_slide((100, 100), 0.243, 0.5).d == 2.0
    assert MapGeometry.for_slide((100, 100), 0.25, 0.4).d == pytest.approx(1.6)


def test_bad_alpha_is_refused():
    with pytest.raises(WsiDetectError, match="alpha"):
        geom(alpha=3)


def test_roi_windows_tile_the_map_edge_to_edge():
    g = geom(h=1000, w=1200, alpha=2)  # 63 x 75 cells
    rois = plan_rois((1000, 1200), g, roi_cells=20)
    assert len(rois) == 4 * 4
    cover = np.zeros(g.shape, int)
    for roi in rois:
        cover[roi.r0 : roi.r0 + roi.rows, roi.c0 : roi.c0 + roi.cols] += 1
        assert (roi.read_x, roi.read_y) == (roi.c0 * 16 - 114, roi.r0 * 16 - 114)
        assert roi.read_w == 244 + (roi.cols - 1) * 16
        assert roi.read_h == 244 + (roi.rows - 1) * 16
    assert (cover == 1).all()
    last = rois[-1]
    assert (last.rows, last.cols) == (63 - 60, 75 - 60)


def test_tissue_and_region_filter_rois():
    g = geom(h=640, w=640, alpha=2)  # 40 x 40 cells, T = 10 -> 4 x 4 ROIs of 160 px
    tissue = np.zeros((640, 640), bool)
    tissue[170:180, 500:510] = True  # only ROI block (1, 3)
    rois = plan_rois((640, 640), g, 10, tissue_mask=FractionMask(tissue))
    assert [(r.r0, r.c0) for r in rois] == [(10, 30)]
    rois = plan_rois((640, 640), g, 10, region=(150, 150, 20, 200))  # x 150-170, y 150-350
    assert {(r.r0, r.c0) for r in rois} == {(r, c) for r in (0, 10, 20) for c in (0, 10)}
    with pytest.raises(EmptyTissueError):
        plan_rois((640, 640), g, 10, tissue_mask=FractionMask(np.zeros((640, 640), bool)))
    with pytest.raises(WsiDetectError, match="outside"):
        plan_rois((640, 640), g, 10, region=(700, 0, 10, 10))


def _reference_map(dark: np.ndarray, g: MapGeometry) -> np.ndarray:
    """Patch-wise reference in model pixels (d = 1): mean darkness of each cell's patch,
    computed on the whole padded image, independently of the ROI machinery."""
    rows, cols = g.shape
    o, s, p = g.offset, g.stride, g.patch
    pad = np.pad(dark, ((o, p + rows * s), (o, p + cols * s)))  # outside = white = 0
    ii = np.pad(pad.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r = np.arange(rows)[:, None] * s
    c = np.arange(cols)[None, :] * s
    box = ii[r + p, c + p] - ii[r, c + p] - ii[r + p, c] + ii[r, c]
    return box / (p * p)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_impulses_light_exactly_their_cells_across_roi_borders(batch_size):
    g = geom(h=900, w=1100, alpha=2)  # 57 x 69 cells, S = 16, o = 114
    t = 8  # ROI borders between cells 7|8, 15|16, 23|24 ...
    rgb = np.full((900, 1100, 3), 255, np.uint8)
    # Impulse cells on the first/last row and column of ROIs and on ROI corners, at least
    # 16 cells apart (so no two dark squares overlap and only these patches are all dark).
    cells = [(8, 12), (15, 31), (24, 8), (31, 40), (40, 23), (47, 47), (8, 56), (24, 56)]
    for r, c in cells:
        x, y = c * 16 - 114, r * 16 - 114
        rgb[max(y, 0) : y + 244, max(x, 0) : x + 244] = 0
    slide = ArraySlide(rgb, mpp=0.25)
    rois = plan_rois((900, 1100), g, t)
    probs = stitch(run_heatmap(slide, BoxModel(16), g, rois, batch_size=batch_size), g)
    ref = _reference_map(1.0 - rgb.mean(axis=2) / 255.0, g)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    lit = {tuple(int(v) for v in rc) for rc in np.argwhere(probs > 1 - 1e-5)}
    assert lit == set(cells)


def test_impulse_edge_cell_is_partial_when_patch_leaves_the_slide():
    g = geom(h=300, w=300, alpha=2)
    rgb = np.full((300, 300, 3), 255, np.uint8)
    rgb[0:130, 0:130] = 0  # the in-slide part of cell (0, 0)'s patch
    slide = ArraySlide(rgb, mpp=0.25)
    probs = stitch(run_heatmap(slide, BoxModel(16), g, plan_rois((300, 300), g, 4)), g)
    assert probs[0, 0] == pytest.approx(130 * 130 / 244**2, abs=1e-5)
    assert probs.argmax() == 0


@pytest.mark.parametrize("extra_levels", [(), (1,)])
def test_impulse_with_model_at_twice_the_slide_mpp(extra_levels):
    # d = 2: one model pixel = 2x2 level-0 pixels; cells are 32 level-0 px.
    g = MapGeometry.for_slide((1200, 1400), 0.25, 0.5, alpha=2)
    assert g.d == 2.0 and g.shape == (38, 44)
    rgb = np.full((1200, 1400, 3), 255, np.uint8)
    cells = [(9, 10), (10, 29)]  # T = 10: (9, 10) sits on a ROI corner
    for r, c in cells:
        x, y = 2 * (c * 16 - 114), 2 * (r * 16 - 114)
        rgb[y : y + 488, x : x + 488] = 0
    slide = ArraySlide(rgb, mpp=0.25, extra_levels=extra_levels)
    probs = stitch(run_heatmap(slide, BoxModel(16), g, plan_rois((1200, 1400), g, 10)), g)
    lit = {tuple(int(v) for v in rc) for rc in np.argwhere(probs > 1 - 1e-5)}
    assert lit == set(cells)
    # The lit cell's centre is the dark square's centre in level-0 px.
    x, y = g.cell_to_level0(9, 10)
    assert (x, y) == (2 * (10 * 16 - 114) + 244, 2 * (9 * 16 - 114) + 244)
