"""`wsi-detect evaluate f1`: inputs, matching by case id, outputs, exit 2 on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_file
from napari_wsi_detect._atomic import sha256_file, write_json_atomic
from napari_wsi_detect.annotations.geojson import points_to_features, write_geojson
from napari_wsi_detect.cli import main


def make_run(folder, slide_name, xy, scores, mpp):
    """A run folder as the mitosis detector writes it: results + summary (sha256)."""
    folder.mkdir(parents=True)
    results = write_geojson(folder / "mitoses.geojson", points_to_features(xy, scores))
    write_json_atomic(folder / "summary.json", {
        "format": 2, "task": "mitoses",
        "slide": {"path": f"/slides/{slide_name}", "mpp": mpp},
        "outputs": {"mitoses.geojson": {"sha256": sha256_file(results)}},
    })
    return folder


def test_midogpp_truth_with_csv_detections(tmp_path, capsys):
    coco = shared_file("annotations/midogpp/MIDOG++.json")
    raw = json.loads(coco.read_text())
    rng = np.random.default_rng(0)
    tp = fp = fn = 0
    for image_id, name in ((1, "001"), (2, "002"), (3, "003")):
        boxes = np.array([a["bbox"] for a in raw["annotations"]
                          if a["image_id"] == image_id and a["category_id"] == 1], float
                         ).reshape(-1, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        found = centres[: len(centres) * 2 // 3] + rng.uniform(-15, 15, (len(centres) * 2 // 3, 2))
        false = rng.uniform(0, 5000, (4, 2)) + 20_000  # far from any figure
        rows = np.vstack([found, false])
        lines = ["x,y,score"] + [f"{x:.2f},{y:.2f},0.9" for x, y in rows]
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
        tp, fp, fn = tp + len(found), fp + 4, fn + len(centres) - len(found)
    rc = main(["evaluate", "f1", "--truth", str(coco), "--detections", str(tmp_path),
               "--json", str(tmp_path / "out" / "f1.json"), "--plot", str(tmp_path / "f1.png")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"TP: {tp}  FP: {fp}  FN: {fn}" in out
    assert f"F1: {2 * tp / (2 * tp + fp + fn):.4f}" in out
    assert "550 ground-truth case(s) have no detections" in out
    assert "no pixel size recorded" in out and "30 px at 0.25 µm/px (3 cases)" in out
    data = json.loads((tmp_path / "out" / "f1.json").read_text())
    assert data["f1"]["tp"] == tp and set(data["f1"]["cases"]) == {"001", "002", "003"}
    assert (tmp_path / "f1.png").read_bytes()[:4] == b"\x89PNG"
    # Every other image's mitoses count as missed with --unmatched-are-empty.
    assert main(["evaluate", "f1", "--truth", str(coco), "--detections", str(tmp_path),
                 "--unmatched-are-empty"]) == 0
    out = capsys.readouterr().out
    all_fn = sum(a["category_id"] == 1 for a in raw["annotations"]) - tp
    assert f"TP: {tp}  FP: {fp}  FN: {all_fn}" in out and "cases: 553" in out


def test_run_folders_use_their_recorded_pixel_size(tmp_path, capsys):
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "slideA.csv").write_text("x,y\n100,100\n500,500\n")
    (truth / "slideB.csv").write_text("x,y\n100,100\n")
    runs = tmp_path / "runs"
    # 20 px off: within 7.5 µm at 0.25 µm/px (5 µm), not at 0.5 µm/px (10 µm).
    make_run(runs / "a", "slideA.svs", [(120, 100), (900, 900)], [0.8, 0.4], 0.25)
    make_run(runs / "b", "SLIDEB.svs", [(120, 100)], [0.7], 0.5)
    assert main(["evaluate", "f1", "--truth", str(truth), "--detections", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "TP: 1  FP: 2  FN: 2" in out
    assert "30 px at 0.25 µm/px (1 case)" in out and "15 px at 0.5 µm/px (1 case)" in out
    # --mpp overrides (with a warning) and --threshold drops low scores.
    assert main(["evaluate", "f1", "--truth", str(truth), "--detections", str(runs),
                 "--mpp", "0.25", "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "TP: 2  FP: 0  FN: 1" in out and "--mpp 0.25 overrides the 0.5" in out


def test_a_run_whose_results_changed_after_the_summary_is_refused(tmp_path, capsys):
    run = make_run(tmp_path / "r", "s.svs", [(1, 1)], [0.9], 0.25)
    (tmp_path / "s.csv").write_text("1,1\n")
    (run / "mitoses.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    assert main(["evaluate", "f1", "--truth", str(tmp_path / "s.csv"),
                 "--detections", str(run)]) == 2
    assert "does not belong to" in capsys.readouterr().err


@pytest.mark.parametrize("truth, dets, match", [
    ("t.csv", "missing.csv", "detections not found"),
    ("t.csv", "other.csv", "no ground truth for case(s) other"),
    ("bad.csv", "t.csv", "bad.csv line 2"),
    ("t.csv", "partial.geojson", "1 of 2 detections have no score"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, truth, dets, match):
    (tmp_path / "t.csv").write_text("x,y\n1,2\n")
    (tmp_path / "other.csv").write_text("x,y,score\n1,2,0.5\n")
    (tmp_path / "bad.csv").write_text("x,y\n1,oops\n")
    feats = points_to_features([(1, 2), (3, 4)], [0.5, 0.6])
    feats[1].measurements = {}
    write_geojson(tmp_path / "partial.geojson", feats)
    if dets == "partial.geojson":
        (tmp_path / "partial.csv").write_text("x,y\n1,2\n")
        truth = "partial.csv"
    rc = main(["evaluate", "f1", "--truth", str(tmp_path / truth),
               "--detections", str(tmp_path / dets)])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--radius-um", "0"), ("--radius-um", "x"),
                                         ("--mpp", "-1"), ("--threshold", "nan")])
def test_bad_flag_values_fail_at_parse_time(tmp_path, flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "f1", "--truth", "t.csv", "--detections", "d.csv", flag, value])
    assert exc.value.code == 2


def test_a_real_mitoses_run_folder_evaluates(tmp_path, capsys):
    """`wsi-detect mitoses` (random weights, a MIDOG crop) -> run folder -> evaluate f1."""
    torch = pytest.importorskip("torch")
    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.segmitos import SegMitosFCN

    crop = shared_file("mitosis-midog21/patches/normal/MIDOG21_10.png")
    torch.manual_seed(0)
    model = save_model(SegMitosFCN(width=0.0625), tmp_path / "model" / "m",
                       {"mpp": 0.25, "task": "mitoses"})[0]
    run = tmp_path / "run"
    assert main(["mitoses", str(crop), "--model", str(model), "--mpp", "0.25",
                 "--no-tissue-mask", "--min-score", "0", "--min-area-um2", "0",
                 "--out", str(run), "--quiet"]) == 0
    doc = json.loads((run / "mitoses.geojson").read_text())
    found = [f["geometry"]["coordinates"] for f in doc["features"]
             if f["geometry"]["type"] == "Point"]
    rows = [f"{x + 5},{y}" for x, y in found] + ["5000,5000"]  # one figure never found
    (tmp_path / "MIDOG21_10.csv").write_text("x,y\n" + "\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["evaluate", "f1", "--detections", str(run),
                 "--truth", str(tmp_path / "MIDOG21_10.csv")]) == 0
    out = capsys.readouterr().out
    assert f"TP: {len(found)}  FP: 0  FN: 1" in out
    assert "30 px at 0.25 µm/px (1 case)" in out and "warning" not in out
