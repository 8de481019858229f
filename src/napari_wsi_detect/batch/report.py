"""The cohort report: OUT/report.csv and OUT/report.json, one row per slide.

Both files are rewritten atomically (`_atomic.py`) after every slide, so an interrupted
cohort leaves a readable report of what finished. Row statuses:

* `done`: computed in this run (`rois_resumed` > 0 when a partial heatmap was resumed);
* `skipped`: finished outputs with the same fingerprint were already there: no model
  work (the numbers are read back from the slide's summary.json);
* `failed`: the slide could not be processed; `error` says why, `failure` what kind:
  "input" (the slide or its settings: not retried, and not tried again by a rerun
  while the file is unchanged, `previous` true), "error" (an unexpected exception) or
  "worker" (its worker died on every try);
* `cancelled`: the run was stopped (Ctrl-C) before this slide finished; rerun resumes;
* `pending`: not reached yet (only while the cohort runs).
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .._atomic import write_json_atomic, write_text_atomic

REPORT_CSV = "report.csv"
REPORT_JSON = "report.json"
REPORT_FORMAT = 1
STATUSES = ("done", "skipped", "failed", "cancelled", "pending")
# report.csv columns, in order (report.json rows hold these plus `measures`, ...).
COLUMNS = (
    "slide", "name", "status", "score", "count", "tumour_area_mm2", "rois_computed",
    "rois_resumed", "seconds", "model_load_s", "inference_s", "total_s", "worker",
    "worker_peak_rss_mb", "device", "model", "model_sha256", "out", "error",
)


class BatchReport:
    """Rows of a cohort (in cohort order) and its evaluation; `write()` saves both files."""

    def __init__(self, out: str | Path, task: str, names: list[str], slides: list[str],
                 info: dict[str, Any] | None = None) -> None:
        self.out = Path(out)
        self.task = task
        self.info = dict(info or {})
        self.rows: dict[str, dict[str, Any]] = {
            n: {"slide": s, "name": n, "status": "pending", "out": str(self.out / n)}
            for n, s in zip(names, slides, strict=True)}
        self.evaluation: dict[str, Any] | None = None
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.finished: str | None = None
        self.wall_s: float | None = None
        self.submitted = 0  # slides handed to workers (the rest were skipped)

    def update(self, name: str, row: dict[str, Any]) -> None:
        self.rows[name] = {**self.rows[name], **row}

    # -- views ----------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        c = Counter(r["status"] for r in self.rows.values())
        return {s: c.get(s, 0) for s in STATUSES}

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["status"] == "failed"]

    @property
    def model_work(self) -> bool:
        """Whether any slide was handed to a worker in this run (skipped ones are not)."""
        return self.submitted > 0

    @property
    def exit_code(self) -> int:
        """0 every slide done or skipped; 1 at least one failed; 130 cancelled."""
        c = self.counts()
        if c["cancelled"] or c["pending"]:
            return 130
        return 1 if c["failed"] else 0

    def note(self) -> str:
        c = self.counts()
        parts = [f"{c[s]} {s}" for s in STATUSES if c[s]]
        text = f"{len(self.rows)} slides: " + ", ".join(parts)
        kept = sum(1 for r in self.rows.values() if r.get("previous"))
        if c["skipped"]:
            text += f"; {c['skipped']} already finished"
        if kept:
            text += (f"; {kept} failed in an earlier run and {'was' if kept == 1 else 'were'}"
                     " not retried (file unchanged; --retry-failed tries again)")
        if not self.model_work and self.finished:
            text += "; no model work was done"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "task": self.task,
            "out": str(self.out),
            "started": self.started,
            "finished": self.finished,
            "wall_s": self.wall_s,
            "statuses": self.counts(),
            "model_work": self.model_work,
            "submitted": self.submitted,
            "note": self.note(),
            "exit_code": self.exit_code if self.finished else None,
            **self.info,
            "rows": [dict(r) for r in self.rows.values()],
            "evaluation": self.evaluation,
        }

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows.values():
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
        return buf.getvalue()

    # -- files ----------------------------------------------------------------------------------
    def write(self) -> None:
        write_text_atomic(self.out / REPORT_CSV, self.csv_text())
        write_json_atomic(self.out / REPORT_JSON, self.to_dict())
