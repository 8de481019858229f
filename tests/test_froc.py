"""Camelyon16 FROC and slide AUC: hand-computed cases, the official script's quirks,
a brute-force port of the official script on random cases, real NCRF outlines, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_file
from napari_wsi_detect.evaluation.auc import slide_auc
from napari_wsi_detect.evaluation.froc import (
    EvaluationError,
    SlideEval,
    compute_froc,
    evaluation_mask_from_mask,
    evaluation_mask_from_polygons,
    growth_threshold_px,
    itc_threshold_px,
)

DS = 32


def at(row: int, col: int) -> tuple[int, int]:
    """Level-0 (x, y) inside mask pixel (row, col)."""
    return col * DS + 5, row * DS + 7


def det(*items: tuple[float, int, int]) -> np.ndarray:
    """Detections from (prob, row, col) in mask pixels."""
    return np.array([(p, *at(r, c)) for p, r, c in items], dtype=float).reshape(-1, 3)


def two_lesion_mask() -> np.ndarray:
    """Labels 1 and 2: two 10x10 blocks far apart (mask used as is, no growth)."""
    m = np.zeros((100, 100), np.int32)
    m[10:20, 10:20] = 1
    m[60:70, 60:70] = 2
    return m


def normal(slide_id: str, detections=()) -> SlideEval:
    return SlideEval(slide_id, np.asarray(detections, float).reshape(-1, 3), is_tumour=False)


# --- hand-computed cases --------------------------------------------------------------


def test_single_lesion_hit_once_alone_scores_zero_because_smallest_threshold_is_skipped():
    # Pooled scores = {0.9}: the official computeFROC skips the smallest value, so the
    # curve is only the appended (0 FP, 0) point -> every sensitivity 0.
    m = np.zeros((20, 20), np.int32)
    m[5:10, 5:10] = 1
    r = compute_froc([SlideEval("t", det((0.9, 6, 6)), True, m, [])])
    assert r.n_lesions == 1 and r.n_tp == 1 and r.n_fp == 0
    assert r.score == 0.0
    assert list(r.sensitivities) == [0.0] * 6


def test_hit_plus_missed_lesion_gives_half_sensitivity():
    # TPs = [0.9, 0 (missed)] -> thresholds [0.9]: 0 FP, 1/2 lesions.
    r = compute_froc([SlideEval("t", det((0.9, 12, 12)), True, two_lesion_mask(), [])])
    assert r.slides[0].lesion_scores == pytest.approx([0.9, 0.0])
    assert r.sensitivities == pytest.approx([0.5] * 6)
    assert r.score == pytest.approx(0.5)


def test_itc_hits_are_neither_tp_nor_fp():
    m = two_lesion_mask()
    slide = SlideEval("t", det((0.8, 12, 12), (0.95, 65, 65), (0.3, 40, 40)), True, m, [2])
    r = compute_froc([slide])
    assert r.n_lesions == 1 and r.n_itc == 1
    assert r.n_fp == 1  # only the detection outside both lesions
    assert r.slides[0].n_itc_hits == 1
    # thresholds [0.3, 0.8]: (1 FP, 1), (0 FP, 1), then (0, 0) -> sensitivity 1 everywhere
    assert r.score == pytest.approx(1.0)
    # Had the ITC hit (0.95) been an FP, the top threshold would give 1 FP at 0 TP.
    assert 0.95 not in r.thresholds


def test_several_hits_on_one_lesion_count_once_with_the_max():
    m = two_lesion_mask()
    d = det((0.6, 11, 11), (0.9, 15, 15), (0.7, 18, 12))
    r = compute_froc([SlideEval("t", d, True, m, [2]), normal("n", [(0.4, 1, 1)])])
    s = r.slides[0]
    assert s.lesion_scores == pytest.approx([0.9])
    assert s.n_extra_hits == 2 and s.n_fp == 0
    assert r.n_fp == 1  # only the normal slide's detection
    # FPs [0.4], TPs [0.9, 0 (ITC)]: thresholds [0.4, 0.9] -> (0.5, 1), (0, 1), (0, 0).
    assert r.score == pytest.approx(1.0)
    assert r.fp_per_slide == pytest.approx([0.5, 0.0, 0.0])
    assert r.sensitivity == pytest.approx([1.0, 1.0, 0.0])


def test_detections_outside_lesions_are_false_positives_and_rate_divides_by_slides():
    m = two_lesion_mask()
    d = det((0.9, 12, 12), (0.6, 62, 62), (0.8, 40, 40), (0.7, 90, 5))
    slides = [SlideEval("t", d, True, m, [])] + [normal(f"n{i}") for i in range(3)]
    r = compute_froc(slides)
    # FPs [0.8, 0.7], TPs [0.9, 0.6]; smallest (0.6) skipped -> thresholds 0.7, 0.8, 0.9:
    # (2/4, 1/2), (1/4, 1/2), (0, 1/2), (0, 0). The 0.6 lesion is never counted.
    assert r.n_fp == 2 and r.n_slides == 4
    assert r.fp_per_slide == pytest.approx([0.5, 0.25, 0.0, 0.0])
    assert r.sensitivity == pytest.approx([0.5, 0.5, 0.5, 0.0])
    assert r.score == pytest.approx(0.5)


def test_normal_slide_detections_are_all_false_positives():
    m = two_lesion_mask()
    # A normal slide's detection at a pixel that is tumour on the *other* slide's mask
    # is still an FP: normal slides have no mask.
    r = compute_froc(
        [SlideEval("t", det((0.9, 12, 12)), True, m, []),
         normal("n", det((0.95, 12, 12), (0.3, 50, 50)))]
    )
    assert r.slides[1].n_fp == 2 and r.n_fp == 2 and r.n_tumour_slides == 1
    # thresholds 0.3, 0.9, 0.95 -> (1, .5), (.5, .5), (.5, 0), (0, 0); np.interp over the
    # reversed curve: 0 at 0.25 FP, 0.5 from 0.5 FP on.
    assert r.sensitivities == pytest.approx([0, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert r.score == pytest.approx(2.5 / 6)


@pytest.mark.parametrize("tie", [0.5, 0.7])
def test_tied_tp_and_fp_scores_count_together_and_interpolate_linearly(tie):
    # One lesion hit at `tie`, an FP at `tie` and one at 0.25, two slides: threshold `tie`
    # gives (1/2 FP/slide, 1.0); with the (0, 0) end point np.interp gives 0.5 at 0.25 FP.
    # 0.7 is not a float32 number: the official float32 TP store must not break the tie.
    m = np.zeros((10, 10), np.int32)
    m[2:6, 2:6] = 1
    r = compute_froc(
        [SlideEval("t", det((tie, 3, 3), (tie, 8, 8), (0.25, 9, 9)), True, m, []),
         normal("n")]
    )
    assert r.sensitivities == pytest.approx([0.5, 1, 1, 1, 1, 1])
    assert r.score == pytest.approx(5.5 / 6)


def test_interpolation_at_the_six_fp_rates():
    # 4 lesions with TP scores 0.95, 0.85, 0.65 and one missed; 9 FPs 0.1 ... 0.9.
    m = np.zeros((40, 40), np.int32)
    for i in range(4):
        m[2 + 9 * i: 6 + 9 * i, 2:6] = i + 1
    tps = [(0.95, 3, 3), (0.85, 12, 3), (0.65, 21, 3)]
    fps = [(round(0.1 * k, 1), 35, 20 + k) for k in range(1, 10)]
    r = compute_froc([SlideEval("t", det(*tps, *fps), True, m, [])])
    # Reversed curve (FP, sens): (0,0) (0,.25) (1,.25) (1,.5) (2,.5) (3,.5) (3,.75) (4,.75)…
    assert r.sensitivities == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.75, 0.75])
    assert r.score == pytest.approx(0.5)


def test_no_lesion_at_all_is_an_error_not_a_division_by_zero():
    with pytest.raises(EvaluationError, match="at least one tumour slide"):
        compute_froc([normal("n", [(0.5, 10, 10)])])


def test_detections_outside_the_mask_are_false_positives():
    m = two_lesion_mask()
    d = np.array([[0.9, -40.0, 100.0], [0.8, 100.0 * DS, 5.0], [0.7, 5.0, 1e7]])
    r = compute_froc([SlideEval("t", d, True, m, [])])
    assert r.n_fp == 3


# --- evaluation mask: growth and ITC ---------------------------------------------------


def test_official_thresholds():
    assert growth_threshold_px() == pytest.approx(75 / (0.243 * 32 * 2))  # 4.823
    assert itc_threshold_px() == pytest.approx(275 / (0.243 * 32))  # 35.37


def test_75um_growth_turns_a_near_miss_into_a_hit():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:60, 20:60] = 1  # 40 px = 311 µm: not an ITC
    labels, itc = evaluation_mask_from_mask(mask)
    assert itc == [] and labels.max() == 1
    # Distance 4 px (31 µm) from the edge < 4.82 px joins the lesion; 5 px does not.
    assert labels[40, 59 + 4] == 1 and labels[40, 59 + 5] == 0
    d = det((0.9, 40, 63), (0.8, 40, 64))
    r = compute_froc([SlideEval("t", d, True, labels, itc), normal("n")])
    assert r.slides[0].lesion_scores == pytest.approx([0.9])
    assert r.slides[0].n_fp == 1


def test_growth_merges_lesions_closer_than_75um_and_fills_holes():
    mask = np.zeros((120, 120), np.uint8)
    mask[10:60, 10:60] = 1
    mask[10:60, 68:110] = 2  # 8 px gap (62 µm) -> one lesion after growth
    mask[30:40, 30:40] = 0  # hole inside the first lesion
    labels, itc = evaluation_mask_from_mask(mask)
    assert labels.max() == 1 and itc == []
    assert labels[35, 35] == 1 and labels[35, 64] == 1


def _brute_grown_major_axis(mask: np.ndarray) -> float:
    """Independent: grow by brute-force distances, then 4·sqrt(largest eigenvalue of the
    central second moments) (skimage's major_axis_length)."""
    t = growth_threshold_px()
    ty, tx = np.nonzero(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    d2 = (yy[..., None] - ty) ** 2 + (xx[..., None] - tx) ** 2
    grown = np.sqrt(d2.min(axis=-1)) < t
    ys, xs = np.nonzero(grown)
    cov = np.cov(np.stack([ys, xs]).astype(float), bias=True)
    return 4 * np.sqrt(np.linalg.eigvalsh(cov).max())


@pytest.mark.parametrize(
    "side, expect_itc", [(1, True), (16, True), (22, True), (23, False), (40, False)]
)
def test_itc_by_major_axis_of_the_grown_lesion(side, expect_itc):
    # Square of side s grown by ~4.8 px: major axis ~ 1.155·(s + 9.6) px vs 35.37 px;
    # 22 -> 34.2 px (ITC), 23 -> 35.39 px (not: just above 35.37).
    mask = np.zeros((80, 80), np.uint8)
    mask[20:20 + side, 20:20 + side] = 1
    labels, itc = evaluation_mask_from_mask(mask)
    assert labels.max() == 1
    major = _brute_grown_major_axis(mask)
    assert (major < itc_threshold_px()) == expect_itc
    assert (itc == [1]) == expect_itc


def test_empty_mask_has_no_lesions():
    labels, itc = evaluation_mask_from_mask(np.zeros((10, 10), np.uint8))
    assert labels.max() == 0 and itc == []


def test_polygon_rasterisation_with_exclusion():
    # 64 x 64 level-5 px square with a 20 x 20 px exclusion in the middle -> a hole that
    # fill_holes closes again (the official masks behave the same way).
    s = 64 * DS
    square = np.array([[0, 0], [s, 0], [s, s], [0, s]], float) + 10 * DS
    hole = np.array([[0, 0], [20, 0], [20, 20], [0, 20]], float) * DS + 30 * DS
    labels, itc = evaluation_mask_from_polygons([square], (200 * DS, 200 * DS),
                                                exclusion_polygons=[hole])
    assert labels.shape == (200, 200) and labels.max() == 1 and itc == []
    assert labels[40, 40] == 1  # excluded then refilled as an enclosed hole
    assert labels[10, 10] == 1 and labels[73, 73] == 1 and labels[10 + 64 + 5, 40] == 0


def test_real_ncrf_outlines_give_the_expected_lesions():
    from napari_wsi_detect.annotations.camelyon_json import (
        read_camelyon_json,
        split_camelyon_json,
    )

    # Tumor_001: two outlines ~950 µm apart, each > 500 µm across -> 2 lesions, no ITC.
    tumour, excl = split_camelyon_json(read_camelyon_json(
        shared_file("annotations/camelyon16-ncrf-json/Tumor_001.json")))
    labels, itc = evaluation_mask_from_polygons(tumour, exclusion_polygons=excl)
    assert labels.max() == 2 and itc == []
    # A detection at the centre of a vertex-bounded box of outline _1 hits a lesion.
    cx, cy = tumour[1].mean(axis=0)
    r = compute_froc([SlideEval("Tumor_001", np.array([[0.9, cx, cy], [0.5, 10, 10]]),
                                True, labels, itc)])
    assert r.n_tp == 1 and r.n_fp == 1 and r.n_lesions == 2

    # Tumor_098: a 37 x 48 µm outline far from four outlines within 75 µm of each other
    # -> one ITC and one merged lesion.
    tumour, excl = split_camelyon_json(read_camelyon_json(
        shared_file("annotations/camelyon16-ncrf-json/Tumor_098.json")))
    labels, itc = evaluation_mask_from_polygons(tumour, exclusion_polygons=excl)
    assert labels.max() == 2 and len(itc) == 1
    small = tumour[0].mean(axis=0)  # "Tumor1", the 37 x 48 µm one
    assert labels[int(small[1]) // DS, int(small[0]) // DS] == itc[0]


# --- brute-force port of the official script -------------------------------------------


def _official_froc(cases, n_slides):
    """Literal port of Evaluation_FROC.py's compute_FP_TP_Probs + computeFROC + interp.
    `cases` = [(probs, xs, ys, is_tumor, mask, itc)]; xs/ys ints."""
    froc_fp, froc_tp, froc_n = [], [], []
    for probs, xs, ys, is_tumor, mask, itc in cases:
        max_label = int(np.amax(mask)) if is_tumor else 0
        fp_probs = []
        tp_probs = np.zeros((max_label,), dtype=np.float32)
        if is_tumor:
            for i in range(len(xs)):
                hit = mask[ys[i] // 32, xs[i] // 32]
                if hit == 0:
                    fp_probs.append(probs[i])
                elif hit not in itc:
                    if probs[i] > tp_probs[hit - 1]:
                        tp_probs[hit - 1] = probs[i]
        else:
            fp_probs = list(probs)
        froc_fp.append(fp_probs)
        froc_tp.append(tp_probs)
        froc_n.append(max_label - len(itc))
    unlisted_fps = [item for sub in froc_fp for item in sub]
    unlisted_tps = [item for sub in froc_tp for item in sub]
    total_fps, total_tps = [], []
    all_probs = sorted(set(unlisted_fps + unlisted_tps))
    for thresh in all_probs[1:]:
        total_fps.append((np.asarray(unlisted_fps) >= thresh).sum())
        total_tps.append((np.asarray(unlisted_tps) >= thresh).sum())
    total_fps.append(0)
    total_tps.append(0)
    total_fps = np.asarray(total_fps) / float(n_slides)
    total_sens = np.asarray(total_tps) / float(sum(froc_n))
    eval_tps = np.interp([0.25, 0.5, 1, 2, 4, 8], total_fps[::-1], total_sens[::-1])
    return total_fps, total_sens, eval_tps


@pytest.mark.parametrize("seed", range(12))
def test_matches_a_literal_port_of_the_official_script(seed):
    rng = np.random.default_rng(seed)
    cases, slides = [], []
    for s in range(int(rng.integers(2, 7))):
        is_tumor = s == 0 or rng.random() < 0.5
        n = int(rng.integers(0, 40))
        # Coarse scores (ties between TP and FP, and across slides) or fine ones.
        probs = (rng.integers(1, 8, n) / 8.0 if seed % 2 else rng.random(n)).tolist()
        xs = rng.integers(0, 64 * 32, n).tolist()
        ys = rng.integers(0, 64 * 32, n).tolist()
        if is_tumor:
            raw = np.zeros((64, 64), np.uint8)
            for _ in range(int(rng.integers(1, 5))):
                r, c, h, w = rng.integers(0, 56, 2).tolist() + rng.integers(1, 30, 2).tolist()
                raw[r:r + h, c:c + w] = 1
            mask, itc = evaluation_mask_from_mask(raw)
        else:
            mask, itc = None, []
        cases.append((probs, xs, ys, is_tumor, mask, itc))
        slides.append(SlideEval(f"s{s}", np.column_stack([probs, xs, ys]) if n else
                                np.zeros((0, 3)), is_tumor, mask, itc))
    fps, sens, eval_tps = _official_froc(cases, len(slides))
    if not np.isfinite(sens).all():  # every lesion an ITC: the official divides by zero
        with pytest.raises(EvaluationError):
            compute_froc(slides)
        return
    r = compute_froc(slides)
    np.testing.assert_array_equal(r.fp_per_slide, fps)
    np.testing.assert_array_equal(r.sensitivity, sens)
    np.testing.assert_array_equal(r.sensitivities, eval_tps)
    assert r.score == float(np.mean(eval_tps))


# --- slide AUC -------------------------------------------------------------------------


def test_slide_auc_perfect_constant_and_ties():
    assert slide_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]).auc == 1.0
    assert slide_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]).auc == 0.0
    assert slide_auc([0.5] * 4, [1, 0, 1, 0]).auc == 0.5
    # pairs (pos, neg): (.9,.5)=1 (.9,.3)=1 (.5,.5)=½ (.5,.3)=1 -> 3.5 / 4
    roc = slide_auc([0.9, 0.5, 0.5, 0.3], [1, 1, 0, 0])
    assert roc.auc == pytest.approx(0.875)
    assert roc.fpr[0] == 0 and roc.tpr[0] == 0 and roc.fpr[-1] == 1 and roc.tpr[-1] == 1
    assert np.trapezoid(roc.tpr, roc.fpr) == pytest.approx(roc.auc)


