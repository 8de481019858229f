"""What a dask worker runs for one slide: `run_slide(job) -> row` (a small dict).

* The network is loaded once per worker process and kept (`_MODELS`, keyed by model and
  device), then handed to the one job (`detectors/job.detect`) as a (net, config) pair,
  so every slide after the first on a worker costs no model load.
* Errors the package raises on purpose (an unreadable slide, an empty tissue mask, a
  wrong model) and any other exception of the slide's own run become a "failed" row:
  the task returns normally, so dask never retries it. Only the death of the worker
  process (killed, out of memory) makes the scheduler run the task again elsewhere,
  where the partial heatmap the dead worker left is resumed.
* Cancel: the client creates `job.cancel_path` (on the storage the workers share); a
  watcher thread turns it into the job's cancel event, so a running slide stops after
  its current ROI with a resumable partial heatmap, and a queued slide returns at once.
* The row carries only numbers and strings (never the heatmap), read back from the
  summary.json the job wrote, the same way a skipped (already finished) slide's row is.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CancelledError, WsiDetectError

_MODELS: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
_MODELS_LOCK = threading.Lock()
_POLL_S = 0.25


@dataclass
class SlideJob:
    """One slide of a cohort: plain data, pickled to a worker."""

    request: Any  # detectors.job.DetectionRequest
    name: str  # the slide's folder name under the cohort folder
    cancel_path: str
    torch_threads: int | None = None  # None: leave the worker's setting alone
    pin_gpu: bool = False  # LocalCluster: worker i uses GPU i % count


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"local:{os.getpid()}"


def _device_for(job: SlideJob) -> str:
    device = str(job.request.device)
    if not job.pin_gpu or device != "cuda":
        return device
    import torch
    from distributed import get_worker

    try:
        index = int(get_worker().name)
    except (TypeError, ValueError):
        index = 0
    return f"cuda:{index % max(1, torch.cuda.device_count())}"


def cached_model(model: str, device: Any) -> tuple[Any, dict[str, Any], float]:
    """(net, config, seconds spent loading: 0 when this worker had it already)."""
    from ..models.io import load_model

    key = (str(model), str(device))
    with _MODELS_LOCK:
        if key in _MODELS:
            net, config = _MODELS[key]
            return net, config, 0.0
        t = time.perf_counter()
        net, config = load_model(model, device)
        _MODELS[key] = (net, config)
        return net, config, time.perf_counter() - t


def _watch(path: str, cancel: threading.Event, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(_POLL_S):
            if os.path.exists(path):
                cancel.set()
                return

    thread = threading.Thread(target=loop, name="wsi-detect-cancel-watch", daemon=True)
    thread.start()
    return thread


def _peak_rss_mb() -> float | None:
    try:
        import resource

        # Linux reports kilobytes (macOS bytes; the project targets Linux workers).
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return None


def run_slide(job: SlideJob) -> dict[str, Any]:
    """Run one slide (see the module docstring); never raises for the slide's own
    problems, so a failed slide is a row, not a retry."""
    from dataclasses import replace

    request = job.request
    row: dict[str, Any] = {"slide": request.slide, "name": job.name, "out": request.out,
                           "worker": _worker_address()}
    start = time.perf_counter()
    row["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    row["started_unix"] = round(time.time(), 3)
    if os.path.exists(job.cancel_path):
        return {**row, "status": "cancelled", "error": "cancelled before it started"}
    cancel, stop = threading.Event(), threading.Event()
    watcher = _watch(job.cancel_path, cancel, stop)
    try:
        if job.torch_threads:
            import torch

            if torch.get_num_threads() != job.torch_threads:
                torch.set_num_threads(job.torch_threads)
        from ..detectors.job import detect
        from ..models.device import resolve_device

        device = resolve_device(_device_for(job))
        request = replace(request, device=str(device))
        net, config, load_s = cached_model(request.model, device)
        row["model_load_s"] = round(load_s, 3)
        import dask

        # Inside a dask task, a dask computation of the job (the NGFF export writes with
        # dask.array) would go to the cluster and *secede* this task's thread: the
        # worker then starts its next slide alongside this one (two slides per worker,
        # per GPU, per memory limit). Keep the slide's own dask work in this worker.
        with dask.config.set(scheduler="threads", num_workers=job.torch_threads or 1):
            detect(request, cancel, model=(net, config))
        row.update(row_from_folder(request.out))
        row["status"] = "done"
    except CancelledError as exc:
        row.update(status="cancelled", error=str(exc))
    except WsiDetectError as exc:
        # "input": the slide (or its settings) is the problem; a rerun does not retry it
        # while the file is unchanged (see batch/run.py).
        row.update(status="failed", error=str(exc), failure="input")
    except Exception as exc:  # a bug or a library error on this slide: the rest go on
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}", failure="error")
    finally:
        stop.set()
        watcher.join()
    row["seconds"] = round(time.perf_counter() - start, 3)
    row["worker_peak_rss_mb"] = _peak_rss_mb()
    return row


# -- rows from a run folder's summary.json (fresh or skipped slides alike) ----------------------

def _count(summary: dict[str, Any]) -> int | None:
    if isinstance(summary.get("count"), int):
        return int(summary["count"])
    for key, value in summary.items():
        if key.endswith("_count") and isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    return None


def _area_mm2(summary: dict[str, Any]) -> float | None:
    """The detector's `tumour_area_mm2` when it reports one (tumour), else the sum of
    its regions' `area_um2` (metastases), else None (points have no area)."""
    value = summary.get("tumour_area_mm2")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(float(value), 6)
    regions = summary.get("regions")
    if isinstance(regions, list) and all(isinstance(r, dict) for r in regions):
        areas = [r.get("area_um2") for r in regions]
        if all(isinstance(a, (int, float)) for a in areas):
            return round(sum(areas) / 1e6, 6)
    return None


def _measures(summary: dict[str, Any]) -> dict[str, Any]:
    """The detector's own scalar summary items (counts, densities, areas, ...)."""
    from ..detectors.result import SUMMARY_KEYS

    return {k: v for k, v in summary.items()
            if k not in SUMMARY_KEYS and (v is None or isinstance(v, (int, float, str, bool)))}


def row_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The report columns that come from a finished run's summary.json."""
    timings = summary.get("timings") or {}
    model = summary.get("model") or {}
    score = summary.get("slide_score")
    return {
        "score": score if isinstance(score, (int, float)) and math.isfinite(score) else None,
        "count": _count(summary),
        "measures": _measures(summary),
        "tumour_area_mm2": _area_mm2(summary),
        "rois_computed": timings.get("rois_computed"),
        "rois_resumed": timings.get("rois_resumed"),
        "inference_s": timings.get("inference_s"),
        "total_s": timings.get("total_s"),
        "model": model.get("name") or (Path(model["path"]).stem if model.get("path") else None),
        "model_sha256": model.get("weights_sha256"),
        "device": (summary.get("parameters") or {}).get("device"),
    }


def row_from_folder(out: str | os.PathLike) -> dict[str, Any]:
    from ..detectors.result import read_summary

    return row_from_summary(read_summary(out, check=True))
