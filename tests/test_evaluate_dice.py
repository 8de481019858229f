"""`wsi-detect evaluate dice` and evaluation/segmentation*: Dice, precision, recall on
hand-made masks with known answers, the empty-mask conventions, the grid rules (truth's
level-5 grid, cell-centre rasterisation, holes), run folders, and refused inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_wsi_detect.cli import main
from napari_wsi_detect.evaluation.froc import EvaluationError
from napari_wsi_detect.evaluation.segmentation import slide_dice, summarise, summarise_slides

DS = 32


def write_mask(path, mask: np.ndarray, mpp: float | None = None) -> None:
    kw = {}
    if mpp is not None:
        kw = dict(description=json.dumps({"downsample": DS, "mpp": mpp * DS}), metadata=None)
    tifffile.imwrite(path, mask.astype(np.uint8), **kw)


def square(x0: float, y0: float, x1: float, y1: float) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write_geojson(path, rings_list: list[list], phantom: dict | None = None) -> None:
    feats = [{"type": "Feature", "id": f"00000000-0000-4000-8000-00000000000{i}",
              "geometry": {"type": "Polygon", "coordinates": rings},
              "properties": {"objectType": "annotation",
                             "classification": {"name": "Tumor", "color": [200, 0, 0]}}}
             for i, rings in enumerate(rings_list)]
    doc = {"type": "FeatureCollection", "features": feats}
    if phantom:
        doc["phantom"] = phantom
    path.write_text(json.dumps(doc))


def write_run(folder, slide_name: str, width: int, height: int, rings_list: list[list],
              mpp: float = 0.5, task: str = "tumour") -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "format": 2, "task": task,
        "slide": {"path": f"/slides/{slide_name}", "width": width, "height": height,
                  "mpp": mpp, "mpp_assumed": False}}))
    write_geojson(folder / "tumour.geojson", rings_list)


# -- the figures ------------------------------------------------------------------------
def test_known_dice_precision_recall():
    truth = np.zeros((10, 10), bool)
    truth[2:4, 0:5] = True  # 10 cells
    pred = np.zeros_like(truth)
    pred[2:4, 1:5] = True  # 8 of them
    pred[8, 0:4] = True  # + 4 elsewhere
    s = slide_dice(truth, pred, "a", cell_mm2=0.25)
    assert (s.tp, s.fp, s.fn) == (8, 4, 2)
    assert s.dice == pytest.approx(16 / 22)
    assert s.precision == pytest.approx(8 / 12) and s.recall == pytest.approx(0.8)
    assert s.truth_mm2 == pytest.approx(2.5) and s.predicted_mm2 == pytest.approx(3.0)
    assert slide_dice(truth, truth).dice == 1.0
    assert slide_dice(truth, ~truth).dice == 0.0


def test_empty_mask_conventions():
    z = np.zeros((5, 5), bool)
    one = z.copy()
    one[1, 1] = True
    both = slide_dice(z, z)
    assert (both.dice, both.precision, both.recall, both.empty) == (1.0, 1.0, 1.0, "both")
    t_empty = slide_dice(z, one)
    assert (t_empty.dice, t_empty.precision, t_empty.recall, t_empty.empty) == (0.0, 0.0, None, "truth")
    p_empty = slide_dice(one, z)
    assert (p_empty.dice, p_empty.precision, p_empty.recall, p_empty.empty) == (0.0, None, 0.0, "prediction")
    # undefined figures stay out of their means; Dice is defined everywhere
    r = summarise_slides([both, t_empty, p_empty])
    assert r.dice.mean == pytest.approx(1 / 3) and r.dice.n == 3
    assert r.precision.n == 2 and r.precision.mean == pytest.approx(0.5)
    assert r.recall.n == 2 and r.recall.mean == pytest.approx(0.5)
    with pytest.raises(EvaluationError, match="grid"):
        slide_dice(z, np.zeros((5, 6), bool))


def test_mean_and_sample_sd():
    s = summarise([1.0, 0.5, None])
    assert s.mean == pytest.approx(0.75) and s.sd == pytest.approx(np.std([1.0, 0.5], ddof=1))
    assert summarise([0.9]).sd is None
    assert summarise([None]).mean is None


# -- the command ---------------------------------------------------------------------------
@pytest.fixture
def three_slides(tmp_path):
    """a: truth mask vs GeoJSON square; b: truth GeoJSON with a hole vs a run folder;
    c: empty truth mask vs a run folder with one square (FP only)."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    pred.mkdir()
    # slide a: 640 x 320 px -> 20 x 10 cells; truth cells rows 2-4, cols 2-6 (15 cells)
    ta = np.zeros((10, 20), np.uint8)
    ta[2:5, 2:7] = 1
    write_mask(truth / "a.tumour-mask.tif", ta, mpp=0.5)
    # prediction square x 96..256, y 64..160: centres at cols 3..7, rows 2..4 (15 cells, 12 shared)
    write_geojson(pred / "a.geojson", [[square(96, 64, 256, 160)]])
    # slide b: truth 10 x 10 cells with a 2 x 2 hole; the run predicts the filled square
    write_geojson(truth / "b.geojson", [[square(32, 32, 288, 288), square(128, 128, 192, 192)]])
    write_run(pred / "run-b", "b.svs", 320, 320, [[square(32, 32, 288, 288)]])
    # slide c: nothing in truth, a 2 x 2 cell square predicted
    write_mask(truth / "c.tumour-mask.tif", np.zeros((10, 10), np.uint8), mpp=0.5)
    write_run(pred / "run-c", "c.tif", 320, 320, [[square(0, 0, 64, 64)]])
    return truth, pred


