"""`wsi-detect demo` end to end with the bundled model, and the demo's overview PNG and
single-slide FROC with a random-weight model (fast: width 1/16, small phantoms)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

BUNDLED = (Path(__file__).resolve().parents[1] / "src" / "napari_wsi_detect" / "models"
           / "bundled" / "demo.safetensors")


@pytest.fixture(scope="module")
def tumour_phantom(tmp_path_factory) -> Path:
    """2048 x 1536 phantom with one micro-metastasis (a non-ITC lesion for the FROC)."""
    from napari_wsi_detect.phantom import write_phantom

    path = tmp_path_factory.mktemp("demo") / "tumor.tif"
    truth = write_phantom(path, seed=7, size=(2048, 1536),
                          lesions={"macro": 0, "micro": 1, "itc": 0})
    assert truth.counts()["micro"] == 1
    return path


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    import torch

    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN

    torch.manual_seed(0)
    weights, _ = save_model(ScanNetFCN(width=0.0625), tmp_path_factory.mktemp("m") / "rnd",
                            {"mpp": 0.243, "class_names": ["normal", "tumour"]})
    return weights


def _panel_means(png: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB of the central part of the left (thumbnail) and right (heatmap) panels."""
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    h, w, _ = img.shape
    rows = slice(int(h * 0.35), int(h * 0.65))
    left = img[rows, int(w * 0.15): int(w * 0.35)]
    right = img[rows, int(w * 0.6): int(w * 0.8)]
    return left.reshape(-1, 3).mean(0), right.reshape(-1, 3).mean(0)


def test_render_overview_keeps_the_slide_visible_under_low_probabilities(
        tumour_phantom, random_model, tmp_path):
    from napari_wsi_detect.api import detect_metastases
    from napari_wsi_detect.demo import render_overview
    from napari_wsi_detect.phantom import load_phantom_truth
    from napari_wsi_detect.slide import open_slide

    truth = load_phantom_truth(tumour_phantom)
    with open_slide(tumour_phantom) as slide:
        res = detect_metastases(slide, model=random_model, alpha=2, device="cpu")
        assert res.heatmap.shape == (96, 128)  # 2048 x 1536 at 16 px per cell
        zero = np.where(np.isfinite(res.heatmap), 0.0, np.nan)
        png0 = render_overview(slide, zero, res.geometry, [], truth, tmp_path / "zero.png",
                               "all zero")
        png1 = render_overview(slide, np.ones_like(res.heatmap), res.geometry, res.regions,
                               truth, tmp_path / "one.png")
        png = render_overview(slide, res.heatmap, res.geometry, res.regions, truth,
                              tmp_path / "real.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "real.png", "zero.png"]  # no temporaries left
    from PIL import Image

    assert Image.open(png).size == (1400, 620)
    left0, right0 = _panel_means(png0)
    # p = 0 is transparent: the heatmap panel shows the same slide as the thumbnail panel.
    assert np.abs(left0 - right0).max() < 12, (left0, right0)
    # p = 1 is opaque-ish: the heatmap panel is clearly tinted (inferno's top is yellow).
    _, right1 = _panel_means(png1)
    assert np.abs(right1 - right0).max() > 30, (right0, right1)
    # The truth outline is drawn in lime on the left panel.
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    lime = (img[..., 1] > 200) & (img[..., 0] < 80) & (img[..., 2] < 80)
    assert lime[:, : img.shape[1] // 2].sum() > 50


def test_froc_of_slide_scores_hits_and_misses(tumour_phantom, tmp_path):
    from napari_wsi_detect.demo import froc_of_slide
    from napari_wsi_detect.phantom import load_phantom_truth, write_phantom

    truth = load_phantom_truth(tumour_phantom)
    cx, cy = np.asarray(truth.tumours[0].polygon).mean(axis=0)

    def region(p: float, x: float, y: float) -> SimpleNamespace:
        return SimpleNamespace(max_prob=p, peak_x=x, peak_y=y)

    glass = region(0.2, 5.0, 5.0)  # a false positive in the corner
    hit = froc_of_slide(tumour_phantom, [region(0.9, cx, cy), glass], truth.mpp)
    assert hit is not None and hit["n_lesions"] == 1
    assert hit["n_fp"] == 1 and hit["n_tp"] == 1
    assert hit["score"] == pytest.approx(1.0)  # the lesion at 0.9 beats the FP at 0.2
    # The same lesion found only below the false positive's score: never counted first.
    late = froc_of_slide(tumour_phantom, [region(0.1, cx, cy), glass], truth.mpp)
    assert late["score"] < 0.5
    miss = froc_of_slide(tumour_phantom, [glass], truth.mpp)
    assert miss["score"] == 0.0 and miss["n_tp"] == 0

    normal = tmp_path / "normal.tif"
    write_phantom(normal, seed=8, size=(2048, 1536), tumour=False)
    assert froc_of_slide(normal, [glass], truth.mpp) is None  # no lesion: no FROC


@pytest.mark.skipif(not BUNDLED.is_file(),
                    reason=f"bundled demo model {BUNDLED} is absent "
                           "(train it with scripts/train_demo_model.py)")
def test_demo_command_end_to_end(tmp_path, capsys):
    from napari_wsi_detect.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "4096", "3072", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in ("run/heatmap.zarr", "run/regions.geojson", "run/summary.json",
                 "overview.png", "demo.json"):
        assert (out / name).exists(), name
    score_line = next(line for line in printed.splitlines() if line.startswith("slide score"))
    score = float(score_line.split(":")[1])
    assert 0.0 <= score <= 1.0
    demo = json.loads((out / "demo.json").read_text())
    assert demo["slide_score"] == pytest.approx(score, abs=1e-4)
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["region_count"] == demo["n_regions"]
    assert summary["model"]["name"] == "demo"
    # Seed 9001 at 4096 x 3072 holds a micro-metastasis, so the slide has a FROC.
    assert demo["froc"] is not None and demo["froc"]["n_lesions"] >= 1
    froc_line = next(line for line in printed.splitlines() if line.startswith("FROC"))
    assert float(froc_line.split()[1]) == pytest.approx(demo["froc"]["score"], abs=1e-4)
