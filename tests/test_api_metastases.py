"""detect_metastases end to end on a phantom slide with a random-weight small model, and
the `wsi-detect metastases` command."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from napari_wsi_detect.annotations.geojson import read_geojson
from napari_wsi_detect.annotations.qupath_check import check_qupath_geojson
from napari_wsi_detect.api import SUMMARY_KEYS, detect_metastases
from napari_wsi_detect.engine.heatmap import open_heatmap
from napari_wsi_detect.errors import CancelledError, ModelFileError

# Level-0 x, y, w, h in the middle of the phantom's tissue: ROI blocks (2..3) x (3..4) at
# T = 24 cells (384 level-0 px), so each test runs only a few small ROIs.
REGION = (1152, 768, 768, 768)


@pytest.fixture(scope="module")
def tissue(phantom_small):
    """The phantom's tissue mask without pen rejection (see test_default_tissue_mask...)."""
    from napari_wsi_detect.slide import open_slide
    from napari_wsi_detect.slide.tissue import compute_tissue_mask

    with open_slide(phantom_small) as slide:
        return compute_tissue_mask(slide, exclude_pen=False)


def test_default_tissue_mask_finds_the_phantom_tissue(phantom_small, model_file):
    # The whole pipeline with the default tissue mask, as a user runs it.
    res = detect_metastases(phantom_small, model=model_file, device="cpu", roi_cells=24,
                            region=(800, 800, 300, 300))
    assert res.timings["rois_computed"] >= 1


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN

    torch.manual_seed(0)
    net = ScanNetFCN(width=1 / 16)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(net, path, {"mpp": 0.243, "name": "tiny-random"})
    return path


def test_end_to_end_writes_the_three_outputs(tmp_path, phantom_small, model_file, tissue):
    out = tmp_path / "run"
    seen = []
    res = detect_metastases(phantom_small, model=model_file, alpha=2, device="cpu",
                            out=out, roi_cells=24, threshold=0.5, tissue_mask=tissue,
                            region=REGION,
                            progress=lambda d, t, e: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] == res.timings["rois_computed"]
    g = res.geometry
    assert res.heatmap.shape == g.shape == (int(np.ceil(3072 / 16)), int(np.ceil(4096 / 16)))
    computed = np.isfinite(res.heatmap)
    assert computed.any() and not computed.all()
    assert res.timings["rois_computed"] == 4  # 2 x 2 ROI blocks of 384 level-0 px
    assert res.slide_score == pytest.approx(float(np.nanmax(res.heatmap)))
    assert sorted(p.name for p in out.iterdir()) == [
        "heatmap.zarr", "maps.ome.zarr", "regions.geojson", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["region_count"] == len(res.regions)
    assert summary["model"]["name"] == "tiny-random"
    assert summary["parameters"]["roi_cells"] == 24 and summary["parameters"]["alpha"] == 2
    assert summary["slide"]["width"] == 4096 and summary["slide"]["mpp"] == pytest.approx(0.243)
    obj = json.loads((out / "regions.geojson").read_text())
    assert check_qupath_geojson(obj) == []
    assert len(read_geojson(out / "regions.geojson")) == len(res.regions)
    stored = open_heatmap(out)
    assert stored.complete and stored.geometry == g
    np.testing.assert_array_equal(stored.to_numpy(), res.heatmap)
    # Sliders: post-processing only.
    n_low = len(res.postprocess(threshold=0.0, opening_um=0))
    n_high = len(res.postprocess(threshold=1.0))
    assert n_high == 0 and n_low >= 1

    # Re-running into the same folder resumes the finished store: nothing recomputed.
    again = detect_metastases(phantom_small, model=model_file, device="cpu", out=out,
                              roi_cells=24, tissue_mask=tissue, region=REGION)
    assert again.timings["rois_computed"] == 0
    np.testing.assert_array_equal(again.heatmap, res.heatmap)


def test_cancel_keeps_a_resumable_partial_store(tmp_path, phantom_small, model_file, tissue):
    out = tmp_path / "run"
    cancel = threading.Event()
    with pytest.raises(CancelledError, match="resume"):
        detect_metastases(phantom_small, model=model_file, device="cpu", out=out,
                          roi_cells=24, cancel=cancel, tissue_mask=tissue, region=REGION,
                          progress=lambda d, t, e: cancel.set() if d >= 2 else None)
    assert (out / "heatmap.zarr.partial").is_dir() and not (out / "heatmap.zarr").exists()
    res = detect_metastases(phantom_small, model=model_file, device="cpu", out=out,
                            roi_cells=24, tissue_mask=tissue, region=REGION)
    assert res.timings["rois_resumed"] >= 2
    assert (out / "heatmap.zarr").is_dir() and not (out / "heatmap.zarr.partial").exists()


def test_region_and_demo_model(tmp_path, phantom_small, model_file, tissue):
    res = detect_metastases(phantom_small, model=model_file, device="cpu", roi_cells=24,
                            region=(800, 800, 300, 300), tissue_mask=tissue)
    assert res.timings["rois_computed"] == 1  # a 384-px ROI grid: one block holds it
    with pytest.raises(ModelFileError):
        detect_metastases(phantom_small, model="demo-that-does-not-exist", device="cpu")


def test_cli_metastases(tmp_path, phantom_small, model_file, monkeypatch, capsys):
    import napari_wsi_detect.slide.tissue as tissue_mod
    from napari_wsi_detect.cli import main

    # Independent of the default tissue mask's pen rejection (tested above).
    original = tissue_mod.compute_tissue_mask
    monkeypatch.setattr(tissue_mod, "compute_tissue_mask",
                        lambda slide, **kw: original(slide, exclude_pen=False))
    out = tmp_path / "cli"
    x, y, w, h = REGION
    rc = main(["metastases", str(phantom_small), "--model", str(model_file), "--device", "cpu",
               "--roi-cells", "24", "--region", f"{x},{y},{w},{h}", "--threshold", "0.5",
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "slide score:" in captured.out and "regions:" in captured.out
    assert (out / "summary.json").is_file() and (out / "regions.geojson").is_file()
    rc = main(["metastases", str(phantom_small), "--model", str(tmp_path / "nope.safetensors"),
               "--out", str(out)])
    assert rc == 2 and "model file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["metastases", str(phantom_small), "--region", "1,2,3", "--out", str(out)])
