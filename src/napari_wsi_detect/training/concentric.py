"""Concentric labels and the concentric loss (SegMitos, METHODS §2).

From a figure's centroid: pixels within `r` are mitosis (class 1), the ring between `r`
and `R` is ignored by the loss (it holds both mitotic and non-mitotic pixels), pixels
beyond `R` are background (class 0). Random radii r ~ U(10, 17) px and R = r·U(1.5, 2.5)
at 0.25 µm/px, scaled to the image's µm/px, drawn anew each time a figure is used (several
random labels per figure), or the fixed variants r12R24 and r15R30.

Labels are uint8: 0 background, 1 mitosis, IGNORE ring, HARD background near an imposter
("not mitotic figure": counted as background, `hard_weight` times). numpy only here, so
the prefetching producers stay torch-free; `concentric_loss` imports torch when called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BACKGROUND, MITOSIS, HARD, IGNORE = 0, 1, 2, 255
REFERENCE_MPP = 0.25  # the paper's radii are pixels at 0.25 µm/px
R_INNER = (10.0, 17.0)  # px at REFERENCE_MPP
R_RATIO = (1.5, 2.5)
FIXED = {"r12R24": (12.0, 24.0), "r15R30": (15.0, 30.0)}
LABEL_MODES = ("mixed", "random", *FIXED)
IMPOSTER_RADIUS = 12.0  # px at REFERENCE_MPP: the imposter's nucleus


def draw_radii(rng: np.random.Generator, n: int, mode: str = "mixed",
               mpp: float = REFERENCE_MPP) -> tuple[np.ndarray, np.ndarray]:
    """(r, R) in image px for `n` figures. "mixed": per figure, random radii half of the
    time, else r12R24 or r15R30."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    r = rng.uniform(*R_INNER, n)
    big = r * rng.uniform(*R_RATIO, n)
    pick = rng.integers(0, 4, n)  # drawn in every mode: same stream whatever the mode
    if mode in FIXED:
        r[:], big[:] = FIXED[mode]
    elif mode == "mixed":
        for k, name in ((2, "r12R24"), (3, "r15R30")):
            r[pick == k], big[pick == k] = FIXED[name]
    scale = REFERENCE_MPP / float(mpp)
    return r * scale, big * scale


def concentric_label(shape: tuple[int, int], figures: np.ndarray, r: np.ndarray,
                     big_r: np.ndarray, imposters: np.ndarray | None = None,
                     imposter_radius: float = IMPOSTER_RADIUS) -> np.ndarray:
    """(H, W) uint8 label map; `figures`/`imposters` are (N, 2) (x, y) pixel positions
    (column, row indices; they may lie outside the map)."""
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.uint8)
    figures = np.asarray(figures, np.float64).reshape(-1, 2)
    imposters = np.zeros((0, 2)) if imposters is None else np.asarray(imposters).reshape(-1, 2)
    yy, xx = np.mgrid[0:h, 0:w]
    for (x, y) in imposters:
        out[(xx - x) ** 2 + (yy - y) ** 2 <= imposter_radius ** 2] = HARD
    d2 = [(xx - x) ** 2 + (yy - y) ** 2 for (x, y) in figures]
    for dist, outer in zip(d2, big_r, strict=True):
        out[dist < outer ** 2] = IGNORE
    for dist, inner in zip(d2, r, strict=True):
        out[dist <= inner ** 2] = MITOSIS  # a figure's disc wins over a neighbour's ring
    return out


def concentric_loss(logits: Any, labels: Any, hard_weight: float = 1.0) -> Any:
    """Softmax cross-entropy over the mitosis discs and the background beyond R only (the
    ring ignored), `logits` (N, 2, h, w) upsampled bilinearly to the labels' (N, H, W);
    background near imposters weighs `hard_weight`. Mean over the counted pixels (0 when
    none is counted). Weight decay (L2) is the optimiser's."""
    import torch
    import torch.nn.functional as F

    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
    labels = labels.long()
    counted = labels != IGNORE
    target = torch.where(labels == MITOSIS, 1, 0)
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none")
    weight = torch.where(labels == HARD, float(hard_weight), 1.0) * counted
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


__all__ = ["BACKGROUND", "FIXED", "HARD", "IGNORE", "LABEL_MODES", "MITOSIS",
           "concentric_label", "concentric_loss", "draw_radii"]
