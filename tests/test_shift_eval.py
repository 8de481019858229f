"""evaluation/shift.py on hand-made maps (fragmentation, area ratio, Dice, false positives)
and scripts/evaluate_shift.py end to end on a tiny shift set with a random-weight model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_wsi_detect.engine.plan import MapGeometry
from napari_wsi_detect.evaluation.shift import score_slide, summarise_condition
from napari_wsi_detect.evaluation.truth_masks import load_truth_file
from napari_wsi_detect.postprocess.regions import extract_regions

MPP = 0.243
W0, H0 = 4096, 3072  # level 0; level-5 grid 96 x 128; map (alpha 2) 192 x 256 cells of 16 px


def _mask(path: Path, mask: np.ndarray) -> Path:
    """A level-5 label mask written as the phantom writes one."""
    res = 1e4 / (MPP * 32)
    meta = {"downsample": 32, "level": 5, "mpp": MPP * 32, "slide_size": [W0, H0]}
    tifffile.imwrite(path, mask, description=json.dumps(meta), metadata=None,
                     resolution=(res, res), resolutionunit="CENTIMETER")
    return path


@pytest.fixture()
def geometry() -> MapGeometry:
    g = MapGeometry.for_slide((H0, W0), MPP, MPP, alpha=2)
    assert g.cell_size0 == 16 and g.shape == (192, 256)
    return g


@pytest.fixture()
def truth(tmp_path):
    m = np.zeros((96, 128), np.uint8)
    m[20:60, 20:70] = 1  # 40 x 50 level-5 cells: 311 x 389 µm, a micro-metastasis
    return load_truth_file(_mask(tmp_path / "s.tumour-mask.tif", m))


def test_a_lesion_split_in_three_counts_three_regions(geometry, truth) -> None:
    hm = np.zeros(geometry.shape, np.float32)
    hm[40:120, 40:140] = 0.9  # the lesion, in map cells (2 per level-5 cell)
    hm[:, 72:76] = 0.0  # two gaps split it into three pieces
    hm[:, 104:108] = 0.0
    hm[160:170, 200:210] = 0.8  # far from the lesion: a false positive
    regions = extract_regions(hm, geometry, threshold=0.5, opening_um=0)
    assert len(regions) == 4
    s = score_slide("s", regions, 0.9, geometry, truth)
    assert s.regions_per_lesion == [3]
    assert s.fp_regions == 1
    out = summarise_condition([s])
    assert out["regions_per_lesion_mean"] == 3 and out["regions_per_lesion_max"] == 3
    assert out["fp_regions_per_slide"] == 1 and out["froc"] == 1.0


def test_half_the_area_gives_area_ratio_one_half(geometry, truth) -> None:
    hm = np.zeros(geometry.shape, np.float32)
    hm[40:80, 40:140] = 0.9  # the upper half of the lesion
    regions = extract_regions(hm, geometry, threshold=0.5, opening_um=0)
    s = score_slide("s", regions, 0.9, geometry, truth)
    assert s.truth_cells == 80 * 100 and s.predicted_cells == 40 * 100
    assert s.regions_per_lesion == [1] and s.fp_regions == 0
    out = summarise_condition([s])
    assert out["area_ratio"] == pytest.approx(0.5)
    assert out["dice_mean"] == pytest.approx(2 * 4000 / (4000 + 8000))
    assert out["truth_mm2"] == pytest.approx(8000 * (16 * MPP) ** 2 / 1e6)


def test_normal_slides_count_every_region_and_their_score(geometry, truth, tmp_path) -> None:
    empty = load_truth_file(_mask(tmp_path / "n.tumour-mask.tif", np.zeros((96, 128), np.uint8)))
    hm = np.zeros(geometry.shape, np.float32)
    hm[10:20, 10:20] = 0.95
    hm[100:110, 100:110] = 0.6
    normal = score_slide("n", extract_regions(hm, geometry, threshold=0.5, opening_um=0),
                         0.95, geometry, empty)
    assert normal.fp_regions == 2 and normal.dice is None
    tum = np.zeros(geometry.shape, np.float32)
    tum[40:120, 40:140] = 0.99
    tumour = score_slide("s", extract_regions(tum, geometry, threshold=0.5, opening_um=0),
                         0.99, geometry, truth)
    out = summarise_condition([tumour, normal])
    assert out["fp_regions_per_slide"] == 1.0 and out["fp_regions_per_normal_slide"] == 2.0
    assert out["highest_normal_score"] == 0.95 and out["slide_auc"] == 1.0
    assert out["dice_mean"] == pytest.approx(1.0) and out["area_ratio"] == pytest.approx(1.0)


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_shift.py"
    spec = importlib.util.spec_from_file_location("evaluate_shift", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["evaluate_shift"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    import torch

    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN

    torch.manual_seed(0)
    weights, _ = save_model(ScanNetFCN(width=0.0625), tmp_path_factory.mktemp("m") / "rnd",
                            {"mpp": 0.243, "class_names": ["normal", "tumour"]})
    return weights.with_suffix(".json")


def test_table_command_end_to_end(tmp_path, random_model, capsys) -> None:
    mod = _script()
    work = tmp_path / "work"
    argv = ["--models", str(random_model), "--variant", f"all:{random_model}:threshold=0",
            "--seeds", "7,8", "--normal-seeds", "8", "--size", "2048", "1536",
            "--conditions", "none", "tiny:blur_sigma_px=1,jpeg_quality=60,e_gain=0.8",
            "--work", str(work), "--out", str(tmp_path / "s.json"),
            "--markdown", str(tmp_path / "s.md")]
    assert mod.main(argv) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    rows = report["rows"]
    assert [(r["variant"], r["condition"]["name"]) for r in rows] == [
        ("all", "none"), ("all", "tiny"), ("rnd", "none"), ("rnd", "tiny")]
    table = (tmp_path / "s.md").read_text().splitlines()
    assert len(table) == 2 + 4 and "| rnd | tiny |" in table[-1]
    for r in rows:
        assert r["n_slides"] == 2 and r["n_normal"] == 1
    # threshold 0: every analysed cell is a region cell, so the whole lesion is covered
    # by one region and the area claimed is at least the truth's
    every = rows[0]
    assert every["regions_per_lesion_max"] == 1 and every["area_ratio"] >= 1.0
    assert every["fp_regions_per_normal_slide"] >= 1
    # the rescanned slides exist with their truth, and the variants share the stored maps
    tiny = [p for p in work.iterdir() if p.name.startswith("tiny-")]
    assert len(tiny) == 1 and (tiny[0] / "tumor_007.tumour-mask.tif").exists()
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1  # threshold is post-processing: one run folder for both
    stamp = {p: p.stat().st_mtime_ns for p in runs[0].rglob("summary.json")}
    assert len(stamp) == 4
    assert mod.main(argv) == 0  # again: re-scored from the stored runs
    assert {p: p.stat().st_mtime_ns for p in runs[0].rglob("summary.json")} == stamp
    assert json.loads((tmp_path / "s.json").read_text())["rows"][3]["froc"] == rows[3]["froc"]


def test_unknown_variant_key_is_refused(random_model) -> None:
    mod = _script()
    with pytest.raises(SystemExit, match="unknown key 'nope'"):
        mod.main(["--variant", f"x:{random_model}:nope=1", "--conditions", "none"])
