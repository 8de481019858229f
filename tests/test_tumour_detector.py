"""The H2G-Net tumour detector: stage-1 forward, refinement maps, mask → contours with
holes, outputs and the `wsi-detect tumour` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_wsi_detect.detectors import get_detector
from napari_wsi_detect.detectors.tumour_refine import dice, refine_input, segment
from napari_wsi_detect.engine.plan import MapGeometry


def _geometry(rows: int = 30, cols: int = 40) -> MapGeometry:
    return MapGeometry.for_slide((rows * 1024, cols * 1024), 0.25, 1.0, alpha=1, patch=256,
                                 model_stride=256)


def test_segment_gives_contours_with_holes_and_the_mask_they_come_from(tmp_path) -> None:
    from napari_wsi_detect.annotations.geojson import write_geojson

    g = _geometry()
    prob = np.zeros(g.shape, np.float32)
    prob[5:20, 5:25] = 0.9
    prob[10:14, 12:16] = 0.1  # a hole
    prob[25:27, 30:32] = 0.8  # a small island
    regions, mask = segment(prob, g, 0.5, 0.0)
    assert mask.sum() == 15 * 20 - 16 + 4
    assert len(regions) == 2
    big = max(regions, key=lambda r: r.area_um2)
    (outer, holes), = big.polygons
    assert len(holes) == 1
    cell_um2 = (g.cell_size0 * g.slide_mpp) ** 2
    assert big.area_um2 == pytest.approx((300 - 16) * cell_um2)
    # minimum area drops the island from both the regions and the mask
    regions, mask = segment(prob, g, 0.5, 5 * cell_um2)
    assert len(regions) == 1 and mask.sum() == 300 - 16
    feats = get_detector("tumour").features(
        get_detector("tumour").postprocess(prob, g, {"threshold": 0.5, "min_area_um2": 0.0,
                                                     "refine": 1}))
    write_geojson(tmp_path / "t.geojson", feats)
    geo = json.loads((tmp_path / "t.geojson").read_text())["features"]
    assert all(f["properties"]["classification"]["name"] == "Tumor" for f in geo)
    assert any(len(f["geometry"]["coordinates"]) == 2 for f in geo
               if f["geometry"]["type"] == "Polygon")  # outer ring + one hole


def test_postprocess_uses_the_refined_map_unless_told_not_to() -> None:
    from dataclasses import replace

    from napari_wsi_detect.engine.maps import MapLayer

    det = get_detector("tumour")
    g = _geometry(4, 6)
    heat = np.zeros(g.shape, np.float32)
    heat[1:3, 1:3] = 0.9
    rg = replace(g, alpha=8)
    fine = np.zeros(rg.shape, np.float32)
    fine[10:14, 10:14] = 0.95  # the refinement kept a smaller core
    tissue = np.ones(rg.shape, np.float32)
    maps = {"refined": MapLayer(fine, rg), "tissue": MapLayer(tissue, rg)}
    values = {"threshold": 0.5, "min_area_um2": 0.0, "refine": 1}
    refined = det.postprocess(heat, g, values, maps=maps)
    stage1 = det.postprocess(heat, g, {**values, "refine": 0}, maps=maps)
    cell_mm2 = (g.cell_size0 * g.slide_mpp / 1000) ** 2
    assert stage1.extra["tumour_area_mm2"] == pytest.approx(4 * cell_mm2, rel=1e-3)
    assert refined.extra["tumour_area_mm2"] == pytest.approx(16 * cell_mm2 / 64, rel=1e-3)
    assert refined.extra["mask"].shape == rg.shape and refined.extra["refined"] is True
    assert stage1.extra["mask"].shape == g.shape and stage1.extra["refined"] is False
    assert refined.extra["tissue_fraction"] == pytest.approx(1 / 96, abs=1e-4)  # rounded
    assert "mm²" in det.headline(refined)
    # no refined map (a cancelled run): stage 1, said so
    assert det.postprocess(heat, g, values, maps={}).extra["refined"] is False


def test_refinement_input_is_rgb_in_0_1_and_the_heatmap_resized() -> None:
    img = np.full((30, 40, 3), 255, np.uint8)
    img[:, :20] = (100, 50, 150)
    heat = np.array([[0.0, 1.0], [0.0, np.nan]], np.float32)
    x = refine_input(img, heat, 64)
    assert x.shape == (4, 64, 64) and x.min() >= 0 and x.max() <= 1
    assert x[0, 32, 5] == pytest.approx(100 / 255, abs=1e-3)
    assert x[3, 5, 60] == pytest.approx(1.0, abs=1e-3) and x[3, 60, 60] < 0.1  # NaN → 0
    assert dice(np.eye(3, dtype=bool), np.eye(3, dtype=bool)) == 1.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from napari_wsi_detect.models.h2g import H2GNet
    from napari_wsi_detect.models.io import save_model

    torch.manual_seed(1)
    net = H2GNet(width=0.1, unet_width=2, refine_size=64, patch=64)
    return save_model(net, tmp_path_factory.mktemp("tumour-model") / "m",
                      {"mpp": 0.972, "task": "tumour"})[1]


def test_cli_writes_mask_store_geojson_and_summary(phantom_small, tiny_model, tmp_path
                                                   ) -> None:
    from napari_wsi_detect.engine.heatmap import open_heatmap
    from napari_wsi_detect.engine.maps import read_maps

    out = tmp_path / "run"
    cli = Path(sys.executable).with_name("wsi-detect")
    done = subprocess.run([str(cli), "tumour", str(phantom_small), "--model", str(tiny_model),
                           "--out", str(out), "--device", "cpu", "--threshold", "0.3",
                           "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "tumour" and summary["complete"] is True
    assert summary["refined"] is True and summary["tumour_area_mm2"] >= 0
    assert 0 <= summary["tumour_fraction_of_tissue"] <= 1
    assert summary["parameters"]["threshold"] == 0.3
    gj = json.loads((out / "tumour.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    store = open_heatmap(out)
    maps = read_maps(store)
    assert set(maps) == {"refined", "tissue"}
    g, rg = store.geometry, maps["refined"].geometry
    assert g.cell_size0 == pytest.approx(rg.cell_size0 * rg.alpha)  # a finer grid ...
    assert rg.shape[0] * rg.cell_size0 >= g.height0  # ... covering the slide
    assert maps["refined"].values.shape == rg.shape
    assert np.isfinite(maps["refined"].values).all()
    # reopening the run folder (the widget's Open run) gets the refinement back
    from napari_wsi_detect._napari.run_files import load_run

    again = load_run(out, None, (g.height0, g.width0))
    assert again.detections.extra["refined"] is True
    assert again.detections.extra["tumour_area_mm2"] == pytest.approx(
        summary["tumour_area_mm2"], abs=1e-4)
    bad = subprocess.run([str(cli), "tumour", str(phantom_small), "--model", str(tiny_model),
                          "--out", str(tmp_path / "x"), "--refine", "2"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "refine" in bad.stderr


def test_segment_tumour_api_refines_and_its_slider_shows_stage_1(phantom_small, tiny_model
                                                                 ) -> None:
    """The public `segment_tumour`: a refined result, and `refine=0` on the slider gives
    stage 1 alone without running a network."""
    from napari_wsi_detect import segment_tumour

    result = segment_tumour(str(phantom_small), model=str(tiny_model), device="cpu",
                            threshold=0.3, region=(0, 0, 2048, 2048))
    assert result.task == "tumour" and result.detections.extra["refined"] is True
    assert result.parameters["threshold"] == 0.3
    result.postprocess(refine=0)
    assert result.detections.extra["refined"] is False
