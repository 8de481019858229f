"""Stain normalisation (stain.py): Macenko and Reinhard undo a stain shift, per pixel,
fitted once per slide; the metastasis detector's `stain_normalisation` option runs it,
records it in summary.json and in the store fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_wsi_detect.errors import WsiDetectError
from napari_wsi_detect.stain import (
    RUIFROK_HED,
    StainNormaliser,
    fit_reference,
    fit_slide,
    fit_stats,
)
from napari_wsi_detect.training.augment import stain_jitter
from napari_wsi_detect.training.testing import synthetic_image


def _pair():
    """An H&E-like image and the same tissue 'scanned elsewhere' (H ×1.3, E ×0.7)."""
    img = synthetic_image((256, 256), (128, 128, 80, 90), seed=2)
    shifted = stain_jitter(img.astype(np.float64), np.array([1.3, 0.7]), np.zeros(2),
                           RUIFROK_HED)
    return img, np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


def _err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_undoes_a_stain_shift(method):
    img, shifted = _pair()
    tissue = img.min(axis=2) < 220  # fitted on tissue, as fit_slide does (not the glass)
    ref, src = fit_stats(img[tissue], method), fit_stats(shifted[tissue], method)
    assert ref is not None and src is not None
    back = StainNormaliser(method, src, ref)(shifted)
    assert back.shape == img.shape and back.dtype == np.uint8
    before = _err(shifted[tissue], img[tissue])
    assert before > 6
    assert _err(back[tissue], img[tissue]) < 0.7 * before
    # Towards its own statistics an image hardly changes (a rounding at most).
    same = StainNormaliser(method, ref, ref)(img)
    assert _err(same, img) < 1.0
    # Per pixel: a crop normalised alone equals the crop of the normalised image, so
    # tiles agree at every seam.
    np.testing.assert_array_equal(StainNormaliser(method, src, ref)(shifted[40:90, 10:77]),
                                  back[40:90, 10:77])


def test_reinhard_matches_the_reference_statistics():
    img, shifted = _pair()
    tissue = img.min(axis=2) < 220
    ref = fit_stats(img[tissue], "reinhard")
    back = StainNormaliser("reinhard", fit_stats(shifted[tissue], "reinhard"), ref)(shifted)
    got = fit_stats(back[tissue], "reinhard")
    np.testing.assert_allclose(got["mean"], ref["mean"], atol=0.01)
    np.testing.assert_allclose(got["std"], ref["std"], rtol=0.1, atol=1e-3)


def test_fit_slide_needs_a_reference_and_stained_tissue(phantom_small):
    from napari_wsi_detect.slide import open_slide

    with open_slide(phantom_small) as slide:
        assert fit_slide(slide, None, "none", None) is None
        with pytest.raises(WsiDetectError, match="no macenko stain reference"):
            fit_slide(slide, None, "macenko", {"reinhard": {"mean": [0] * 3, "std": [1] * 3}})
        with pytest.raises(WsiDetectError, match="must be one of"):
            fit_slide(slide, None, "vahadane", None)
        ref = fit_reference([slide])
        assert set(ref) >= {"macenko", "reinhard"}
        norm = fit_slide(slide, None, "macenko", ref)
        assert isinstance(norm, StainNormaliser)
        # its own reference: the slide maps (almost) onto itself
        tile = slide.read_region(0, 1000, 1000, 200, 200)[..., :3]
        assert _err(norm(tile), tile) < 1.0
    assert fit_stats(np.full((50, 50, 3), 250, np.uint8), "macenko") is None


@pytest.fixture(scope="module")
def stain_model(tmp_path_factory, phantom_small):
    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN
    from napari_wsi_detect.slide import open_slide

    torch.manual_seed(0)
    with open_slide(phantom_small) as slide:
        ref = fit_reference([slide])
    # a reference darker than the slide: normalising towards it changes every tile
    ref["reinhard"]["mean"][0] -= 0.2
    ref["macenko"]["max_concentrations"] = [2 * v for v in ref["macenko"]["max_concentrations"]]
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(ScanNetFCN(width=1 / 16), path,
               {"mpp": 0.243, "name": "tiny-random", "stain_reference": ref})
    return path


def test_detector_option_runs_it_and_records_it(tmp_path, phantom_small, stain_model):
    from napari_wsi_detect.api import detect_metastases
    from napari_wsi_detect.engine.heatmap import open_heatmap

    region = (1152, 768, 768, 768)
    runs = {}
    for method in ("none", "reinhard"):
        out = tmp_path / method
        runs[method] = detect_metastases(phantom_small, model=stain_model, device="cpu",
                                         roi_cells=24, region=region, out=out,
                                         stain_normalisation=method, use_tissue=False)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["parameters"]["stain_normalisation"] == method
        assert open_heatmap(out / "heatmap.zarr").params["stain_normalisation"] == method
    stain = json.loads((tmp_path / "reinhard" / "summary.json").read_text())["slide"]["stain"]
    assert stain["method"] == "reinhard" and set(stain["slide"]) == {"mean", "std"}
    # The network saw other (darker) pixels: the map changed.
    a, b = runs["none"].heatmap, runs["reinhard"].heatmap
    assert np.nanmax(np.abs(a - b)) > 1e-3
    with pytest.raises(Exception, match="stain_normalisation must be one of"):
        detect_metastases(phantom_small, model=stain_model, device="cpu", roi_cells=24,
                          region=region, stain_normalisation="bogus")


def test_cli_flag(tmp_path, phantom_small, stain_model, capsys):
    from napari_wsi_detect.cli import main

    out = tmp_path / "cli"
    rc = main(["metastases", str(phantom_small), "--model", str(stain_model), "--out",
               str(out), "--device", "cpu", "--roi-cells", "24", "--region",
               "1152,768,384,384", "--stain-normalisation", "macenko", "--no-tissue-mask"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"]["stain_normalisation"] == "macenko"
    with pytest.raises(SystemExit):
        main(["metastases", str(phantom_small), "--stain-normalisation", "bogus"])
    assert "must be one of none, macenko, reinhard" in capsys.readouterr().err
