"""Point-detection F1 by the MIDOG challenges' rules (METHODS §2, "Evaluation").

* A detection is a true positive when it lies within `radius_um` (7.5 µm: 30 px at
  0.25 µm/px) of a truth centroid, distance <= radius. The radius is converted to
  level-0 pixels with each case's own pixel size.
* One-to-one, greedy: each truth point in turn (file order) takes the nearest unused
  detection within the radius (equal distances: the higher score, then the detection
  listed first). A truth point left without one is a false negative; a detection never
  taken is a false positive. Greedy is not optimal matching: a detection between two
  truths goes to the first of them even when another detection could have served it.
* TP, FP and FN are summed over all cases before precision, recall and F1 (micro
  average); F1 = 2 TP / (2 TP + FP + FN).
* The F1-vs-threshold curve keeps, at each threshold t, the detections with score >= t
  and matches again (matching depends on which detections are present). Thresholds are
  the distinct detection scores (at most `MAX_THRESHOLDS`, else that many quantiles of
  them). The best point of the curve is chosen on the data evaluated: an optimistic
  figure, not one to report as held-out performance.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .froc import EvaluationError, check_level0_mpp

RADIUS_UM = 7.5
MAX_THRESHOLDS = 512


@dataclass
class CaseEval:
    """One case (slide, image or field): truth centroids and scored detections, both in
    level-0 px of an image of `mpp` µm/px."""

    case_id: str
    truth: np.ndarray  # (N, 2) x, y
    detections: np.ndarray  # (M, 3) score, x, y
    mpp: float

    def __post_init__(self) -> None:
        self.truth = np.asarray(self.truth, dtype=np.float64).reshape(-1, 2)
        self.detections = np.asarray(self.detections, dtype=np.float64).reshape(-1, 3)
        for what, arr in (("truth points", self.truth), ("detections", self.detections)):
            if not np.all(np.isfinite(arr)):
                raise EvaluationError(f"case {self.case_id}: NaN or infinite values among "
                                      f"the {what}")
        self.mpp = check_level0_mpp(self.mpp)


@dataclass
class CaseCounts:
    case_id: str
    tp: int
    fp: int
    fn: int
    mpp: float
    radius_px: float

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "mpp": self.mpp,
                "radius_px": self.radius_px, **_rates(self.tp, self.fp, self.fn)}


@dataclass
class F1Result:
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    radius_um: float
    threshold: float | None  # the score cut applied before counting (None: all kept)
    cases: list[CaseCounts]
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    f1_curve: np.ndarray = field(default_factory=lambda: np.zeros(0))
    precision_curve: np.ndarray = field(default_factory=lambda: np.zeros(0))
    recall_curve: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def best(self) -> tuple[float, float] | None:
        """(threshold, F1) of the curve's best point (ties: the lowest threshold)."""
        finite = np.isfinite(self.f1_curve)
        if not finite.any():
            return None
        k = int(np.argmax(np.where(finite, self.f1_curve, -1.0)))
        return float(self.thresholds[k]), float(self.f1_curve[k])

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "rules": "MIDOG: TP within radius_um of a truth centroid, greedy one-to-one "
                     "(each truth takes the nearest unused detection), micro-averaged",
            "radius_um": self.radius_um,
            "threshold": self.threshold,
            "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "precision": _json(self.precision), "recall": _json(self.recall),
            "f1": _json(self.f1),
            "n_cases": len(self.cases),
            "best_on_this_data": (None if best is None
                                  else {"threshold": best[0], "f1": best[1]}),
            "cases": {c.case_id: c.to_dict() for c in self.cases},
            "curve": {
                "threshold": self.thresholds.tolist(),
                "f1": [_json(v) for v in self.f1_curve],
                "precision": [_json(v) for v in self.precision_curve],
                "recall": [_json(v) for v in self.recall_curve],
            },
        }


