"""`run_batch(slides, task, out, ...)`: a cohort on dask.distributed, one task per slide.

1. Checks before any work: the task (registry), the model (its JSON, made for the
   task), the parameters, the slides (paths exist), the output folder (writable; locked
   for this cohort run: a second `run_batch` on the same folder is refused).
2. Slides whose finished outputs match the request are `skipped` (no model work); when
   every slide is, no cluster is started at all.
3. The others are submitted (one `batch.task.run_slide` each; `resources={"GPU": 1}`
   on CUDA), and the report is rewritten after every slide that comes back.
4. With `truth`, the cohort evaluation (batch/evaluate.py) runs at the end.

Cancel (`cancel` set, Ctrl-C in the CLI): OUT/.batch-cancel is created; queued slides
return at once, running ones stop after their current ROI (partial heatmap kept); the
report is written; a rerun resumes. A worker that dies is replaced by dask and its slide
rerun elsewhere (resuming its partial heatmap); a slide on which workers keep dying
becomes a failed row ("killed worker").
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..models.backend_names import DEFAULT_BACKEND
from .cohort import CohortError, find_slides, finished, slide_names
from .report import BatchReport
from .task import SlideJob, row_from_summary, run_slide

CANCEL_NAME = ".batch-cancel"
# After a cancel, how long running slides get to stop at an ROI boundary before their
# futures are dropped (their partial heatmaps stay resumable either way).
CANCEL_GRACE_S = 60.0

Event = Callable[[str, dict[str, Any]], None]


def _check_model(detector: Any, model: str) -> tuple[str, dict[str, Any]]:
    """(model as the workers should name it, config); ModelFileError before any work."""
    from ..models.io import load_config

    model = detector.resolve_model(model)  # "demo": the task's bundled model
    config = load_config(model)
    detector.check_model(config)
    # A relative path means nothing on a remote worker: pass the file the client found.
    path = Path(os.path.expanduser(str(model)))
    return (str(path.resolve()) if path.exists() else str(model)), config


def _wants_gpu(device: str) -> bool:
    return str(device).strip().lower().split(":", 1)[0] == "cuda"


def run_batch(
    slides: Iterable[str | os.PathLike], task: str, out: str | os.PathLike, *,
    scheduler: str | None = None, workers: int | None = None,
    truth: Iterable[str | os.PathLike] | None = None, model: str = "demo",
    device: str = "auto", backend: str = DEFAULT_BACKEND,
    options: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None, roi_cells: int | None = None,
    batch_size: int | None = None, n_readers: int = 2, use_tissue: bool = True,
    overwrite: bool = False, memory_limit: int | None = None,
    unmatched_are_normal: bool = False, retry_failed: bool = False,
    cancel: threading.Event | None = None,
    on_event: Event | None = None,
) -> BatchReport:
    """Run `task` on every slide (files or folders of them) into OUT/<slide>/ and write
    OUT/report.csv + report.json; returns the BatchReport (`.exit_code`: 0 all done or
    skipped, 1 some failed, 130 cancelled). A slide that failed for a reason of its own
    (unreadable, no tissue...) in the previous run of OUT is not tried again while its
    file is unchanged, unless `retry_failed`. `on_event(kind, data)` sees "cluster" (its
    info), "slide" (each row as it lands) and "evaluation"."""
    from ..detectors import get_detector
    from ..detectors.job import DetectionRequest
    from ..detectors.outdir import RunFolderLock, check_out_dir

    cancel = cancel or threading.Event()
    emit = on_event or (lambda kind, data: None)
    detector = get_detector(task)
    options = dict(options or {})
    params = {k: v for k, v in (params or {}).items() if v is not None}
    detector.resolve_options(options)
    model_arg, config = _check_model(detector, model)
    detector.defaults(config, params)
    paths = find_slides(slides)
    truth_paths = [str(Path(t).expanduser().resolve()) for t in (truth or ())]
    for t in truth_paths:
        if not os.path.exists(t):
            raise CohortError(f"ground truth not found: {t}")
    out = check_out_dir(Path(out).expanduser().resolve(), "report.csv")
    names = slide_names(paths)
    gpu = _wants_gpu(device)
    if gpu and not scheduler:
        from ..models.device import resolve_device

        resolve_device(device)  # no CUDA here: say so now, not once per slide
    with RunFolderLock(out):
        cancel_path = out / CANCEL_NAME
        cancel_path.unlink(missing_ok=True)
        report = BatchReport(out, detector.task, names, [str(p) for p in paths])
        start = time.perf_counter()
        requests = {
            n: DetectionRequest(
                task=detector.task, slide=str(p), model=model_arg, device=device,
                backend=backend,
                options=options, params=dict(params), out=str(out / n),
                roi_cells=roi_cells, batch_size=batch_size, n_readers=n_readers,
                use_tissue=use_tissue, overwrite=overwrite)
            for n, p in zip(names, paths, strict=True)}
        before = {} if retry_failed else _previous_rows(out)
        todo = []
        for n, request in requests.items():
            stat = _file_stat(request.slide)
            report.update(n, stat)
            summary = finished(request, detector, config)
            old = before.get(n, {})
            if summary is not None:
                # Numbers of the run that made the outputs; none computed in this one.
                report.update(n, {**row_from_summary(summary), "status": "skipped",
                                  "rois_computed": 0})
            elif (old.get("status") == "failed" and old.get("failure") == "input"
                  and old.get("slide") == request.slide
                  and all(old.get(k) == v for k, v in stat.items())):
                report.update(n, {k: old.get(k) for k in ("status", "error", "failure")})
                report.update(n, {"previous": True})
            else:
                todo.append(n)
                continue
            emit("slide", report.rows[n])
        report.write()
        try:
            if todo:
                _run_on_cluster(report, requests, todo, scheduler, workers, gpu,
                                memory_limit, cancel_path, cancel, emit)
        finally:
            report.wall_s = round(time.perf_counter() - start, 3)
            report.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            report.write()
        if truth_paths and report.exit_code != 130:
            from .evaluate import evaluate_cohort

            folders = [Path(r["out"]) for r in report.rows.values()
                       if r["status"] in ("done", "skipped")]
            report.evaluation = evaluate_cohort(detector, folders, truth_paths, out,
                                                unmatched_are_normal)
            report.write()
            emit("evaluation", report.evaluation)
        if not cancel.is_set():
            # Kept after a cancel: a slide still running on a remote worker sees it.
            cancel_path.unlink(missing_ok=True)
    return report


def _run_on_cluster(report: BatchReport, requests: dict[str, Any], todo: list[str],
                    scheduler: str | None, workers: int | None, gpu: bool,
                    memory_limit: int | None, cancel_path: Path, cancel: threading.Event,
                    emit: Event) -> None:
    from distributed import wait

    from .cluster import connect

    with connect(scheduler, workers=workers, n_slides=len(todo), gpu=gpu,
                 memory_limit=memory_limit) as (client, info):
        report.info["cluster"] = info.to_dict()
        emit("cluster", {**info.to_dict(), "notes": info.notes})
        token = uuid.uuid4().hex[:8]
        futures = {}
        for n in todo:
            job = SlideJob(requests[n], n, str(cancel_path), torch_threads=info.torch_threads,
                           pin_gpu=info.local and gpu)
            # pure=False + a unique key: a rerun is new work, never a cached result.
            fut = client.submit(run_slide, job, key=f"wsi-detect-{n}-{token}", pure=False,
                                resources={"GPU": 1} if gpu else None)
            futures[fut] = n
        report.submitted = len(futures)
        pending = set(futures)
        deadline = None
        try:
            while pending:
                if cancel.is_set() and deadline is None:
                    cancel_path.touch()
                    deadline = time.monotonic() + CANCEL_GRACE_S
                if deadline is not None and time.monotonic() > deadline:
                    break
                try:
                    done, pending = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for fut in done:
                    name = futures[fut]
                    report.update(name, _outcome(fut))
                    report.write()
                    emit("slide", report.rows[name])
        except KeyboardInterrupt:
            cancel.set()
            cancel_path.touch()
        finally:
            for fut in pending:
                report.update(futures[fut], {
                    "status": "cancelled",
                    "error": "cancelled; run the same command again to resume"})
            if pending:
                client.cancel(list(pending))


def _file_stat(path: str) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except OSError:
        return {"slide_bytes": None, "slide_mtime": None}
    return {"slide_bytes": st.st_size, "slide_mtime": round(st.st_mtime, 3)}


def _previous_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Rows of OUT/report.json by slide folder name ({} when absent or unreadable)."""
    import json

    from .report import REPORT_JSON

    try:
        data = json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))
        return {str(r["name"]): r for r in data["rows"] if isinstance(r, dict)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _outcome(fut: Any) -> dict[str, Any]:
    """The row a finished future gives: the task's own, or a failure the task could not
    report itself (its worker died too often)."""
    from distributed import KilledWorker

    try:
        return fut.result()
    except KilledWorker:
        return {"status": "failed", "failure": "worker",
                "error": "the worker running this slide died (killed or out of memory) "
                         "every time it was tried; see the worker logs, or raise the "
                         "memory limit per worker"}
    except Exception as exc:  # e.g. the slide's task could not be unpickled on a worker
        return {"status": "failed", "failure": "error",
                "error": f"{type(exc).__name__}: {exc}"}
