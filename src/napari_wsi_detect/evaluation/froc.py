"""Camelyon16 FROC, following the official evaluation script (`Evaluation_FROC.py`).

The rules (METHODS §4) and where each one lives here:

* Evaluation mask (in `evaluation_mask.py`) at level 5 (downsample 32) with L0_RESOLUTION = 0.243 µm/px: tumour
  pixels grown by 75 µm (Euclidean distance transform of the non-tumour pixels
  `< 75 / (0.243 · 32 · 2)` px, the official threshold, i.e. half of 75 µm as the
  script does), holes filled, 8-connected labels  -> `evaluation_mask_from_mask`.
* ITC: a label of that *grown* mask whose skimage `major_axis_length` (now `axis_major_length`) is
  `< 275 / (0.243 · 32)` px (the script's `computeITCList` runs on the evaluation mask,
  not on the original lesions)  -> same function.
* Detections (prob, x, y) in level-0 px; label = mask[y // 32, x // 32]; 0 -> FP,
  ITC -> ignored, lesion -> TP score = max of its hits, other hits neither TP nor FP;
  normal slides: every detection is an FP  -> `_score_slide`.
* Curve over the pooled scores, thresholds = sorted unique scores minus the smallest,
  a final (0, 0) point; score = mean of `np.interp` at 0.25 … 8 FP/slide  -> `compute_froc`.

Deliberate differences from the script (all documented in docs/evaluation.md): a detection
outside the mask (negative or beyond its last row/column) is an FP instead of an
IndexError / a wrap-around of negative indices; float coordinates are floored instead of
rejected by `int()`; FROC without a single non-ITC lesion raises instead of dividing by 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .evaluation_mask import (  # noqa: F401  (the FROC module's public names before the split)
    EVAL_FP_RATES,
    EVALUATION_DOWNSAMPLE,
    EVALUATION_LEVEL,
    GROWTH_UM,
    ITC_MAJOR_AXIS_UM,
    L0_RESOLUTION,
    MAX_EVAL_MASK_CELLS,
    EvaluationError,
    check_level0_mpp,
    check_mask_cells,
    evaluation_mask_from_mask,
    evaluation_mask_from_polygons,
    growth_threshold_px,
    itc_threshold_px,
    polygons_extent,
    rasterise_polygons,
)

# --------------------------------------------------------------------------------------
# Scoring


@dataclass
class SlideEval:
    """One slide to evaluate.

    `detections`: (N, 3) array of (probability, x, y), x/y in level-0 pixels.
    A tumour slide has `evaluation_mask` (labels at `downsample`) and `itc_labels`;
    a normal slide has `is_tumour=False` and no mask (every detection is an FP).
    """

    slide_id: str
    detections: np.ndarray
    is_tumour: bool = True
    evaluation_mask: np.ndarray | None = None
    itc_labels: Sequence[int] = ()
    downsample: int = EVALUATION_DOWNSAMPLE
    # (row, col) of evaluation_mask[0, 0] in the full level-5 mask: masks may be cropped
    # to their lesions so that hundreds of slides fit in memory (see `crop_to_lesions`).
    mask_offset: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        det = np.asarray(self.detections, dtype=float).reshape(-1, 3) if len(
            self.detections
        ) else np.zeros((0, 3))
        if not np.all(np.isfinite(det)):
            raise EvaluationError(
                f"slide {self.slide_id}: detections contain NaN or infinite values"
            )
        self.detections = det
        if self.is_tumour and self.evaluation_mask is None:
            raise EvaluationError(
                f"slide {self.slide_id} is marked tumour but has no evaluation mask"
            )


@dataclass
class SlideOutcome:
    """What happened to one slide's detections (for reports and debugging)."""

    slide_id: str
    is_tumour: bool
    n_detections: int
    n_lesions: int  # non-ITC lesions
    n_itc: int
    n_fp: int
    n_itc_hits: int  # ignored
    n_extra_hits: int  # second and later hits on a lesion (neither TP nor FP)
    lesion_scores: list[float]  # per non-ITC lesion, 0 = missed