def _json(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _rates(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    p, r, f = precision_recall_f1(tp, fp, fn)
    return {"precision": _json(p), "recall": _json(r), "f1": _json(f)}


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """(precision, recall, F1); NaN where the denominator is 0 (no detections: no
    precision; no truth: no recall; neither: no F1)."""
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return precision, recall, f1


# --- matching --------------------------------------------------------------------------------
def candidate_pairs(truth: np.ndarray, detections: np.ndarray, radius_px: float
                    ) -> list[np.ndarray]:
    """For each truth point, the detection indices within `radius_px`, in the order it
    would take them: nearest first, then higher score, then lower index."""
    from scipy.spatial import cKDTree

    if not len(truth) or not len(detections):
        return [np.zeros(0, np.int64) for _ in range(len(truth))]
    xy = detections[:, 1:3]
    near = cKDTree(xy).query_ball_point(truth, r=radius_px)
    out = []
    for t, idx in zip(truth, near, strict=True):
        idx = np.asarray(idx, dtype=np.int64)
        d2 = np.sum((xy[idx] - t) ** 2, axis=1)
        keep = d2 <= radius_px * radius_px  # exact test; the tree's is the same up to fp
        idx, d2 = idx[keep], d2[keep]
        order = np.lexsort((idx, -detections[idx, 0], d2))
        out.append(idx[order])
    return out


def greedy_match(candidates: Sequence[np.ndarray], kept: np.ndarray) -> np.ndarray:
    """Detection index matched to each truth point (-1: none), among the detections
    where `kept` is True: each truth in turn takes its first unused candidate."""
    used = ~np.asarray(kept, dtype=bool)  # detections not kept are never available
    match = np.full(len(candidates), -1, np.int64)
    for i, cand in enumerate(candidates):
        for j in cand:
            if not used[j]:
                used[j] = True
                match[i] = j
                break
    return match


def _counts(candidates: Sequence[np.ndarray], kept: np.ndarray, n_truth: int
            ) -> tuple[int, int, int]:
    tp = int(np.count_nonzero(greedy_match(candidates, kept) >= 0))
    return tp, int(np.count_nonzero(kept)) - tp, n_truth - tp


def curve_thresholds(scores: np.ndarray, limit: int = MAX_THRESHOLDS) -> np.ndarray:
    """Distinct scores, ascending; more than `limit` of them: `limit` quantiles."""
    values = np.unique(np.asarray(scores, dtype=np.float64))
    if len(values) > limit:
        values = np.unique(np.quantile(values, np.linspace(0.0, 1.0, limit),
                                       method="inverted_cdf"))
    return values


def evaluate_f1(cases: Sequence[CaseEval], radius_um: float = RADIUS_UM,
                threshold: float | None = None, curve: bool = True) -> F1Result:
    """MIDOG F1 over `cases` (module docstring). `threshold`: keep only detections with
    score >= threshold before counting (the curve always spans every score)."""
    if not cases:
        raise EvaluationError("no cases to evaluate: give detections and truth for at "
                              "least one case")
    if not (isinstance(radius_um, (int, float)) and math.isfinite(radius_um)
            and radius_um > 0):
        raise EvaluationError(f"the matching radius must be a positive number of µm, "
                              f"got {radius_um!r}")
    prepared = []
    for c in cases:
        radius_px = radius_um / c.mpp
        prepared.append((c, radius_px, candidate_pairs(c.truth, c.detections, radius_px)))
    per_case = []
    for c, radius_px, cand in prepared:
        kept = (np.ones(len(c.detections), bool) if threshold is None
                else c.detections[:, 0] >= threshold)
        tp, fp, fn = _counts(cand, kept, len(c.truth))
        per_case.append(CaseCounts(c.case_id, tp, fp, fn, c.mpp, radius_px))
    tp, fp, fn = (sum(getattr(k, a) for k in per_case) for a in ("tp", "fp", "fn"))
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    result = F1Result(tp, fp, fn, precision, recall, f1, float(radius_um), threshold,
                      per_case)
    if curve:
        scores = np.concatenate([c.detections[:, 0] for c in cases])
        ts = curve_thresholds(scores)
        tp_t = sum((_tp_curve(c.detections[:, 0], cand, ts) for c, _, cand in prepared),
                   np.zeros(len(ts), np.int64))
        kept_t = len(scores) - np.searchsorted(np.sort(scores), ts, side="left")
        n_truth = sum(len(c.truth) for c in cases)
        rows = [precision_recall_f1(int(tp), int(k - tp), int(n_truth - tp))
                for tp, k in zip(tp_t, kept_t, strict=True)]
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        result.thresholds = ts
        result.precision_curve, result.recall_curve, result.f1_curve = arr.T.copy()
    return result


def _tp_curve(scores: np.ndarray, candidates: Sequence[np.ndarray], ts: np.ndarray
              ) -> np.ndarray:
    """True positives of one case at each threshold of `ts` (detections with score >= t),
    without re-matching the whole case per threshold: truth points only compete within
    a connected group (truths sharing candidate detections), and a group's count changes
    only at its own detections' scores. A lone pair (one truth, one detection, no other
    link: most of them) is a TP exactly while its score is kept."""
    owners: dict[int, list[int]] = {}
    for i, cand in enumerate(candidates):
        for j in cand.tolist():
            owners.setdefault(j, []).append(i)
    tp = np.zeros(len(ts), np.int64)
    lone: list[float] = []
    seen = np.zeros(len(candidates), bool)
    for i, cand in enumerate(candidates):
        if seen[i] or not len(cand):
            continue
        if len(cand) == 1 and len(owners[int(cand[0])]) == 1:
            seen[i] = True
            lone.append(float(scores[cand[0]]))
            continue
        group, todo = set(), [i]  # the truths linked to i through shared detections
        while todo:
            k = todo.pop()
            if k in group:
                continue
            group.add(k)
            for j in candidates[k].tolist():
                todo.extend(owners[j])
        members = sorted(group)  # greedy order = truth order
        seen[members] = True
        own = np.unique(scores[np.unique(np.concatenate([candidates[k] for k in members]))])
        sub = [candidates[k] for k in members]
        values = np.array([np.count_nonzero(greedy_match(sub, scores >= s) >= 0)
                           for s in own] + [0], np.int64)
        tp += values[np.searchsorted(own, ts, side="left")]
    if lone:
        tp += len(lone) - np.searchsorted(np.sort(np.asarray(lone)), ts, side="left")
    return tp


# --- figure ----------------------------------------------------------------------------------
def plot_f1_curve(result: F1Result, path: str | os.PathLike,
                  title: str = "Mitosis detection") -> Path:
    """F1, precision and recall against the score threshold, as a PNG (atomic)."""
    from .._atomic import atomic_path
    from .plots import _figure

    fig = _figure()
    ax = fig.subplots(1, 1)
    t = result.thresholds
    if len(t):
        ax.plot(t, result.f1_curve, "-", color="tab:red", lw=2, label="F1")
        ax.plot(t, result.precision_curve, "--", color="tab:blue", label="precision")
        ax.plot(t, result.recall_curve, ":", color="tab:green", lw=2, label="recall")
        best = result.best
        if best is not None:
            ax.plot([best[0]], [best[1]], "o", color="tab:red",
                    label=f"best on this data: F1 {best[1]:.3f} at {best[0]:.3g}")
    if result.threshold is not None and math.isfinite(result.f1):
        ax.axvline(result.threshold, color="grey", lw=1, alpha=0.6)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("detection score threshold (kept: score ≥ threshold)")
    ax.set_ylabel("F1 / precision / recall")
    shown = "–" if not math.isfinite(result.f1) else f"{result.f1:.3f}"
    ax.set_title(
        f"{title}: F1 {shown}"
        + (f" at score ≥ {result.threshold:g}" if result.threshold is not None else "")
        + f" (TP {result.tp}, FP {result.fp}, FN {result.fn}; "
        f"{len(result.cases)} case{'s' if len(result.cases) != 1 else ''}, "
        f"radius {result.radius_um:g} µm)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
