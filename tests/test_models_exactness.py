"""The contract of Fast ScanNet: the anchor-layer network equals a patch classifier run on
every 244×244 patch at stride 32/α, and equals ScanNet's shift-and-stitch, to float
precision (METHODS §1). Random weights, non-square inputs, batch of 2.

WSI_DETECT_TEST_DEVICE=cuda runs every test here on the GPU (scripts/gpu_check.sh), in
true fp32: TF32 off, as the runner does for every exact forward (models.device.fp32_exact).
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F

from napari_wsi_detect.models.anchor import (
    classify_patches,
    densify,
    input_size,
    layer_plan,
    output_size,
    patchwise,
    shift_and_stitch,
)
from napari_wsi_detect.models.device import fp32_exact, resolve_device
from napari_wsi_detect.models.scannet import PATCH, STRIDE, ScanNetFCN

DEVICE = resolve_device(os.environ.get("WSI_DETECT_TEST_DEVICE", "cpu"))

TOL = 1e-5  # max abs difference of tumour probabilities, float32
# Non-square and not a whole number of stride-32 steps in height (the +16).
H, W = 244 + 32 * 3 + 16, 244 + 32 * 5


@pytest.fixture(autouse=True)
def _exact_math():
    with fp32_exact(DEVICE):
        yield


def _model(width: float, seed: int = 0) -> ScanNetFCN:
    torch.manual_seed(seed)
    model = ScanNetFCN(width=width).eval().to(DEVICE)
    # Random weights give logits of both classes that move together, so probabilities
    # hug 0.5 and a wrong answer would differ by little. Spread the class logits so the
    # probabilities cover (0, 1) and the comparison can fail.
    with torch.no_grad():
        model.head[-1].weight.mul_(8.0)
    return model


def _image(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    """Smooth random texture (features ~16 px) plus noise: neighbouring patches differ."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, h // 16 + 2, w // 16 + 2, generator=g)
    smooth = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (smooth + 0.2 * torch.randn(n, 3, h, w, generator=g)).to(DEVICE)


@pytest.fixture(scope="module")
def small_model() -> ScanNetFCN:
    return _model(1 / 16)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return _image(2, H, W)


def test_probabilities_are_spread(small_model, image):
    # Guard for the tests below: if all probabilities were ~equal, "equal to 1e-5" would
    # prove little.
    p = densify(small_model, 2)(image)
    assert p.max() - p.min() > 0.3


