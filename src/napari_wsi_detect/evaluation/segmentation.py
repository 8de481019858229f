"""Tumour segmentation scores: per-slide Dice, precision and recall on the truth's grid.

Both masks are binary on one grid: the truth's level-5 grid (downsample 32, cell (r, c)
covers level-0 [32c, 32c+32) × [32r, 32r+32); a polygon covers a cell when the cell's
centre is inside it — `froc.rasterise_polygons`, the rule the phantom's mask uses).
With TP = cells in both, FP = predicted only, FN = truth only:

    Dice = 2·TP / (2·TP + FP + FN),  precision = TP / (TP + FP),  recall = TP / (TP + FN)

Empty masks (stated here, reported per slide as `empty`):

* truth and prediction both empty: Dice 1, precision 1, recall 1 (nothing to find and
  nothing claimed: a normal slide read correctly);
* truth empty, prediction not: Dice 0, precision 0, recall undefined (null);
* prediction empty, truth not: Dice 0, recall 0, precision undefined (null).

Over slides: the mean and sample standard deviation (ddof 1; null for one slide) of each
figure over the slides where it is defined, as the H2G-Net paper reports Dice
(0.933 ± 0.069 over 90 slides). The pooled Dice (TP, FP, FN summed over slides) is
reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .froc import EvaluationError


@dataclass
class SlideDice:
    slide_id: str
    tp: int
    fp: int
    fn: int
    dice: float
    precision: float | None
    recall: float | None
    empty: str | None  # "both" | "truth" | "prediction" | None
    cell_mm2: float | None = None  # area of one grid cell (None: pixel size unknown)
    shape: tuple[int, int] = (0, 0)  # grid (rows, cols)
    truth_source: str = ""
    prediction_source: str = ""

    @property
    def truth_mm2(self) -> float | None:
        return None if self.cell_mm2 is None else (self.tp + self.fn) * self.cell_mm2

    @property
    def predicted_mm2(self) -> float | None:
        return None if self.cell_mm2 is None else (self.tp + self.fp) * self.cell_mm2

    def to_dict(self) -> dict[str, Any]:
        return {
            "slide_id": self.slide_id, "dice": self.dice, "precision": self.precision,
            "recall": self.recall, "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "empty": self.empty, "grid": list(self.shape),
            "truth_mm2": _round(self.truth_mm2), "predicted_mm2": _round(self.predicted_mm2),
            "truth": self.truth_source, "prediction": self.prediction_source,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def slide_dice(truth: np.ndarray, prediction: np.ndarray, slide_id: str = "",
               cell_mm2: float | None = None) -> SlideDice:
    """Scores of one slide from two boolean masks of the same shape."""
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(prediction, dtype=bool)
    if t.shape != p.shape:
        raise EvaluationError(
            f"slide {slide_id}: truth grid {t.shape} and prediction grid {p.shape} differ")
    tp = int(np.count_nonzero(t & p))
    n_t = int(np.count_nonzero(t))
    n_p = int(np.count_nonzero(p))
    fp, fn = n_p - tp, n_t - tp
    if n_t == 0 and n_p == 0:
        return SlideDice(slide_id, 0, 0, 0, 1.0, 1.0, 1.0, "both", cell_mm2, t.shape)
    dice = 2.0 * tp / (2.0 * tp + fp + fn)
    precision = tp / n_p if n_p else None
    recall = tp / n_t if n_t else None
    empty = "truth" if n_t == 0 else "prediction" if n_p == 0 else None
    return SlideDice(slide_id, tp, fp, fn, dice, precision, recall, empty, cell_mm2, t.shape)


@dataclass
class Summary:
    mean: float | None
    sd: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "sd": self.sd, "n": self.n}

    def text(self) -> str:
        if self.mean is None:
            return "undefined (no slide defines it)"
        sd = "" if self.sd is None else f" ± {self.sd:.4f}"
        return f"{self.mean:.4f}{sd} (n = {self.n})"


def summarise(values: Sequence[float | None]) -> Summary:
    """Mean and sample sd (ddof 1) of the defined values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return Summary(None, None, 0)
    sd = float(v.std(ddof=1)) if v.size > 1 else None
    return Summary(float(v.mean()), sd, int(v.size))


@dataclass
class DiceResult:
    slides: list[SlideDice]
    dice: Summary
    precision: Summary
    recall: Summary
    pooled_dice: float | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "slides": [s.to_dict() for s in self.slides],
            "dice": self.dice.to_dict(), "precision": self.precision.to_dict(),
            "recall": self.recall.to_dict(), "pooled_dice": self.pooled_dice,
            "n_slides": len(self.slides), "warnings": list(self.warnings),
            "conventions": {
                "grid": "the truth's level-5 grid (downsample 32), cell-centre rule",
                "both_empty": "dice 1, precision 1, recall 1",
                "truth_empty": "dice 0, precision 0, recall null",
                "prediction_empty": "dice 0, recall 0, precision null",
                "sd": "sample standard deviation (ddof 1) over the slides that define it",
            },
        }


def summarise_slides(slides: Sequence[SlideDice], warnings: Sequence[str] = ()) -> DiceResult:
    if not slides:
        raise EvaluationError("no slide to evaluate: no prediction matched a truth")
    tp = sum(s.tp for s in slides)
    fp = sum(s.fp for s in slides)
    fn = sum(s.fn for s in slides)
    pooled = 2.0 * tp / (2.0 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return DiceResult(
        list(slides), summarise([s.dice for s in slides]),
        summarise([s.precision for s in slides]), summarise([s.recall for s in slides]),
        pooled, list(warnings),
    )
