"""MIDOG point-detection F1: greedy one-to-one matching within 7.5 µm, micro average."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_wsi_detect.evaluation.detection import (
    CaseEval,
    evaluate_f1,
    plot_f1_curve,
    precision_recall_f1,
)
from napari_wsi_detect.evaluation.froc import EvaluationError


def det(*rows):
    """Detections (score, x, y)."""
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def reference_counts(truth, dets, radius_px, threshold=None):
    """Plain-loop reference of the rules: each truth in turn takes the nearest unused
    detection within the radius; ties: higher score, then the lower index."""
    keep = [j for j in range(len(dets)) if threshold is None or dets[j][0] >= threshold]
    used: set[int] = set()
    tp = 0
    for tx, ty in truth:
        best = None
        for j in keep:
            if j in used:
                continue
            d = math.hypot(dets[j][1] - tx, dets[j][2] - ty)
            if d <= radius_px:
                key = (d, -dets[j][0], j)
                if best is None or key < best:
                    best = key
        if best is not None:
            used.add(best[2])
            tp += 1
    return tp, len(keep) - tp, len(truth) - tp


def one(truth, dets, mpp=0.25, **kw):
    return evaluate_f1([CaseEval("c", np.asarray(truth, float), dets, mpp)], **kw)


def test_radius_is_7_5_um_inclusive_and_follows_each_case_mpp():
    truth = [(100.0, 100.0)]
    assert one(truth, det((0.9, 130.0, 100.0))).tp == 1  # exactly 30 px at 0.25 µm/px
    assert one(truth, det((0.9, 130.01, 100.0))).tp == 0
    # The same 20 px offset: TP at 0.25 µm/px (5 µm), FP + FN at 0.5 µm/px (10 µm).
    r = evaluate_f1([
        CaseEval("fine", [(50, 50)], det((0.8, 70, 50)), 0.25),
        CaseEval("coarse", [(50, 50)], det((0.8, 70, 50)), 0.5),
    ], curve=False)
    assert [(c.tp, c.fp, c.fn) for c in r.cases] == [(1, 0, 0), (0, 1, 1)]
    assert r.cases[1].radius_px == pytest.approx(15.0)
    assert one(truth, det((0.9, 140.0, 100.0)), radius_um=10).tp == 1


def test_one_detection_near_two_truths_is_one_true_positive():
    truth = [(0, 0), (20, 0)]
    r = one(truth, det((0.9, 12, 0)))
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    # A second detection near the second truth only: both found.
    r = one(truth, det((0.9, 12, 0), (0.8, 45, 0)))
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)


def test_matching_is_greedy_in_truth_order_not_optimal():
    # A at 0 takes d0 (20 px) over d1 (25 px); B at 40 then has no unused detection
    # within 30 px, though an optimal assignment (A-d1, B-d0) would find both.
    truth = [(0, 0), (40, 0)]
    dets = det((0.9, 20, 0), (0.9, -25, 0))
    assert (one(truth, dets).tp, one(truth, dets).fn) == (1, 1)
    # Truth order matters: B first takes d0, then A takes d1.
    assert one(truth[::-1], dets).tp == 2


def test_equal_distances_go_to_the_higher_score_then_the_first_listed():
    # A is 10 px from both; B (25, 0) is within 30 px of d_right only.
    truth = [(0, 0), (25, 0)]
    high_right = det((0.5, -10, 0), (0.9, 10, 0))
    assert one(truth, high_right).tp == 1  # A took the 0.9 on the right: B unmatched
    high_left = det((0.9, -10, 0), (0.5, 10, 0))
    assert one(truth, high_left).tp == 2
    same = det((0.7, 10, 0), (0.7, -10, 0))  # equal scores: the first listed (right)
    assert one(truth, same).tp == 1
    assert one(truth, same[::-1]).tp == 2


def test_micro_average_sums_counts_before_f1():
    cases = [
        CaseEval("a", [(0, 0)] * 1, det((0.9, 1, 1)), 0.25),  # TP 1
        CaseEval("b", [(i * 500.0, 0) for i in range(9)], det(), 0.25),  # FN 9
        CaseEval("c", np.zeros((0, 2)), det((0.9, 5, 5), (0.9, 900, 5)), 0.25),  # FP 2
    ]
    r = evaluate_f1(cases)
    assert (r.tp, r.fp, r.fn) == (1, 2, 9)
    assert r.f1 == pytest.approx(2 * 1 / (2 * 1 + 2 + 9))
    assert r.precision == pytest.approx(1 / 3) and r.recall == pytest.approx(0.1)
    per_case_mean = np.nanmean([c.to_dict()["f1"] or 0 for c in r.cases])
    assert r.f1 != pytest.approx(per_case_mean)


@pytest.mark.parametrize("seed", range(8))
def test_counts_and_curve_match_the_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    cases, refs = [], []
    for k in range(3):
        mpp = float(rng.choice([0.23, 0.25, 0.5]))
        truth = rng.uniform(0, 400, (int(rng.integers(0, 25)), 2)).round()
        near = truth[rng.random(len(truth)) < 0.7]
        jitter = near + rng.normal(0, 15, near.shape)
        noise = rng.uniform(0, 400, (int(rng.integers(0, 15)), 2))
        xy = np.vstack([jitter, noise]).round()  # rounding makes distance ties happen
        scores = rng.choice([0.3, 0.5, 0.7, 0.9], len(xy))  # and score ties
        dets = np.column_stack([scores, xy])
        cases.append(CaseEval(f"case{k}", truth, dets, mpp))
        refs.append((truth.tolist(), dets.tolist(), 7.5 / mpp))
    if not any(len(c.detections) for c in cases):
        cases[0] = CaseEval("case0", cases[0].truth, det((0.5, 1, 1)), cases[0].mpp)
        refs[0] = (refs[0][0], [[0.5, 1, 1]], refs[0][2])
    r = evaluate_f1(cases)
    want = np.sum([reference_counts(*ref) for ref in refs], axis=0)
    assert (r.tp, r.fp, r.fn) == tuple(want)
    assert list(r.thresholds) == sorted({d[0] for ref in refs for d in ref[1]})
    for t, f1 in zip(r.thresholds, r.f1_curve, strict=True):
        sums = np.sum([reference_counts(*ref, threshold=t) for ref in refs], axis=0)
        expect = precision_recall_f1(*sums)[2]
        assert (math.isnan(f1) and math.isnan(expect)) or f1 == pytest.approx(expect)
    # The threshold option is the same cut as the curve's.
    t = r.thresholds[len(r.thresholds) // 2]
    cut = evaluate_f1(cases, threshold=float(t), curve=False)
    assert (cut.tp, cut.fp, cut.fn) == tuple(
        np.sum([reference_counts(*ref, threshold=t) for ref in refs], axis=0))


def test_best_point_and_empty_edge_cases():
    r = one([(0, 0), (100, 0)], det((0.9, 0, 0), (0.2, 100, 0), (0.6, 300, 0)))
    # t=0.2: TP2 FP1 -> 0.8; t=0.6: TP1 FP1 FN1 -> 0.5; t=0.9: TP1 FN1 -> 0.667
    assert r.f1_curve == pytest.approx([0.8, 0.5, 2 / 3])
    assert r.best == (0.2, pytest.approx(0.8))
    nothing = one(np.zeros((0, 2)), det())
    assert math.isnan(nothing.f1) and nothing.best is None
    assert nothing.to_dict()["f1"] is None
    with pytest.raises(EvaluationError, match="no cases"):
        evaluate_f1([])
    with pytest.raises(EvaluationError, match="radius"):
        one([(0, 0)], det(), radius_um=0)
    with pytest.raises(EvaluationError, match="NaN"):
        CaseEval("x", [(math.nan, 0)], det(), 0.25)


def test_plot_writes_a_png(tmp_path):
    r = one([(0, 0), (100, 0)], det((0.9, 0, 0), (0.2, 100, 0), (0.6, 300, 0)))
    out = plot_f1_curve(r, tmp_path / "f1.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5000
