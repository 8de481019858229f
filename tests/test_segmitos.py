"""SegMitos (issue 10): tiled inference = whole-field inference, concentric labels and loss,
blob post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_wsi_detect.models.segmitos import (
    HALO,
    OUTPUT_STRIDE,
    SegMitosFCN,
    TiledForward,
    pad_to_grid,
)
from napari_wsi_detect.postprocess.blobs import find_mitoses, holistic_otsu, otsu_from_histogram
from napari_wsi_detect.training.concentric import (
    FIXED,
    HARD,
    IGNORE,
    MITOSIS,
    concentric_label,
    concentric_loss,
    draw_radii,
)

WHITE = 2.0  # (1 - 0.5) / 0.25: white under the models' normalisation


def _net(seed: int = 0, variant: str = "8s") -> SegMitosFCN:
    torch.manual_seed(seed)
    net = SegMitosFCN(width=0.0625, variant=variant).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


def _tiled(net: SegMitosFCN, field: torch.Tensor, halo: int, cells: int) -> np.ndarray:
    """Stitch the field's map from ROIs of `cells`² cells read with `halo` px of context
    (white beyond the field), as the engine does."""
    _, _, h, w = field.shape
    rows, cols = h // OUTPUT_STRIDE, w // OUTPUT_STRIDE
    padded = torch.nn.functional.pad(field, (halo, halo + cells * 8, halo, halo + cells * 8),
                                     value=WHITE)
    fwd = TiledForward(net, halo)
    out = np.full((rows, cols), np.nan, np.float32)
    with torch.no_grad():
        for r0 in range(0, rows, cells):
            for c0 in range(0, cols, cells):
                n, m = min(cells, rows - r0), min(cells, cols - c0)
                y, x = r0 * OUTPUT_STRIDE, c0 * OUTPUT_STRIDE
                tile = padded[:, :, y:y + n * 8 + 2 * halo, x:x + m * 8 + 2 * halo]
                out[r0:r0 + n, c0:c0 + m] = fwd(tile)[0].numpy()
    return out


def _whole(net: SegMitosFCN, field: torch.Tensor, pad: int) -> np.ndarray:
    _, _, h, w = field.shape
    k = pad // OUTPUT_STRIDE
    x = torch.nn.functional.pad(field, (pad, pad, pad, pad), value=WHITE)
    with torch.no_grad():
        p = torch.softmax(net(pad_to_grid(x)), 1)[0, 1].numpy()
    return p[k:k + h // 8, k:k + w // 8]


@pytest.mark.parametrize("variant", ["8s", "32s"])
def test_tiled_inference_equals_whole_field_inference(variant) -> None:
    torch.manual_seed(1)
    net = _net(variant=variant)
    field = torch.randn(1, 3, 328, 392)  # 41 x 49 cells: ROIs of 8 cells leave ragged edges
    whole = _whole(net, field, HALO)  # the field padded with white, as the engine reads it
    tiled = _tiled(net, field, HALO, cells=8)
    assert np.isfinite(tiled).all()
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    # Without the white padding, the network's own zero padding changes the cells near
    # the field's border only: those at least HALO px inside it are the same.
    bare = _whole(net, field, 0)
    k = HALO // OUTPUT_STRIDE
    np.testing.assert_allclose(bare[k:-k, k:-k], whole[k:-k, k:-k], atol=2e-5)
    assert np.abs(bare - whole).max() > 1e-3  # ... and the border cells do differ


def test_a_halo_smaller_than_the_receptive_field_is_caught() -> None:
    torch.manual_seed(2)
    net = _net()
    field = torch.randn(1, 3, 256, 256)
    whole = _whole(net, field, HALO)
    for halo in (32, 96):
        tiled = _tiled(net, field, halo, cells=8)
        assert np.abs(tiled - whole).max() > 1e-3, f"halo {halo} went unnoticed"


def test_tiled_forward_refuses_an_input_without_cells() -> None:
    with pytest.raises(ValueError, match="halo"):
        TiledForward(_net())(torch.zeros(1, 3, 2 * HALO, 2 * HALO))
    with pytest.raises(ValueError, match="multiples of 32"):
        _net()(torch.zeros(1, 3, 100, 100))


# --- concentric labels and loss --------------------------------------------------------------
def test_concentric_label_disc_ring_background() -> None:
    lab = concentric_label((64, 64), np.array([[32, 32]]), np.array([5.0]), np.array([10.0]))
    assert lab[32, 32] == MITOSIS and lab[32, 37] == MITOSIS  # distance 5 = r: inside
    assert lab[32, 38] == IGNORE and lab[32, 41] == IGNORE  # 6..9: the ring
    assert lab[32, 42] == 0 and lab[0, 0] == 0  # >= R: background
    assert (lab == MITOSIS).sum() == sum(1 for y in range(64) for x in range(64)
                                         if (x - 32) ** 2 + (y - 32) ** 2 <= 25)


def test_a_figures_disc_wins_over_a_neighbours_ring_and_imposters_are_hard() -> None:
    lab = concentric_label((40, 80), np.array([[20, 20], [34, 20]]), np.array([4.0, 4.0]),
                           np.array([16.0, 16.0]), imposters=np.array([[70, 20]]),
                           imposter_radius=3)
    assert lab[20, 20] == MITOSIS and lab[20, 34] == MITOSIS  # inside each other's ring
    assert lab[20, 27] == IGNORE
    assert lab[20, 70] == HARD and lab[20, 74] == 0


def test_radii_follow_the_paper_and_scale_with_the_pixel_size() -> None:
    rng = np.random.default_rng(0)
    r, big = draw_radii(rng, 2000, "random")
    assert 10 <= r.min() and r.max() <= 17
    ratio = big / r
    assert 1.5 <= ratio.min() and ratio.max() <= 2.5
    r2, big2 = draw_radii(np.random.default_rng(0), 2000, "random", mpp=0.5)
    np.testing.assert_allclose(r2, r / 2)  # half as many px at 0.5 µm/px
    np.testing.assert_allclose(big2, big / 2)
    for name, (fr, fbig) in FIXED.items():
        r3, big3 = draw_radii(rng, 5, name)
        assert (r3 == fr).all() and (big3 == fbig).all()
    r4, big4 = draw_radii(np.random.default_rng(3), 400, "mixed")
    fixed = np.isin(r4, [12.0, 15.0]) & np.isin(big4, [24.0, 30.0])
    assert 0.3 < fixed.mean() < 0.7  # half fixed variants, half random
    with pytest.raises(ValueError, match="label mode"):
        draw_radii(rng, 1, "r20R40")


def test_concentric_loss_ignores_the_ring_and_counts_disc_and_background() -> None:
    lab = torch.from_numpy(concentric_label((32, 32), np.array([[16, 16]]), np.array([4.0]),
                                            np.array([9.0])))[None]
    perfect = torch.stack([(lab != MITOSIS).float(), (lab == MITOSIS).float()], 1) * 20 - 10
    assert float(concentric_loss(perfect, lab)) < 1e-6
    ring = (lab == IGNORE)[:, None].expand(-1, 2, -1, -1)
    changed = perfect.clone()
    changed[:, 1][ring[:, 1]] = 50.0  # the ring says "mitosis" loudly: no cost
    assert float(concentric_loss(changed, lab)) < 1e-6
    wrong = perfect.clone()
    wrong[0, :, 16, 16] = torch.tensor([10.0, -10.0])  # the figure's centre missed
    one = float(concentric_loss(wrong, lab))
    counted = int((lab != IGNORE).sum())
    assert one == pytest.approx(20.0 / counted, rel=1e-4)  # mean over counted pixels
    # coarse logits are upsampled to the label size
    assert concentric_loss(torch.zeros(1, 2, 4, 4), lab).item() == pytest.approx(np.log(2))


def test_hard_negative_pixels_weigh_more() -> None:
    lab = torch.zeros(1, 8, 8, dtype=torch.uint8)
    lab[0, :2] = HARD
    logits = torch.zeros(1, 2, 8, 8)
    logits[:, 1, :2] = 3.0  # predicts mitosis on the imposter
    base = float(concentric_loss(logits, lab, hard_weight=1.0))
    assert float(concentric_loss(logits, lab, hard_weight=3.0)) > base


# --- blobs -----------------------------------------------------------------------------------
def _geometry(rows: int, cols: int, slide_mpp: float = 0.25):
    from napari_wsi_detect.detectors.mitoses import geometry_for

    return geometry_for((rows * 8, cols * 8), slide_mpp, 0.25)


def _bump(shape, r, c, sigma, peak):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return peak * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma ** 2))


def test_blobs_are_found_at_their_centroids_and_filtered_by_score_and_area() -> None:
    shape = (200, 300)
    m = np.full(shape, 0.02, np.float32)
    m += _bump(shape, 50.0, 60.0, 2.0, 0.95)  # a strong figure
    m += _bump(shape, 150.0, 220.0, 2.0, 0.45)  # a weak one (mean score below 0.5)
    m += _bump(shape, 100.0, 150.0, 0.6, 0.95)  # a speck (area below a1)
    m = np.clip(m, 0, 1).astype(np.float32)
    g = _geometry(*shape)
    res = find_mitoses(m, g, min_score=0.0, min_area_um2=0.0, smoothing_um=0.0)
    assert res.candidates == 3 and len(res.mitoses) == 3
    strong = min(res.mitoses, key=lambda d: (d.x - 60.5 * 8) ** 2 + (d.y - 50.5 * 8) ** 2)
    assert strong.x == pytest.approx(60.5 * 8, abs=0.5)  # cell (50, 60)'s centre, level 0
    assert strong.y == pytest.approx(50.5 * 8, abs=0.5)
    assert strong.score > 0.5 and strong.area_um2 % 4 == pytest.approx(0)  # 2 µm cells
    kept = find_mitoses(m, g, min_score=0.4, min_area_um2=12.0, smoothing_um=0.0).mitoses
    assert len(kept) == 1 and kept[0] == strong
    assert all(d.to_dict()["x"] == round(d.x, 2) for d in kept)


def test_otsu_is_holistic_and_banded_processing_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    shape = (333, 180)
    m = np.clip(rng.normal(0.05, 0.02, shape), 0, 1).astype(np.float32)
    for _ in range(25):
        m += _bump(shape, rng.uniform(0, 333), rng.uniform(0, 180), 2.5, 0.9)
    m = np.clip(m, 0, 1).astype(np.float32)
    m[:40, :40] = np.nan  # not computed (no tissue)
    g = _geometry(*shape)
    one = find_mitoses(m, g, min_score=0.3, min_area_um2=8, smoothing_um=2.0,
                       band_rows=10_000, margin=10_000)
    banded = find_mitoses(m, g, min_score=0.3, min_area_um2=8, smoothing_um=2.0,
                          band_rows=17, margin=40)
    assert one.threshold == banded.threshold
    def rows(res):
        return np.array([(d.x, d.y, d.score, d.area_um2) for d in res.mitoses])

    assert len(one.mitoses) >= 15
    np.testing.assert_allclose(rows(banded), rows(one), rtol=1e-9)
    # the threshold is one for the whole map: a copy of the map's top part alone has another
    top = holistic_otsu(m[:60], 1.0)
    assert top != holistic_otsu(m, 1.0)


def test_otsu_from_histogram_matches_skimage() -> None:
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(1)
    x = np.clip(np.concatenate([rng.normal(0.1, 0.05, 5000), rng.normal(0.7, 0.1, 300)]), 0, 1)
    edges = np.linspace(0, 1, 1025)
    t = otsu_from_histogram(np.histogram(x, edges)[0], edges)
    assert abs(t - threshold_otsu(x)) < 2e-3
    assert otsu_from_histogram(np.zeros(4), np.linspace(0, 1, 5)) == 1.0  # empty: nothing


def test_an_empty_map_has_no_mitoses() -> None:
    g = _geometry(50, 50)
    res = find_mitoses(np.zeros((50, 50), np.float32), g, min_score=0.5, min_area_um2=10,
                       smoothing_um=2.0)
    assert res.mitoses == []
    res = find_mitoses(np.full((50, 50), np.nan, np.float32), g, min_score=0.5,
                       min_area_um2=10, smoothing_um=2.0)
    assert res.mitoses == []
