"""Augmentation: shape/dtype kept, deterministic per seed, no padding leaks, stain maths."""

from __future__ import annotations

import numpy as np

from napari_wsi_detect.training.augment import (
    RUIFROK_HED,
    AugmentConfig,
    augment,
    context_size,
    macenko_stain_matrix,
    stain_jitter,
)
from napari_wsi_detect.training.testing import synthetic_image


def _context(cfg, seed=0):
    s = context_size(cfg, 244)
    return synthetic_image((s, s), (s / 2, s / 2, s / 4, s / 3), seed=seed)


def test_shape_dtype_and_determinism():
    cfg = AugmentConfig()
    ctx = _context(cfg)
    a = augment(ctx, np.random.default_rng(3), cfg, 244)
    b = augment(ctx, np.random.default_rng(3), cfg, 244)
    c = augment(ctx, np.random.default_rng(4), cfg, 244)
    assert a.shape == (244, 244, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_geometry_never_samples_outside_the_context():
    # Strongest rotation, zoom out and shift on a uniform grey context: any padding would
    # show up as black pixels.
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, stain_sigma=0,
                        stain_bias=0)
    s = context_size(cfg, 244)
    ctx = np.full((s, s, 3), 128, np.uint8)
    for seed in range(20):
        out = augment(ctx, np.random.default_rng(seed), cfg, 244)
        assert out.min() == 128 and out.max() == 128


def test_no_op_config_is_a_centre_crop():
    cfg = AugmentConfig(max_shift=0, rotate90=False, max_angle=0, flip=False, scale=0,
                        brightness=0, contrast=0, saturation=0, hue=0, stain_sigma=0,
                        stain_bias=0)
    ctx = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    out = augment(ctx, np.random.default_rng(0), cfg, 244)
    np.testing.assert_array_equal(out, ctx[28:272, 28:272])


def test_stain_jitter_identity_and_direction():
    img = synthetic_image((64, 64), (32, 32, 20, 20)).astype(np.float64)
    same = stain_jitter(img, np.ones(2), np.zeros(2))
    np.testing.assert_allclose(same, img, atol=1e-6)
    more_h = stain_jitter(img, np.array([1.3, 1.0]), np.zeros(2))
    # More haematoxylin absorbs more red (H's largest OD component is red/green).
    assert more_h[..., 0].mean() < img[..., 0].mean()


def test_macenko_estimate():
    img = synthetic_image((128, 128), (64, 64, 40, 40))
    m = macenko_stain_matrix(img)
    assert m is not None and m.shape == (3, 3)
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-9)
    assert macenko_stain_matrix(np.full((64, 64, 3), 255, np.uint8)) is None
    assert RUIFROK_HED.shape == (3, 3)
    cfg = AugmentConfig(stain_matrix="macenko")
    out = augment(_context(cfg), np.random.default_rng(0), cfg, 244)
    assert out.shape == (244, 244, 3)
