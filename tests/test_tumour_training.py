"""H2G-Net training: hierarchical sampler, patch labels, CWCE, clusters, augmentation,
exact resume."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from napari_wsi_detect.training.tumour_data import (
    HierarchicalSampler,
    PatchAugment,
    RefineAugment,
    TumourSlide,
    augment_patch,
    augment_refine,
    candidates_from_fractions,
    patch_fractions,
)


def _slide(name: str, group: str, n_normal: int, n_tumour: int) -> TumourSlide:
    return TumourSlide(name, group, 1.0, (1000, 1000), 10.0, (100, 100),
                       (np.arange(n_normal, dtype=np.int64),
                        np.arange(5000, 5000 + n_tumour, dtype=np.int64)))


def test_sampler_is_uniform_over_groups_then_slides_then_classes() -> None:
    # Group A: 3 slides, one of them without tumour and one huge; group B: 1 slide.
    slides = [_slide("a1", "A", 10, 10), _slide("a2", "A", 100000, 0),
              _slide("a3", "A", 50, 5), _slide("b1", "B", 5, 500)]
    s = HierarchicalSampler(slides)
    draws = s.draw(np.random.default_rng(0), 24000)
    by_slide = Counter(s.slides[d.slide].path for d in draws)
    n = len(draws)
    assert by_slide["b1"] / n == pytest.approx(0.5, abs=0.015)  # groups first
    for name in ("a1", "a2", "a3"):
        assert by_slide[name] / n == pytest.approx(1 / 6, abs=0.015)  # then slides
    per_class = Counter((s.slides[d.slide].path, d.label) for d in draws)
    assert per_class[("a2", 1)] == 0  # a slide without tumour gives only non-tumour
    for name in ("a1", "a3", "b1"):  # then classes, whatever the candidate counts
        assert per_class[(name, 1)] / by_slide[name] == pytest.approx(0.5, abs=0.04)
    # then patches: uniform over a class's cells (a3 has 5 tumour cells)
    cells = Counter(int(d.y // 10) * 100 + int(d.x // 10) for d in draws
                    if s.slides[d.slide].path == "a3" and d.label == 1)
    assert len(cells) == 5 and max(cells.values()) / min(cells.values()) < 1.4


def test_draws_lie_inside_their_cell_and_repeat_with_the_seed() -> None:
    s = HierarchicalSampler([_slide("a", "A", 3, 3)])
    a = s.draw(np.random.default_rng(5), 50)
    assert a == s.draw(np.random.default_rng(5), 50)
    for d in a:
        flat = int(d.y // 10) * 100 + int(d.x // 10)
        assert flat in set(s.slides[0].candidates[d.label].tolist())


def test_patch_labels_follow_the_25_percent_rule() -> None:
    tissue = np.ones((40, 40), bool)
    tumour = np.zeros((40, 40), bool)
    tumour[:, :20] = True  # left half tumour
    t_frac, u_frac = patch_fractions(tissue, tumour, 8)
    normal, tum = candidates_from_fractions(t_frac, u_frac)
    cols_t = set((tum % 40).tolist())
    cols_n = set((normal % 40).tolist())
    # an 8-cell patch centred on column c covers [c-4, c+4): > 25 % tumour up to c ≈ 21,
    # no tumour from c = 24; columns in between (mixed) are never drawn
    assert max(cols_t) in (21, 22) and min(cols_n) == 24
    assert not cols_t & cols_n
    assert not ({22, 23} & cols_n)


def test_cwce_is_the_macro_average_of_per_cluster_cross_entropy() -> None:
    import torch
    import torch.nn.functional as F

    from napari_wsi_detect.training.cwce import cwce_loss

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0], [0.5, 0.2]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    clusters = torch.tensor([4, 4, 4, 7, 9])
    ce = F.cross_entropy(logits, labels, reduction="none")
    want = (ce[:3].mean() + ce[3] + ce[4]) / 3  # clusters 4, 7, 9 weigh the same
    assert float(cwce_loss(logits, labels, clusters)) == pytest.approx(float(want), rel=1e-6)
    assert float(cwce_loss(logits, labels, clusters)) != pytest.approx(float(ce.mean()))
    # one cluster only = plain cross-entropy
    same = torch.zeros(5, dtype=torch.long)
    assert float(cwce_loss(logits, labels, same)) == pytest.approx(float(ce.mean()), rel=1e-6)


def test_clusters_keep_95_percent_of_the_variance_and_find_the_groups() -> None:
    from napari_wsi_detect.training.cwce import ClusterModel, fit_clusters, pca_components

    rng = np.random.default_rng(0)
    # 3 directions of large variance, 7 of tiny variance: PCA keeps 3
    z = rng.normal(size=(500, 10)) * np.array([10, 8, 6] + [0.1] * 7)
    comps, explained = pca_components(z, 0.95)
    assert comps.shape == (10, 3) and explained >= 0.95
    centres = rng.normal(size=(4, 6)) * 20
    feats = np.concatenate([c + rng.normal(size=(60, 6)) for c in centres])
    model = fit_clusters(feats, k=4, variance=0.95, seed=1)
    ids = model.assign(feats).reshape(4, 60)
    assert all(len(set(row.tolist())) == 1 for row in ids)  # each blob one cluster
    assert len({row[0] for row in ids.tolist()}) == 4
    again = ClusterModel.from_dict(model.to_dict())
    assert np.array_equal(again.assign(feats), model.assign(feats))


def test_patch_augmentation_is_deterministic_and_changes_colour_within_bounds() -> None:
    rng0 = np.random.default_rng(3)
    img = rng0.integers(60, 200, (32, 32, 3)).astype(np.uint8)
    a = augment_patch(img, np.random.default_rng(1), PatchAugment())
    b = augment_patch(img, np.random.default_rng(1), PatchAugment())
    assert np.array_equal(a, b) and a.shape == img.shape
    plain = augment_patch(img, np.random.default_rng(1),
                          PatchAugment(hsv_shift=0, brightness=0))
    # geometry only: the same pixels, rearranged
    assert sorted(plain.reshape(-1, 3).tolist()) == sorted(img.reshape(-1, 3).tolist())


def test_refinement_augmentation_keeps_image_and_truth_aligned() -> None:
    s = 64
    x = np.zeros((4, s, s), np.float32)
    y = np.zeros((s, s), np.float32)
    x[:, 10:30, 20:50] = 1.0
    y[10:30, 20:50] = 1.0
    for seed in range(5):
        xa, ya = augment_refine(x, y, np.random.default_rng(seed),
                                RefineAugment(stain_sigma=0, stain_bias=0, heat_gamma=0),
                                32)
        assert xa.shape == (4, 32, 32) and ya.shape == (32, 32)
        assert np.array_equal(xa[3] > 0.5, ya > 0.5)
    # the heatmap gamma changes levels, never where the map is 0 or 1
    flat = np.zeros((4, s, s), np.float32)
    flat[3, :, 32:] = 1.0
    flat[3, :, 16:32] = 0.5
    xa, _ = augment_refine(flat, y, np.random.default_rng(2),
                           RefineAugment(flip=False, rotate90=False, zoom=0, stain_sigma=0,
                                         stain_bias=0), s)
    assert set(np.unique(xa[3][:, :16])) == {0.0} and set(np.unique(xa[3][:, 32:])) == {1.0}
    assert abs(float(xa[3][0, 20]) - 0.5) > 0.01  # γ ≠ 1 was drawn for this seed


@pytest.fixture(scope="module")
def tiny_slides(tmp_path_factory):
    from napari_wsi_detect.training.testing import write_training_slide

    root = tmp_path_factory.mktemp("tumour-train")
    (root / "g1").mkdir()
    (root / "g2").mkdir()
    a, _ = write_training_slide(root / "g1" / "a.tif", (1536, 1024), (600, 500, 300, 260),
                                mpp=0.25, seed=1)
    b, _ = write_training_slide(root / "g2" / "b.tif", (1536, 1024), (900, 450, 320, 240),
                                mpp=0.25, seed=2)
    return [str(a), str(b)]


def _cfg(**kw):
    from napari_wsi_detect.training.tumour import TumourTrainConfig

    base = dict(width=0.1, unet_width=2, refine_size=64, patch=64, warmup_steps=2, steps=2,
                refine_steps=2, batch_size=4, refine_batch_size=2, refine_crop=32,
                cluster_patches=24, clusters=3, val_patches=8, workers=0, val_every=2,
                checkpoint_every=1, device="cpu", seed=3)
    base.update(kw)
    return TumourTrainConfig(**base)


def _losses(out):
    with open(out / "metrics.csv") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def test_resume_inside_the_cwce_stage_is_exact(tiny_slides, tmp_path) -> None:
    from safetensors.numpy import load_file

    from napari_wsi_detect.training.tumour import train_tumour

    a, b = tmp_path / "a", tmp_path / "b"
    ra = train_tumour(tiny_slides, a, _cfg(), progress=False, log=lambda m: None)
    train_tumour(tiny_slides, b, _cfg(), progress=False, log=lambda m: None, stop_after=3)
    assert (b / "clusters.json").is_file()  # the stage-2 clusters were made before the stop
    rb = train_tumour(tiny_slides, b, _cfg(), resume=True, progress=False,
                      log=lambda m: None)
    assert ra.steps == rb.steps == 6
    assert _losses(a) == _losses(b)
    wa, wb = load_file(str(ra.model_path)), load_file(str(rb.model_path))
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    # the model loads as a tumour model
    from napari_wsi_detect.detectors import get_detector
    from napari_wsi_detect.models.io import load_config

    assert get_detector("tumour").model_problem(str(ra.config_path)) is None
    assert load_config(str(ra.config_path))["refine_size"] == 64
