"""FROC and ROC figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

from .._atomic import atomic_path
from .auc import RocResult
from .froc import FrocResult


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)  # never pick a GUI backend from a CLI
    from matplotlib.figure import Figure

    return Figure(figsize=(10, 4.5), dpi=110)


def plot_froc(
    froc: FrocResult,
    path: str | os.PathLike,
    roc: RocResult | None = None,
    title: str = "Camelyon16 FROC",
) -> Path:
    """Write the FROC curve (and the slide ROC beside it when given) as a PNG."""
    fig = _figure()
    axes = fig.subplots(1, 2 if roc is not None else 1, squeeze=False)[0]
    ax = axes[0]
    # Plot in increasing-FP order, the order np.interp reads the curve.
    ax.plot(froc.fp_per_slide[::-1], froc.sensitivity[::-1], "-", color="tab:blue",
            drawstyle="default", label="FROC")
    ax.plot(froc.eval_fp_rates, froc.sensitivities, "o", color="tab:red",
            label="interpolated at 1/4 … 8 FP/slide")
    xmax = max(8.0, float(froc.fp_per_slide.max(initial=0.0))) * 1.1
    # np.interp holds the last sensitivity beyond the curve's largest FP rate: show it.
    ax.plot([froc.fp_per_slide[0], xmax], [froc.sensitivity[0]] * 2, "--",
            color="tab:blue", alpha=0.5, label="held constant (np.interp)")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set_xlim(0, xmax)
    ax.set_xticks([0, 0.25, 0.5, 1, 2, 4, 8])
    ax.set_xticklabels(["0", "¼", "½", "1", "2", "4", "8"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("average false positives per slide")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(
        f"{title}: score {froc.score:.4f}\n"
        f"{froc.n_slides} slides, {froc.n_lesions} lesions (+{froc.n_itc} ITC ignored)",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if roc is not None:
        ax2 = axes[1]
        ax2.plot(roc.fpr, roc.tpr, "-", color="tab:green")
        ax2.plot([0, 1], [0, 1], ":", color="grey")
        ax2.set_xlim(-0.01, 1.01)
        ax2.set_ylim(-0.01, 1.02)
        ax2.set_xlabel("false-positive rate (normal slides)")
        ax2.set_ylabel("true-positive rate (tumour slides)")
        ax2.set_title(
            f"slide ROC: AUC {roc.auc:.4f}\n"
            f"{roc.n_positive} tumour, {roc.n_negative} normal slides",
            fontsize=10,
        )
        ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:  # never leave a half-written figure
        fig.savefig(tmp, format="png")
    return out