@dataclass
class FrocResult:
    thresholds: np.ndarray  # threshold of each curve point; the final point is +inf
    fp_per_slide: np.ndarray
    sensitivity: np.ndarray
    eval_fp_rates: tuple[float, ...]
    sensitivities: np.ndarray  # at eval_fp_rates
    score: float
    n_slides: int
    n_tumour_slides: int
    n_lesions: int
    n_itc: int
    n_detections: int
    n_fp: int
    n_tp: int  # lesions hit by a detection with probability > 0
    slides: list[SlideOutcome] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "sensitivities": {
                str(r): float(s)
                for r, s in zip(self.eval_fp_rates, self.sensitivities, strict=True)
            },
            "n_slides": self.n_slides,
            "n_tumour_slides": self.n_tumour_slides,
            "n_lesions": self.n_lesions,
            "n_itc": self.n_itc,
            "n_detections": self.n_detections,
            "n_fp": self.n_fp,
            "n_tp": self.n_tp,
            "curve": {
                "threshold": [_json_float(t) for t in self.thresholds],
                "fp_per_slide": [float(v) for v in self.fp_per_slide],
                "sensitivity": [float(v) for v in self.sensitivity],
            },
            "slides": [vars(s) for s in self.slides],
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def crop_to_lesions(labels: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(smallest sub-array holding every label, its (row, col) offset), in uint16 when the
    labels fit: a full Camelyon level-5 mask is ~3000 x 7000 px, its lesions far less."""
    if not labels.any():
        return np.zeros((0, 0), np.uint16), (0, 0)
    rows = np.flatnonzero(labels.any(axis=1))
    cols = np.flatnonzero(labels.any(axis=0))
    crop = labels[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    dtype = np.uint16 if crop.max() < 2**16 else np.int32
    return np.ascontiguousarray(crop, dtype=dtype), (int(rows[0]), int(cols[0]))


def detection_labels(
    detections: np.ndarray,
    evaluation_mask: np.ndarray,
    downsample: int = 32,
    mask_offset: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Label under each detection: mask[y // ds, x // ds], 0 outside the mask."""
    det = np.asarray(detections, dtype=float).reshape(-1, 3)
    # Coordinates are integers in the official CSVs (`int()`); floor handles floats.
    cols = np.floor(det[:, 1]).astype(np.int64) // downsample - mask_offset[1]
    rows = np.floor(det[:, 2]).astype(np.int64) // downsample - mask_offset[0]
    h, w = evaluation_mask.shape
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    out = np.zeros(len(det), dtype=np.int64)
    out[inside] = evaluation_mask[rows[inside], cols[inside]]
    return out


def _score_slide(slide: SlideEval) -> tuple[list[float], np.ndarray, SlideOutcome]:
    """FP scores, TP scores (float32, one per mask label, as the script) and a summary."""
    probs = slide.detections[:, 0]
    if not slide.is_tumour:
        outcome = SlideOutcome(slide.slide_id, False, len(probs), 0, 0, len(probs), 0, 0, [])
        return [float(p) for p in probs], np.zeros(0, dtype=np.float32), outcome

    mask = slide.evaluation_mask
    assert mask is not None
    max_label = int(mask.max()) if mask.size else 0
    itc = {int(i) for i in slide.itc_labels}
    # The script keeps TP scores in a float32 array initialised to 0, one per label
    # (ITC labels included and never updated); a hit replaces it only when strictly
    # greater. Zeros of missed lesions and ITCs join the pooled scores, which is why the
    # smallest threshold is skipped in `compute_froc`.
    tp = np.zeros(max_label, dtype=np.float32)
    hit = np.zeros(max_label, dtype=bool)
    fp: list[float] = []
    n_itc_hits = n_extra = 0
    for p, label in zip(probs, detection_labels(slide.detections, mask, slide.downsample,
                                                slide.mask_offset),
                        strict=True):
        if label == 0:
            fp.append(float(p))
        elif label in itc:
            n_itc_hits += 1
        else:
            if hit[label - 1]:
                n_extra += 1
            hit[label - 1] = True
            if p > tp[label - 1]:
                tp[label - 1] = p
    lesion_ids = [i for i in range(1, max_label + 1) if i not in itc]
    outcome = SlideOutcome(
        slide_id=slide.slide_id,
        is_tumour=True,
        n_detections=len(probs),
        n_lesions=len(lesion_ids),
        n_itc=max_label - len(lesion_ids),
        n_fp=len(fp),
        n_itc_hits=n_itc_hits,
        n_extra_hits=n_extra,
        lesion_scores=[float(tp[i - 1]) for i in lesion_ids],
    )
    return fp, tp, outcome


def compute_froc(
    slides: Sequence[SlideEval], eval_fp_rates: Sequence[float] = EVAL_FP_RATES
) -> FrocResult:
    """Camelyon16 FROC over `slides` (the official `computeFROC` + interpolation)."""
    if not slides:
        raise EvaluationError("no slides to evaluate: give detections for at least one slide")
    fp_all: list[float] = []
    tp_all: list[np.ndarray] = []
    outcomes = []
    for slide in slides:
        fp, tp, outcome = _score_slide(slide)
        fp_all.extend(fp)
        tp_all.append(tp)
        outcomes.append(outcome)
    n_lesions = sum(o.n_lesions for o in outcomes)
    if n_lesions == 0:
        raise EvaluationError(
            "FROC needs at least one tumour slide with a lesion larger than an ITC "
            "(275 µm); none of the ground truths given has one"
        )
    fps = np.sort(np.asarray(fp_all, dtype=np.float64))
    tps = np.sort(np.concatenate(tp_all).astype(np.float32))

    # all_probs = sorted(set(FPs + TPs)); the script loops over all_probs[1:] (skipping the
    # smallest value) and appends a final (0 FP, 0 TP) point.
    all_probs = np.unique(np.concatenate([fps, tps.astype(np.float64)]))
    thresholds = all_probs[1:]
    # `np.asarray(FPs) >= t` compares float64; `np.asarray(TPs) >= t` compares in float32
    # (a Python/float64 scalar is cast to the float32 array's type), reproduced here.
    n_fp_at = len(fps) - np.searchsorted(fps, thresholds, side="left")
    n_tp_at = len(tps) - np.searchsorted(tps, thresholds.astype(np.float32), side="left")
    total_fp = np.append(n_fp_at, 0).astype(np.float64)
    total_tp = np.append(n_tp_at, 0).astype(np.float64)
    fp_per_slide = total_fp / float(len(slides))
    sensitivity = total_tp / float(n_lesions)

    rates = tuple(float(r) for r in eval_fp_rates)
    # np.interp over the reversed (increasing-FP) curve, exactly as the script.
    sens_at = np.interp(rates, fp_per_slide[::-1], sensitivity[::-1])
    return FrocResult(
        thresholds=np.append(thresholds, np.inf),
        fp_per_slide=fp_per_slide,
        sensitivity=sensitivity,
        eval_fp_rates=rates,
        sensitivities=sens_at,
        score=float(np.mean(sens_at)),
        n_slides=len(slides),
        n_tumour_slides=sum(1 for o in outcomes if o.is_tumour),
        n_lesions=n_lesions,
        n_itc=sum(o.n_itc for o in outcomes),
        n_detections=sum(o.n_detections for o in outcomes),
        n_fp=len(fp_all),
        n_tp=sum(1 for o in outcomes for s in o.lesion_scores if s > 0),
        slides=outcomes,
    )