def test_cli_scores_every_slide_and_writes_json_and_plot(three_slides, tmp_path, capsys):
    truth, pred = three_slides
    out_json, out_png = tmp_path / "out" / "dice.json", tmp_path / "out" / "dice.png"
    rc = main(["evaluate", "dice", "--truth", str(truth), "--masks", str(pred),
               "--json", str(out_json), "--plot", str(out_png)])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(out_json.read_text())
    by = {s["slide_id"]: s for s in res["slides"]}
    assert set(by) == {"a", "b", "c"}
    a, b, c = by["a"], by["b"], by["c"]
    assert (a["tp"], a["fp"], a["fn"]) == (12, 3, 3)
    assert a["dice"] == pytest.approx(24 / 30)
    assert a["truth_mm2"] == pytest.approx(15 * (32 * 0.5 / 1000) ** 2)
    # b: 8 x 8 = 64 cells predicted, the truth leaves out the 2 x 2 hole
    assert (b["tp"], b["fp"], b["fn"]) == (60, 4, 0)
    assert b["precision"] == pytest.approx(60 / 64) and b["recall"] == 1.0
    assert (c["dice"], c["precision"], c["recall"], c["empty"]) == (0.0, 0.0, None, "truth")
    dices = [24 / 30, 120 / 124, 0.0]
    assert res["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert res["dice"]["sd"] == pytest.approx(np.std(dices, ddof=1))
    assert res["recall"]["n"] == 2
    assert f"Dice: {np.mean(dices):.4f} ± {np.std(dices, ddof=1):.4f} (n = 3)" in text
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_truth_geojson_gets_the_run_slide_grid_and_the_phantom_size(tmp_path, capsys):
    # the truth polygon reaches past the run's slide: cells beyond the slide do not count
    write_geojson(tmp_path / "s.geojson", [[square(0, 0, 640, 64)]])
    write_run(tmp_path / "run", "s.tif", 320, 64, [[square(0, 0, 320, 64)]])
    assert main(["evaluate", "dice", "--truth", str(tmp_path / "s.geojson"), "--masks",
                 str(tmp_path / "run" / "tumour.geojson"), "--json", str(tmp_path / "o.json")]) == 0
    (s,) = json.loads((tmp_path / "o.json").read_text())["slides"]
    assert s["grid"] == [2, 10] and s["dice"] == 1.0
    # a phantom truth records its size; a bare prediction GeoJSON then needs nothing else
    write_geojson(tmp_path / "p.geojson", [[square(0, 0, 64, 64)]],
                  phantom={"size": [128, 128], "mpp": 0.25})
    pred = tmp_path / "preds"
    pred.mkdir()
    write_geojson(pred / "p.geojson", [[square(0, 0, 64, 32)]])
    assert main(["evaluate", "dice", "--truth", str(tmp_path / "p.geojson"), "--masks", str(pred),
                 "--json", str(tmp_path / "p.json")]) == 0
    (s,) = json.loads((tmp_path / "p.json").read_text())["slides"]
    assert s["grid"] == [4, 4] and s["dice"] == pytest.approx(2 * 2 / (2 + 4))


def test_primary_phantom_truth_geojson_and_mask_agree(tmp_path, capsys):
    from napari_wsi_detect.phantom import phantom_layout
    from napari_wsi_detect.phantom.writer import tumour_mask

    layout, _ = phantom_layout(5, (4096, 3072), 0.972, primary=1)
    (les,) = layout.lesions
    assert les.holes
    write_mask(tmp_path / "x.tumour-mask.tif", tumour_mask(layout), mpp=0.972)
    ring = [np.vstack([r, r[:1]]).tolist() for r in [les.polygon, *les.holes]]
    pred = tmp_path / "p"
    pred.mkdir()
    write_geojson(pred / "x.geojson", [ring])
    assert main(["evaluate", "dice", "--truth", str(tmp_path / "x.tumour-mask.tif"),
                 "--masks", str(pred)]) == 0
    assert "x: Dice 1.0000" in capsys.readouterr().out


# -- refused inputs ------------------------------------------------------------------------
def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    rgb = tmp_path / "slide.tif"
    tifffile.imwrite(rgb, np.full((64, 64, 3), 200, np.uint8), photometric="rgb",
                     compression="jpeg")
    write_run(tmp_path / "run", "slide.tif", 2048, 2048, [[square(0, 0, 64, 64)]])

    def err(*argv) -> str:
        capsys.readouterr()
        assert main(["evaluate", "dice", *argv]) == 2
        e = capsys.readouterr().err
        assert e.count("\n") == 1 and e.startswith("wsi-detect: error: ")
        return e

    assert "not a tumour mask" in err("--truth", str(rgb), "--masks", str(tmp_path / "run"))
    # a level-5 mask of another slide size than the run's
    write_mask(tmp_path / "slide.tumour-mask.tif", np.zeros((10, 10), np.uint8))
    assert "not this slide's level-5 mask" in err(
        "--truth", str(tmp_path / "slide.tumour-mask.tif"), "--masks", str(tmp_path / "run"))
    # pixel sizes of mask and run contradict
    write_mask(tmp_path / "slide.tumour-mask.tif", np.zeros((64, 64), np.uint8), mpp=0.25)
    assert "pixel sizes disagree" in err(
        "--truth", str(tmp_path / "slide.tumour-mask.tif"), "--masks", str(tmp_path / "run"))
    # no truth for a prediction: both sides' ids listed
    write_mask(tmp_path / "other.tumour-mask.tif", np.zeros((64, 64), np.uint8))
    e = err("--truth", str(tmp_path / "other.tumour-mask.tif"), "--masks", str(tmp_path / "run"))
    assert "no ground truth for slide(s) slide" in e and "other" in e
    # a mitosis run holds points, not an outline
    write_run(tmp_path / "mit", "slide.tif", 2048, 2048, [], task="mitoses")
    assert "holds points" in err("--truth", str(tmp_path / "slide.tumour-mask.tif"),
                                 "--masks", str(tmp_path / "mit"), "--mpp", "0.25")
    assert "prediction not found" in err("--truth", str(tmp_path / "other.tumour-mask.tif"),
                                         "--masks", str(tmp_path / "nope"))
    assert "is a folder" in err("--truth", str(rgb), "--masks", str(tmp_path / "run"),
                                "--json", str(tmp_path))


def test_a_run_over_a_region_is_scored_inside_it(tmp_path, capsys):
    t = np.zeros((10, 20), np.uint8)
    t[2:5, 2:18] = 1  # tumour across the whole width
    write_mask(tmp_path / "r.tumour-mask.tif", t, mpp=0.5)
    write_run(tmp_path / "run", "r.tif", 640, 320, [[square(64, 64, 320, 160)]])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    summary["parameters"] = {"region": [0, 0, 320, 320]}  # the left half (cols 0-9)
    (tmp_path / "run" / "summary.json").write_text(json.dumps(summary))
    assert main(["evaluate", "dice", "--truth", str(tmp_path / "r.tumour-mask.tif"), "--masks",
                 str(tmp_path / "run"), "--json", str(tmp_path / "o.json")]) == 0
    assert "scored inside the run's region only" in capsys.readouterr().out
    (s,) = json.loads((tmp_path / "o.json").read_text())["slides"]
    assert (s["tp"], s["fp"], s["fn"]) == (24, 0, 0)  # rows 2-4 x cols 2-9 inside the region


def test_a_real_tumour_run_folder_scores_against_the_phantom_mask(phantom_small, tmp_path, capsys):
    """`wsi-detect tumour` (random-weight H2G-Net, threshold 0: every analysed cell is
    tumour) over a region of the phantom, then `evaluate dice` on its run folder: recall
    1 and precision = the truth's share of the region's cells, from the mask itself."""
    import torch

    from napari_wsi_detect.models.h2g import H2GNet
    from napari_wsi_detect.models.io import save_model

    torch.manual_seed(0)
    model = save_model(H2GNet(width=0.1, unet_width=2, refine_size=64, patch=32),
                       tmp_path / "m" / "t", {"mpp": 0.243, "task": "tumour"})[0]
    x, y, w, h = 1024, 1280, 768, 768  # over the phantom's micro-metastasis
    assert main(["tumour", str(phantom_small), "--model", str(model), "--region",
                 f"{x},{y},{w},{h}", "--no-tissue-mask", "--threshold", "0", "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0
    mask_path = phantom_small.with_name(phantom_small.stem + ".tumour-mask.tif")
    assert main(["evaluate", "dice", "--truth", str(mask_path), "--masks", str(tmp_path / "run"),
                 "--json", str(tmp_path / "d.json")]) == 0
    (s,) = json.loads((tmp_path / "d.json").read_text())["slides"]
    truth = tifffile.imread(mask_path)[y // DS:(y + h) // DS, x // DS:(x + w) // DS] > 0
    assert s["slide_id"] == "phantom" and truth.any()
    assert s["recall"] == 1.0
    assert s["tp"] + s["fp"] == truth.size  # the whole region predicted
    assert s["precision"] == pytest.approx(truth.sum() / truth.size)


def test_one_cell_of_rounding_between_grids_is_accepted(tmp_path, capsys):
    # a Camelyon-style mask rounds its size down (10 x 20); the run's slide / 32 rounds up
    t = np.zeros((10, 20), np.uint8)
    t[1:3, 1:3] = 1
    write_mask(tmp_path / "q.tumour-mask.tif", t)
    write_run(tmp_path / "run", "q.tif", 650, 330, [[square(32, 32, 96, 96)]])
    # a prediction mask one cell larger each way is cut to the truth's grid
    p = np.zeros((11, 21), np.uint8)
    p[1:3, 1:3] = 1
    preds = tmp_path / "preds"
    preds.mkdir()
    write_mask(preds / "q.tumour-mask.tif", p)
    for masks in (tmp_path / "run", preds / "q.tumour-mask.tif"):
        assert main(["evaluate", "dice", "--truth", str(tmp_path / "q.tumour-mask.tif"),
                     "--masks", str(masks), "--json", str(tmp_path / "o.json")]) == 0
        (s,) = json.loads((tmp_path / "o.json").read_text())["slides"]
        assert s["grid"] == [10, 20] and s["dice"] == 1.0
