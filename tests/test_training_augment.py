"""Augmentation: shape/dtype kept, deterministic per seed, no padding leaks, stain maths."""

from __future__ import annotations

import numpy as np

from napari_wsi_detect.training.augment import (
    RUIFROK_HED,
    AugmentConfig,
    augment,
    context_size,
    macenko_stain_matrix,
    rotate_stain_vectors,
    scanner_shift,
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


def test_scanner_shift_fields_off_keep_the_old_random_stream():
    # A config without the shift augmentations (every model before v3) must draw exactly
    # the numbers it always drew, so older runs resume and reproduce patch for patch.
    cfg = AugmentConfig(jpeg_prob=0.9)  # a shift field that does nothing while all are off
    assert not cfg.shift_on
    ctx = _context(cfg)
    rng = np.random.default_rng(5)
    out = augment(ctx, rng, cfg, 244)
    ref = np.random.default_rng(5)
    ref.integers(4), ref.random(2), ref.uniform(-1, 1), ref.uniform(-1, 1)
    ref.uniform(-1, 1, 2), ref.uniform(-1, 1, 2), ref.uniform(-1, 1, 2)
    ref.uniform(-1, 1, 3), ref.uniform(-1, 1)
    assert rng.random() == ref.random()
    np.testing.assert_array_equal(out, augment(ctx, np.random.default_rng(5),
                                               AugmentConfig(), 244))


def test_stain_strength_range_and_vector_rotation():
    base = dict(max_shift=0, rotate90=False, max_angle=0, flip=False, scale=0,
                brightness=0, contrast=0, saturation=0, hue=0, stain_sigma=0, stain_bias=0)
    ctx = _context(AugmentConfig(**base))
    plain = augment(ctx, np.random.default_rng(0), AugmentConfig(**base), 244)
    strong = AugmentConfig(**base, stain_strength_min=1.5, stain_strength_max=1.5)
    weak = AugmentConfig(**base, stain_strength_min=0.6, stain_strength_max=0.6)
    dark = augment(ctx, np.random.default_rng(0), strong, 244).astype(float)
    pale = augment(ctx, np.random.default_rng(0), weak, 244).astype(float)
    assert dark.mean() < plain.mean() - 5 < pale.mean() - 10
    turned = rotate_stain_vectors(RUIFROK_HED, np.array([10.0, 5.0]), np.array([0.3, 0.8]))
    np.testing.assert_allclose(np.linalg.norm(turned, axis=1), 1.0, atol=1e-12)
    angles = np.degrees(np.arccos(np.sum(turned[:2] * RUIFROK_HED[:2], axis=1)))
    np.testing.assert_allclose(angles, [10.0, 5.0], atol=0.5)
    np.testing.assert_array_equal(turned[2], RUIFROK_HED[2])
    rot = AugmentConfig(**base, stain_rotate_deg=15.0)
    hue_shifted = augment(ctx, np.random.default_rng(0), rot, 244).astype(float)
    assert np.abs(hue_shifted - plain).mean() > 1


def test_scanner_shift_blur_gamma_and_jpeg():
    img = synthetic_image((128, 128), (64, 64, 40, 40), seed=1).astype(np.float32)

    def sharpness(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.mean(axis=2), axis=1)).mean())

    np.testing.assert_array_equal(scanner_shift(img, 0.0, 1.0, 0), np.rint(img))
    assert sharpness(scanner_shift(img, 1.5, 1.0, 0)) < 0.7 * sharpness(img)
    assert scanner_shift(img, 0.0, 0.7, 0).mean() > img.mean() + 5  # gamma < 1 brightens
    jpeg = scanner_shift(img, 0.0, 1.0, 20)
    assert 0.5 < np.abs(jpeg - img).mean() < 10  # lossy, but the same picture
    cfg = AugmentConfig(stain_strength_min=0.6, stain_strength_max=1.5, stain_rotate_deg=8,
                        blur_sigma=1.5, gamma=0.25, jpeg_quality_min=40)
    ctx = _context(cfg)
    a = augment(ctx, np.random.default_rng(9), cfg, 244)
    np.testing.assert_array_equal(a, augment(ctx, np.random.default_rng(9), cfg, 244))
    assert a.shape == (244, 244, 3) and a.dtype == np.uint8
