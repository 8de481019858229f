"""Training data: tumour truth from annotation files, candidate sampling, patch reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from conftest import shared_file
from napari_wsi_detect.engine.plan import snap_downsample
from napari_wsi_detect.errors import AnnotationError
from napari_wsi_detect.training.patches import read_patch
from napari_wsi_detect.training.sampler import PatchSampler, candidates_from_masks
from napari_wsi_detect.training.slides import pair_annotations
from napari_wsi_detect.training.testing import MemorySlide, ellipse_polygon, synthetic_image
from napari_wsi_detect.training.truth import MaskTruth, load_truth

TUMOUR = (600.0, 500.0, 260.0, 200.0)


def _geojson(path, rings, name="Tumor"):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": "x", "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": {"objectType": "annotation",
                       "classification": {"name": name, "color": [255, 0, 0]}}}]}))
    return path


def _candidates(tmp_path):
    img = synthetic_image((1536, 1024), TUMOUR)
    tissue = (img.reshape(32, 32, 48, 32, 3).min(axis=(1, 3, 4)) < 250)
    ring = ellipse_polygon(*TUMOUR)
    truth = load_truth(_geojson(tmp_path / "t.geojson", [ring]))
    return candidates_from_masks("x.tif", 0.243, (1536, 1024), tissue, 32.0, truth), ring


def test_sampler_class_probabilities_and_exact_labels(tmp_path):
    cands, ring = _candidates(tmp_path)
    sampler = PatchSampler([cands], {"normal": 0.3, "tumour": 0.7})
    specs = sampler.draw(np.random.default_rng(1), 3000)
    kinds = np.array([s.kind for s in specs])
    assert abs((kinds == "tumour").mean() - 0.7) < 0.03
    labels = np.array([s.label for s in specs])
    pts = np.array([(s.x, s.y) for s in specs])
    # Independent point-in-polygon (matplotlib) agrees with the labels everywhere.
    expected = MplPath(np.array(ring)).contains_points(pts)
    assert (labels == expected).mean() > 0.998  # float ties on the outline only
    # The class drawn is the label almost always (jitter may cross a border).
    assert (labels[kinds == "tumour"] == 1).mean() > 0.97
    assert (labels[kinds == "normal"] == 0).mean() > 0.97
    # Centres lie on tissue: inside the tissue rectangle of the synthetic image.
    assert pts[:, 0].min() > 0.08 * 1536 - 32 and pts[:, 0].max() < 0.92 * 1536 + 32


def test_sampler_is_deterministic_and_renormalises_missing_classes(tmp_path):
    cands, _ = _candidates(tmp_path)
    sampler = PatchSampler([cands], {"normal": 0.5, "tumour": 0.25, "hard": 0.25})
    assert sampler.missing == ["hard"]
    assert sampler.class_probs == pytest.approx({"normal": 2 / 3, "tumour": 1 / 3})
    a = sampler.draw(np.random.default_rng(5), 50)
    b = sampler.draw(np.random.default_rng(5), 50)
    assert a == b
    hard = sampler.with_hard_negatives({0: np.array([[300.0, 300.0]])},
                                       {"normal": 0.5, "hard": 0.5})
    drawn = hard.draw(np.random.default_rng(0), 200)
    hs = [s for s in drawn if s.kind == "hard"]
    assert hs and all((s.x, s.y, s.label) == (300.0, 300.0, 0) for s in hs)


def test_geojson_holes_ncrf_and_mask_truth(tmp_path):
    outer = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    hole = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
    t = load_truth(_geojson(tmp_path / "h.geojson", [outer, hole]))
    assert t.contains(np.array([10, 50]), np.array([10, 50])).tolist() == [True, False]
    assert t.near(np.array([105.0]), np.array([50.0]), 10).tolist() == [True]
    ncrf = tmp_path / "n.json"
    ncrf.write_text(json.dumps({"positive": [{"name": "_0", "vertices": outer[:-1]}],
                                "negative": [{"name": "_2", "vertices": hole[:-1]}]}))
    t2 = load_truth(ncrf)
    assert t2.contains(np.array([10, 50]), np.array([10, 50])).tolist() == [True, False]
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 1
    mt = MaskTruth(mask, 16.0)
    assert mt.contains(np.array([40.0, 10.0]), np.array([40.0, 10.0])).tolist() == [True, False]
    assert mt.raster(16.0, (8, 8)).sum() == 4


def test_real_annotation_files_read(shared_data):
    asap = load_truth(shared_file("annotations/asap-format/asap-polygon.xml"))
    assert asap.contains(np.array([22850.0]), np.array([16640.0]))[0]
    ncrf = load_truth(shared_file("annotations/camelyon16-ncrf-json/Tumor_001.json"))
    assert not ncrf.is_empty and ncrf.geometry.area > 1e4


def test_bad_annotations_raise_annotation_error(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_truth(bad)
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        load_truth(_geojson(tmp_path / "x.txt", []))
    slide = tmp_path / "tumor_003.tif"
    slide.write_bytes(b"")
    with pytest.raises(AnnotationError, match="looks like a tumour slide"):
        pair_annotations([slide], [tmp_path])


def test_patch_resampled_from_a_coarser_slide():
    # Vertical stripes with a 20 px period on a 0.5 µm/px slide; the model is 0.243 µm/px.
    w = h = 600
    img = np.full((h, w, 3), 230, np.uint8)
    img[:, (np.arange(w) % 20) < 10] = 60
    slide = MemorySlide(img, mpp=0.5)
    patch = read_patch(slide, 300.0, 300.0, 244, 0.243)
    assert patch.shape == (244, 244, 3) and patch.dtype == np.uint8
    level, _, _, rw, rh = slide.calls[-1]
    # The engine reads a 0.5 µm/px slide for a 0.243 µm/px model at d = 0.5 (0.486 snapped
    # within 5 %, engine/plan.py); training must see the same scale: 244 · 0.5 = 122 px
    # (+1 px of interpolation support).
    d = snap_downsample(0.243 / 0.5)
    assert d == 0.5
    assert level == 0 and 122 <= rw <= 123 and 122 <= rh <= 123
    dark = patch[122, :, 0] < 145
    rising = np.flatnonzero(np.diff(dark.astype(int)) == 1)
    period = (rising[-1] - rising[0]) / (len(rising) - 1)
    assert period == pytest.approx(20 / d, rel=0.02)  # 40 model px, as at inference


def test_patch_at_the_models_mpp_is_a_plain_crop():
    img = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    slide = MemorySlide(img, mpp=0.243)
    patch = read_patch(slide, 200.0, 210.0, 244, 0.243)
    np.testing.assert_array_equal(patch, img[88:332, 78:322])
