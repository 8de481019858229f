"""A training run's metrics.csv (one row per step) and its learning-curve PNG."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Columns every task writes; a task's validation columns go between these and time_s.
STEP_FIELDS = ["step", "stage", "loss", "accuracy", "lr", "data_wait_s", "step_s"]


def metric_fields(val_fields: Sequence[str]) -> list[str]:
    return [*STEP_FIELDS, *val_fields, "time_s"]


class MetricsLog:
    """Appends rows to metrics.csv, flushed per row so a crash loses at most one step."""

    def __init__(self, path: Path, fields: Sequence[str], resume_step: int | None) -> None:
        self.path = path
        self.fields = list(fields)
        rows = []
        if resume_step is not None and path.is_file():
            # Drop rows after the checkpoint: those steps are recomputed (identically).
            rows = [r for r in csv.DictReader(path.open()) if int(r["step"]) <= resume_step]
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self._f = path.open("a", newline="")
        self._w = csv.DictWriter(self._f, self.fields)

    def write(self, row: dict) -> None:
        self._w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in self.fields})
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def plot_learning_curve(metrics_csv: Path, out_png: Path,
                        marks: Sequence[tuple[int, str]] = (), title: str = "training",
                        loss_label: str = "loss") -> Path:
    """Batch loss (raw and smoothed), validation loss and accuracy against step, with a
    dotted line and label at each (step, label) in `marks` (e.g. where a stage starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(metrics_csv.open()))
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    # Tasks validate differently: plot val_loss / val_accuracy where a task writes them.
    val = [(int(r["step"]), float(r["val_loss"]), float(r.get("val_accuracy") or "nan"))
           for r in rows if r.get("val_loss")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(step, loss, color="0.75", lw=0.8, label="train loss (batch)")
    k = max(1, len(loss) // 25)
    if len(loss) >= k > 1:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(step[k - 1:], smooth, color="C0", lw=1.6, label=f"train loss ({k}-step mean)")
    if val:
        vs, vl, va = map(np.array, zip(*val, strict=True))
        ax.plot(vs, vl, "o-", color="C1", label="validation loss")
    if val and np.isfinite(va).any():
        ax2 = ax.twinx()
        ax2.plot(vs, va, "s--", color="C2", label="validation accuracy")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("validation accuracy")
        ax2.legend(loc="upper right", fontsize=8)
    for at, label in marks:
        ax.axvline(at, color="k", ls=":", lw=1)
        ax.text(at, ax.get_ylim()[1], f" {label}", va="top", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel(loss_label)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png


__all__ = ["STEP_FIELDS", "MetricsLog", "metric_fields", "plot_learning_curve"]