def test_slide_auc_needs_both_classes():
    with pytest.raises(EvaluationError, match="both tumour and normal"):
        slide_auc([0.3, 0.4], [1, 1])


# --- inputs and CLI --------------------------------------------------------------------


def _write_run(folder, slide, features, slide_score=None, engine_form=False):
    folder.mkdir(parents=True)
    fc = {"type": "FeatureCollection", "features": features}
    (folder / "regions.geojson").write_text(json.dumps(fc))
    # The engine's summary.json nests the slide: {"slide": {"path": ..., "mpp": ...}}.
    summary = {"slide": {"path": str(slide), "mpp": 0.243} if engine_form else str(slide)}
    if slide_score is not None:
        summary["slide_score"] = slide_score
    (folder / "summary.json").write_text(json.dumps(summary))


def _feature(prob, x, y, peak=True):
    ring = [[x - 50, y - 50], [x + 50, y - 50], [x + 50, y + 50], [x - 50, y + 50],
            [x - 50, y - 50]]
    meas = {"max_probability": prob}
    if peak:
        meas |= {"peak_x": x, "peak_y": y}
    return {"type": "Feature", "id": "0", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection", "measurements": meas}}


def test_cli_end_to_end_on_run_folders_and_mask_tiff(tmp_path, capsys):
    import tifffile

    from napari_wsi_detect.cli import main

    mask = np.zeros((96, 128), np.uint8)
    mask[10:50, 10:50] = 1
    mask[60:90, 80:120] = 2
    tifffile.imwrite(tmp_path / "slide_a.tumour-mask.tif", mask)
    x1, y1 = at(30, 30)
    x2, y2 = at(75, 100)
    _write_run(tmp_path / "runs" / "a", "/data/slide_a.tif",
               [_feature(0.9, x1, y1), _feature(0.6, *at(5, 70)),
                # no peak: the polygon centroid (x2, y2) is used -> hits lesion 2
                _feature(0.7, x2, y2, peak=False)])
    _write_run(tmp_path / "runs" / "b", "/data/normal_b.svs", [_feature(0.8, *at(3, 3))],
               slide_score=0.55, engine_form=True)
    png, out = tmp_path / "froc.png", tmp_path / "froc.json"
    rc = main(["evaluate", "froc", "--detections", str(tmp_path / "runs"),
               "--truth", str(tmp_path), "--normal", "normal_b",
               "--plot", str(png), "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    # FPs [0.6, 0.8], TPs [0.9, 0.7]; thresholds 0.7, 0.8, 0.9 over 2 slides and 2 lesions:
    # (1/2, 1), (1/2, 1/2), (0, 1/2), (0, 0) -> np.interp: 0.5 at 0.25 FP, then 1.
    assert "FROC score: 0.9167" in text
    assert "sensitivity @ 0.25 FP/slide: 0.5000" in text
    # slide scores: a = max prob 0.9 (no summary score), b = summary's 0.55 -> AUC 1
    assert "slide AUC: 1.0000" in text
    result = json.loads(out.read_text())
    assert result["froc"]["n_lesions"] == 2 and result["froc"]["n_fp"] == 2
    assert result["slide_scores"]["normal_b"]["score"] == 0.55
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_official_csv_and_unmatched_slide_error(tmp_path, capsys):
    from napari_wsi_detect.cli import main

    ann = shared_file("annotations/camelyon16-ncrf-json/Tumor_001.json")
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "Tumor_001.csv").write_text("prob,x,y\n0.9,71246,133236\n0.4,10,10\n")
    (csv_dir / "Normal_001.csv").write_text("0.3,500,500\n")
    rc = main(["evaluate", "froc", "--detections", str(csv_dir), "--truth", str(ann)])
    assert rc == 2
    assert "Normal_001" in capsys.readouterr().err
    rc = main(["evaluate", "froc", "--detections", str(csv_dir), "--truth", str(ann),
               "--unmatched-are-normal"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "lesions: 2 (+0 ITC ignored)" in text and "lesions hit: 1" in text


def test_bad_csv_line_is_reported_with_its_line_number(tmp_path):
    from napari_wsi_detect.evaluation.froc_io import read_detection_csv

    p = tmp_path / "x.csv"
    p.write_text("0.5,1,2\n0.7,abc,3\n")
    with pytest.raises(EvaluationError, match="line 2"):
        read_detection_csv(p)


def test_slide_ids_from_file_names():
    from napari_wsi_detect.evaluation.froc_io import slide_id_from_path

    assert slide_id_from_path("/m/Tumor_001_Mask.tif") == "Tumor_001"
    assert slide_id_from_path("x/phantom.tumour-mask.tif") == "phantom"
    assert slide_id_from_path("Tumor_001.xml") == "Tumor_001"
    assert slide_id_from_path("a.b.geojson.gz") == "a.b"
    assert slide_id_from_path("Normal_017.csv") == "Normal_017"


def test_truth_from_xml_geojson_and_pyramid_mask(tmp_path):
    import tifffile

    from napari_wsi_detect.evaluation.froc_io import load_truth, load_truth_file

    s = 40 * DS  # a 40 px (311 µm) square at (10, 10) px, in level-0 px
    ring = [[10 * DS, 10 * DS], [10 * DS + s, 10 * DS], [10 * DS + s, 10 * DS + s],
            [10 * DS, 10 * DS + s]]
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in
                     enumerate(ring))
    (tmp_path / "Tumor_042.xml").write_text(
        '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" '
        f'PartOfGroup="_0"><Coordinates>{coords}</Coordinates></Annotation>'
        "</Annotations></ASAP_Annotations>")
    t = load_truth_file(tmp_path / "Tumor_042.xml")
    assert t.slide_id == "Tumor_042" and t.is_tumour and t.n_lesions == 1
    # Stored cropped to the grown lesion: rows/cols 10..49 grown by 4 px -> 6..53.
    assert t.mask_offset == (6, 6) and t.evaluation_mask.shape == (48, 48)
    r = compute_froc([SlideEval("x", det((0.9, 30, 30), (0.5, 5, 5), (0.4, 53, 30)), True,
                                t.evaluation_mask, t.itc_labels, mask_offset=t.mask_offset),
                      normal("n")])
    assert r.slides[0].lesion_scores == pytest.approx([0.9]) and r.slides[0].n_fp == 1
    assert r.slides[0].n_extra_hits == 1  # (53, 30): 4 px off the edge, inside the growth

    # GeoJSON: a Tumor polygon with a hole (filled again) and an "Other" polygon (ignored).
    far = [[p[0] + 100 * DS, p[1]] for p in ring]
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
         "properties": {"classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [far + far[:1]]},
         "properties": {"classification": {"name": "Other", "color": [0, 0, 200]}}},
    ]}
    (tmp_path / "gj.geojson").write_text(json.dumps(fc))
    t = load_truth_file(tmp_path / "gj.geojson")
    assert t.is_tumour and t.n_lesions == 1 and t.evaluation_mask.max() == 1

    # Pyramidal mask: only the level at downsample 32 is read.
    base = np.zeros((64 * DS, 64 * DS), np.uint8)
    base[10 * DS:50 * DS, 10 * DS:50 * DS] = 255
    with tifffile.TiffWriter(tmp_path / "Tumor_043_Mask.tif") as w:
        w.write(base, subifds=1, tile=(256, 256))
        w.write(base[::DS, ::DS], subfiletype=1)
    (tmp_path / "Tumor_043.tif").write_bytes(b"not a mask: the slide itself is ignored")
    truths = {t.slide_id: t for t in load_truth([tmp_path])}
    assert set(truths) == {"Tumor_042", "Tumor_043", "gj"}
    m = truths["Tumor_043"].evaluation_mask
    assert m.shape == (48, 48) and truths["Tumor_043"].mask_offset == (6, 6)
    assert truths["Tumor_043"].n_lesions == 1


def test_normal_truth_and_listed_normal_with_tumour_is_an_error(tmp_path):
    from napari_wsi_detect.evaluation.froc_io import (
        DetectionSet,
        load_truth_file,
        match_slides,
    )

    t = load_truth_file(shared_file("annotations/camelyon16-ncrf-json/Normal_017.json"))
    assert not t.is_tumour and t.evaluation_mask is None
    tumour = load_truth_file(shared_file("annotations/camelyon16-ncrf-json/Tumor_001.json"))
    d = [DetectionSet("tumor_001", np.zeros((0, 3)), tmp_path)]
    with pytest.raises(EvaluationError, match="listed as normal"):
        match_slides(d, [tumour], normal_ids=["Tumor_001"])
    m = match_slides(d, [tumour, t])
    assert m.slide_labels == [True] and m.slide_scores == [0.0]
    assert any("Normal_017" in w for w in m.warnings)


def test_phantom_mask_and_geojson_truths_agree(phantom_small):
    from napari_wsi_detect.evaluation.froc_io import load_truth_file

    stem = phantom_small.with_suffix("")
    from_mask = load_truth_file(stem.with_name(stem.name + ".tumour-mask.tif"))
    from_polygons = load_truth_file(phantom_small.with_suffix(".geojson"))
    assert from_mask.slide_id == from_polygons.slide_id == "phantom"
    assert from_mask.is_tumour and from_mask.n_lesions >= 1
    assert from_mask.itc_labels == from_polygons.itc_labels
    assert from_mask.mask_offset == from_polygons.mask_offset
    np.testing.assert_array_equal(from_mask.evaluation_mask, from_polygons.evaluation_mask)
