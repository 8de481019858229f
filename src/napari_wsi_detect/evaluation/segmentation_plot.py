"""Mask vs truth figure of `wsi-detect evaluate dice`: one panel per slide.

Each panel shows the slide's level-5 grid cropped to the tumour (truth ∪ prediction,
with a margin): true positives green, false positives (predicted only) orange, false
negatives (missed truth) blue, on light grey; Okabe–Ito colours, readable for
colour-blind eyes. The title gives Dice, precision and recall.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from .segmentation import DiceResult, SlideDice

COLOURS = {
    "background": (235, 235, 235),
    "tp": (0, 158, 115),
    "fp": (230, 159, 0),
    "fn": (0, 114, 178),
}


def overlay(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) uint8: TP / FP / FN coloured (see COLOURS)."""
    t, p = np.asarray(truth, bool), np.asarray(prediction, bool)
    out = np.empty(t.shape + (3,), np.uint8)
    out[:] = COLOURS["background"]
    out[t & p] = COLOURS["tp"]
    out[p & ~t] = COLOURS["fp"]
    out[t & ~p] = COLOURS["fn"]
    return out


def crop_box(truth: np.ndarray, prediction: np.ndarray, margin: float = 0.08
             ) -> tuple[slice, slice]:
    either = np.asarray(truth, bool) | np.asarray(prediction, bool)
    if not either.any():
        return slice(None), slice(None)
    rows = np.flatnonzero(either.any(1))
    cols = np.flatnonzero(either.any(0))
    pad = max(2, int(margin * max(rows[-1] - rows[0], cols[-1] - cols[0])))
    return (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1),
            slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def plot_dice(result: DiceResult, grids: Sequence[tuple[np.ndarray, np.ndarray]],
              path: str | os.PathLike, title: str = "Tumour segmentation") -> Path:
    """Write the per-slide overlays (`grids[i]` = (truth, prediction) of
    `result.slides[i]`) and the mean figures as one PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # never a GUI backend from a CLI
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(result.slides)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(max(3.4 * cols, 6.4), 3.3 * rows + 0.9), dpi=110)  # legend fits
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    for ax, s, (t, p) in zip(axes.ravel(), result.slides, grids, strict=False):
        _panel(ax, s, t, p)
    fig.suptitle(
        f"{title}: Dice {result.dice.text()}\nprecision {result.precision.text()}, "
        f"recall {result.recall.text()}", fontsize=10)
    fig.legend(handles=[Patch(color=np.array(COLOURS[k]) / 255, label=label) for k, label in
                        (("tp", "tumour in both (TP)"), ("fp", "predicted only (FP)"),
                         ("fn", "missed truth (FN)"))],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.93))
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def _panel(ax, s: SlideDice, truth: np.ndarray, prediction: np.ndarray) -> None:
    rs, cs = crop_box(truth, prediction)
    ax.imshow(overlay(truth[rs, cs], prediction[rs, cs]), interpolation="nearest")
    empty = {"both": "  (no tumour in either)", "truth": "  (truth empty)",
             "prediction": "  (prediction empty)"}.get(s.empty or "", "")
    ax.set_title(f"{s.slide_id}{empty}\nDice {s.dice:.3f}  P {_fmt(s.precision)}  "
                 f"R {_fmt(s.recall)}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
