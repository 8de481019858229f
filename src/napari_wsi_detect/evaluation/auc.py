"""Slide-level ROC and its AUC (Camelyon16 task 2: one tumour score per slide).

scikit-learn is not a dependency, so the AUC is the Mann–Whitney statistic with ties
counted as one half: AUC = P(score_tumour > score_normal) + ½·P(equal), computed from
average ranks. This equals the trapezoidal area under the ROC curve built below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .froc import EvaluationError


@dataclass
class RocResult:
    auc: float
    fpr: np.ndarray  # false-positive rate at each threshold, starting at (0, 0)
    tpr: np.ndarray
    thresholds: np.ndarray  # slide is called tumour when score >= threshold; first is +inf
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict:
        return {
            "auc": self.auc,
            "n_tumour_slides": self.n_positive,
            "n_normal_slides": self.n_negative,
            "fpr": [float(v) for v in self.fpr],
            "tpr": [float(v) for v in self.tpr],
            "threshold": [float(v) if np.isfinite(v) else None for v in self.thresholds],
        }


def slide_auc(scores: Sequence[float], labels: Sequence[bool | int]) -> RocResult:
    """ROC curve and AUC of slide scores against slide labels (1/True = tumour)."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise EvaluationError(f"{len(s)} slide scores but {len(y)} slide labels")
    if not np.all(np.isfinite(s)):
        raise EvaluationError("slide scores contain NaN or infinite values")
    n_pos = int(y.sum())
    n_neg = int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise EvaluationError(
            "slide AUC needs both tumour and normal slides "
            f"(got {n_pos} tumour, {n_neg} normal)"
        )
    ranks = rankdata(s)  # average ranks: a tie between classes counts one half
    auc = (ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)

    thresholds = np.unique(s)[::-1]
    order = np.sort(s[y])
    order_neg = np.sort(s[~y])
    tp = n_pos - np.searchsorted(order, thresholds, side="left")
    fp = n_neg - np.searchsorted(order_neg, thresholds, side="left")
    return RocResult(
        auc=float(auc),
        fpr=np.concatenate([[0.0], fp / n_neg]),
        tpr=np.concatenate([[0.0], tp / n_pos]),
        thresholds=np.concatenate([[np.inf], thresholds]),
        n_positive=n_pos,
        n_negative=n_neg,
    )