@pytest.mark.parametrize("alpha", [1, 2])
def test_dense_equals_patchwise_all_patches(small_model, image, alpha):
    with torch.no_grad():
        dense = densify(small_model, alpha)(image)
    ref = patchwise(small_model, image, STRIDE // alpha)
    assert dense.shape == ref.shape == (2, output_size(H, alpha), output_size(W, alpha))
    assert (dense - ref).abs().max().item() < TOL


@pytest.mark.parametrize("alpha", [4, 8])
def test_dense_equals_patchwise_sampled_patches(small_model, image, alpha):
    # Every patch at stride 8 or 4 would take too long; 40 random cells, always
    # including the four corners (the places an off-by-one shows first).
    with torch.no_grad():
        dense = densify(small_model, alpha)(image)
    hm, wm = dense.shape[1:]
    assert (hm, wm) == (output_size(H, alpha), output_size(W, alpha))
    rng = random.Random(alpha)
    cells = {(0, 0), (0, wm - 1), (hm - 1, 0), (hm - 1, wm - 1)}
    while len(cells) < 40:
        cells.add((rng.randrange(hm), rng.randrange(wm)))
    cells = sorted(cells)
    s = STRIDE // alpha
    ref = classify_patches(small_model, image, [(r * s, c * s) for r, c in cells])
    ref = ref.to(DEVICE)  # classify_patches collects on the CPU
    got = torch.stack([dense[:, r, c] for r, c in cells], dim=1)
    assert (got - ref).abs().max().item() < TOL


@pytest.mark.parametrize("alpha", [1, 2, 4, 8])
def test_dense_equals_shift_and_stitch(small_model, image, alpha):
    if alpha == 8:  # 64 FCN runs: a smaller (still non-square) input keeps it fast
        image = image[:1, :, : input_size(11, 8), : input_size(14, 8)]
    with torch.no_grad():
        dense = densify(small_model, alpha)(image)
    stitched = shift_and_stitch(small_model, image, alpha)
    assert dense.shape == stitched.shape
    assert (dense - stitched).abs().max().item() < TOL


def test_full_width_vgg16_dense_equals_patchwise():
    # Full VGG16 channel counts (~18 M parameters), on the smallest input that has
    # patches at both a stride-32 and an in-between position: 2 × 2 cells at α = 2.
    model = _model(1.0, seed=3)
    x = _image(1, input_size(2, 2), input_size(2, 2), seed=4)
    with torch.no_grad():
        dense = densify(model, 2)(x)
    ref = patchwise(model, x, 16)
    assert dense.shape == ref.shape == (1, 2, 2)
    assert (dense - ref).abs().max().item() < TOL
    assert (dense - shift_and_stitch(model, x, 2)).abs().max().item() < TOL


# --- negative controls: the comparison above can fail --------------------------------


def test_wrong_dilation_is_caught(small_model, image):
    dense = densify(small_model, 2)
    # Forget to rarefy the filters after the anchor pool (dilation 1 instead of 2).
    dense._plan = [(layer, stride, 1) for layer, stride, _ in layer_plan(small_model, 2)]
    with torch.no_grad():
        wrong = dense(image)
    ref = patchwise(small_model, image, 16)
    h, w = min(wrong.shape[1], ref.shape[1]), min(wrong.shape[2], ref.shape[2])
    assert (wrong[:, :h, :w] - ref[:, :h, :w]).abs().max().item() > 100 * TOL


def test_one_pixel_shift_is_caught(small_model, image):
    with torch.no_grad():
        dense = densify(small_model, 2)(image[..., :-1, :-1])
    shifted = patchwise(small_model, image[..., 1:, 1:], 16)
    assert (dense - shifted).abs().max().item() > 100 * TOL


# --- geometry --------------------------------------------------------------------------


def test_paper_roi_sizes():
    assert output_size(2868, 1) == 83  # Table I
    assert output_size(2884, 2) == 166  # METHODS: L'_r = 2868 + 16
    assert input_size(83, 1) == 2868
    assert input_size(166, 2) == 2884
    assert input_size(1, 4) == PATCH
    for alpha in (1, 2, 4, 8):
        for cells in (1, 2, 7, 83):
            assert output_size(input_size(cells, alpha), alpha) == cells
            # one pixel short of the last patch loses that cell
            assert output_size(input_size(cells, alpha) - 1, alpha) == cells - 1


def test_single_patch_gives_single_cell(small_model):
    x = _image(1, PATCH, PATCH)
    assert small_model(x).shape == (1, 2, 1, 1)
    with pytest.raises(ValueError, match="smaller than one 244"):
        small_model(x[..., :-1, :])
    for alpha in (1, 2, 4, 8):
        assert densify(small_model, alpha)(x).shape == (1, 1, 1)


def test_impulse_reaches_exactly_its_patches(small_model):
    """Change one input pixel: exactly the cells whose 244 px patch covers it change."""
    alpha, s = 2, 16
    x = _image(1, input_size(9, alpha), input_size(9, alpha), seed=5)
    y = x.clone()
    py, px = 150, 260
    y[..., py, px] += 50.0
    with torch.no_grad():
        dense = densify(small_model, alpha)
        changed = ((dense(y) - dense(x)).abs() > 0)[0].cpu()
    rows = torch.arange(changed.shape[0]) * s
    cols = torch.arange(changed.shape[1]) * s
    covers = ((rows <= py) & (py < rows + PATCH))[:, None] & (
        (cols <= px) & (px < cols + PATCH)
    )[None, :]
    assert torch.equal(changed, covers)


def test_bad_alpha_is_refused(small_model):
    with pytest.raises(ValueError, match="power of 2"):
        densify(small_model, 3)
