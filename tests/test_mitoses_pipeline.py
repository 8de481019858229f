"""Mitosis detection end to end (issue 10): the CLI on a plain PNG field, a phantom slide
through the job with points landing on the truth, exact training resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CROPS = SHARED / "mitosis-midog21"
COCO = SHARED / "annotations" / "midogpp" / "MIDOG++.json"


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> str:
    import torch

    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.segmitos import SegMitosFCN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("segmitos") / "m"
    return str(save_model(SegMitosFCN(width=0.0625), path, {"mpp": 0.25, "task": "mitoses"})[1])


def _field_png(path: Path, size: int = 320) -> Path:
    rng = np.random.default_rng(0)
    img = np.full((size, size, 3), 235, np.uint8)
    img[40:280, 40:280] = (rng.random((240, 240, 3)) * 120 + 80).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def test_cli_on_a_png_field_with_and_without_mpp(tmp_path, random_model, capsys) -> None:
    from napari_wsi_detect.cli import main
    from napari_wsi_detect.detectors.result import read_summary

    field = _field_png(tmp_path / "field.png")
    out = tmp_path / "run"
    assert main(["mitoses", str(field), "--mpp", "0.5", "--model", random_model,
                 "--out", str(out), "--quiet", "--no-tissue-mask"]) == 0
    s = read_summary(out, check=True)
    assert s["task"] == "mitoses" and s["slide"]["mpp"] == 0.5
    assert s["geometry"]["d"] == 0.5  # the 0.25 µm/px model reads 2 model px per image px
    assert s["hpf_mm2"] == pytest.approx(0.237)
    assert s["mitosis_count"] == len(s["mitoses"])
    area = s["analysed_area_mm2"]
    assert area == pytest.approx(320 * 320 * 0.25 * 1e-6, rel=1e-6)  # the whole field
    gj = json.loads((out / "mitoses.geojson").read_text())
    points = [f for f in gj["features"] if f["geometry"]["type"] == "Point"]
    assert len(points) == s["mitosis_count"]
    # without --mpp the model's 0.25 µm/px is assumed, and said
    out2 = tmp_path / "run2"
    capsys.readouterr()
    assert main(["mitoses", str(field), "--model", random_model, "--out", str(out2),
                 "--quiet", "--no-tissue-mask"]) == 0
    assert "no pixel size" in capsys.readouterr().err
    s2 = read_summary(out2)
    assert s2["slide"]["mpp_assumed"] is True and s2["geometry"]["slide_mpp"] == 0.25
    with pytest.raises(SystemExit) as exc:
        main(["mitoses", str(field), "--mpp", "0", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "--mpp" in capsys.readouterr().err


def test_phantom_points_land_on_the_truth_through_the_job_and_files(
        phantom_small, random_model, tmp_path) -> None:
    """The network's map is replaced by one painted from the phantom's truth (a map we
    control): post-processing, level-0 coordinates, mitoses.geojson and `evaluate f1`
    must then give every figure and nothing else."""
    from napari_wsi_detect.cli import main
    from napari_wsi_detect.detectors.job import DetectionRequest, detect
    from napari_wsi_detect.phantom import load_phantom_truth

    truth = load_phantom_truth(phantom_small)
    pts = truth.mitoses
    assert len(pts) >= 3, "the small phantom should hold mitoses"
    x0, y0 = np.floor(pts.min(0)).astype(int) - 100
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 100
    region = (max(0, x0), max(0, y0), x1 - max(0, x0), y1 - max(0, y0))
    result = detect(DetectionRequest(task="mitoses", slide=str(phantom_small),
                                     model=random_model, device="cpu", region=region,
                                     use_tissue=False, roi_cells=64))
    g = result.geometry
    painted = np.where(np.isfinite(result.heatmap), 0.02, np.nan).astype(np.float32)
    rr, cc = np.mgrid[0:g.rows, 0:g.cols]
    inside = []
    for x, y in pts:
        r, c = (y / g.cell_size0 - 0.5), (x / g.cell_size0 - 0.5)  # cell-centre coordinates
        if np.isfinite(painted[int(r), int(c)]):
            painted = np.where((rr - r) ** 2 + (cc - c) ** 2 <= 9, 0.9, painted)
            inside.append((x, y))
    result.heatmap = painted
    items = result.postprocess(min_score=0.5, min_area_um2=8.0, smoothing_um=1.0)
    assert len(items) == len(inside) >= 3
    found = np.array([(m.x, m.y) for m in items])
    for x, y in inside:  # each figure found within half a map cell (the disc is pixelated)
        assert np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) < g.cell_size0 / 2
    out = tmp_path / "run"
    result.write(out)
    truth_csv = tmp_path / "phantom.csv"
    truth_csv.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in inside))
    report = tmp_path / "f1.json"
    assert main(["evaluate", "f1", "--detections", str(out), "--truth", str(truth_csv),
                 "--json", str(report)]) == 0
    f1 = json.loads(report.read_text())["f1"]
    assert f1["tp"] == len(inside) and f1["fp"] == 0 and f1["fn"] == 0


@pytest.mark.skipif(not (CROPS / "labels.csv").is_file() or not COCO.is_file(),
                    reason="../shared/data/mitosis-midog21 or MIDOG++.json absent")
def test_training_resume_is_exact(tmp_path) -> None:
    from safetensors.torch import load_file

    from napari_wsi_detect.training.mitoses import MitosisTrainConfig, train_mitoses

    cfg = MitosisTrainConfig(width=0.0625, steps=4, batch_size=2, input_size=64,
                             val_fields=1, val_field_size=128, val_every=2,
                             checkpoint_every=2, workers=0, device="cpu")
    kw = dict(annotations=[str(COCO)], progress=False, log=lambda *_: None)
    whole = train_mitoses([str(CROPS)], tmp_path / "whole", cfg, **kw)
    train_mitoses([str(CROPS)], tmp_path / "cut", cfg, stop_after=3, **kw)
    resumed = train_mitoses([str(CROPS)], tmp_path / "cut", cfg, resume=True, **kw)
    a, b = load_file(str(whole.model_path)), load_file(str(resumed.model_path))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    conf = json.loads(resumed.config_path.read_text())
    assert conf["task"] == "mitoses" and conf["training"]["val_slides"]
    assert set(conf["thresholds"]) >= {"min_score", "min_area_um2", "smoothing_um"}
    lines = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["1", "2", "3", "4"]


def test_detect_mitoses_api_on_a_field_with_its_pixel_size(tmp_path, random_model) -> None:
    """The public `detect_mitoses` on a plain PNG field: `mpp` sets the field's scale,
    and the slider values travel to the result."""
    from napari_wsi_detect import detect_mitoses

    field = _field_png(tmp_path / "field.png")
    result = detect_mitoses(str(field), model=random_model, mpp=0.5, device="cpu",
                            min_score=0.0, use_tissue=False)
    assert result.task == "mitoses" and result.slide_info["mpp"] == 0.5
    assert result.parameters["min_score"] == 0.0
    assert result.summary()["analysed_area_mm2"] == pytest.approx(320 * 320 * 0.25 * 1e-6,
                                                                  rel=1e-6)
