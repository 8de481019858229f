"""The one orchestration every caller uses: API, widget, CLI, batch, mining, benchmarks.

slide -> model (load, check the task) -> geometry -> tissue -> ROI plan -> store (resume)
-> streaming runner -> finish -> postprocess -> result (-> atomic writes).

* `DetectionRequest` is plain data (paths, names, numbers), so it pickles to a dask
  worker; objects that cannot travel (an opened slide, a network in memory, a tissue
  mask) are keyword arguments of the functions, never fields.
* `detection_events(request)` is a generator: `RunStarted`, one `HeatmapTile` per ROI,
  then `JobOutcome` (with the `DetectionResult`). The widget runs it in a worker thread
  to paint tiles live; `detect(request)` drains it for everyone else.
* With `out`, the heatmap streams into `out/heatmap.zarr.partial` (resumed when its
  fingerprint matches), the folder is locked for the run (a second run into it is
  refused, not interleaved), and the outputs are written when the run completes.
* `prepare_run` + `run_tiles` are the two lower steps, for callers that want only tiles
  (hard-negative mining, benchmarks).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CancelledError, EmptyTissueError, ModelFileError, WsiDetectError
from ..models.backend_names import DEFAULT_BACKEND
from .outdir import RunFolderLock, check_out_dir, finish_commit
from .result import DetectionResult

ProgressFn = Callable[[int, int, "float | None"], None]


@dataclass
class DetectionRequest:
    """What to detect where; `region` = level-0 (x, y, w, h), None = whole slide."""

    task: str
    slide: str
    model: str = "demo"
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)  # stage "run" (e.g. alpha)
    params: dict[str, Any] = field(default_factory=dict)  # stage "post" (sliders)
    region: tuple[int, int, int, int] | None = None
    out: str | None = None
    roi_cells: int | None = None  # None: the detector's default for the device
    batch_size: int | None = None  # None: 2 on CUDA, 1 elsewhere
    n_readers: int = 2
    use_tissue: bool = True  # False: every ROI of the region, background included
    overwrite: bool = False
    # Level-0 µm/px: replaces the slide's own (a PNG/TIFF field carries none; without
    # it the model's is assumed, with a warning).
    mpp: float | None = None
    # Inference backend (models/backends.py): "fp32" exact, "auto" the fastest within
    # tolerance, or a named one.
    backend: str = DEFAULT_BACKEND


@dataclass
class PreparedRun:
    """Everything the runner needs, decided once (see `prepare_run`)."""

    detector: Any
    net: Any
    forward: Any
    config: dict[str, Any]
    options: dict[str, Any]
    geometry: Any
    rois: list[Any]
    roi_cells: int
    device: Any
    batch_size: int
    normalisation: Any
    fingerprint: dict[str, Any]
    model_name: str
    tissue: Any
    region: tuple[int, int, int, int] | None
    # per-pixel map of every tile before the network (detector.pixel_transform), or None
    pixel_transform: Any = None
    backend: str = "fp32"  # the resolved backend the forward runs on
    backend_requested: str = "fp32"


@dataclass
class RunStarted:
    """First event of a run: what will be computed."""

    task: str
    geometry: Any
    store: Any
    config: dict[str, Any]
    options: dict[str, Any]
    params: dict[str, Any]  # the post-processing values the run will use
    total: int  # ROIs in the plan
    todo: int  # ROIs this run computes (the rest were resumed)
    device: str
    out: str | None

    @property
    def resumed(self) -> bool:
        return self.todo < self.total


@dataclass
class JobOutcome:
    """Last event of a run."""

    status: str  # "done" | "cancelled"
    result: DetectionResult
    done: int
    total: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> Any:
        return self.result.store


def model_identity(config: dict[str, Any], model_arg: Any) -> str:
    """The model's name in the store and summary (same for every caller)."""
    if config.get("name"):
        return str(config["name"])
    if config.get("_json_path"):
        return Path(config["_json_path"]).stem
    return str(model_arg) if isinstance(model_arg, (str, os.PathLike)) else "in-memory"


def load_checked_model(detector: Any, model: Any, device: Any) -> tuple[Any, dict[str, Any]]:
    """(network on `device`, config) from a model name/path, a (net, config) pair or a
    module; ModelFileError when it is not a model of the detector's task."""
    import torch

    from ..models.io import load_model

    if isinstance(model, tuple):
        net, config = model[0], dict(model[1])
    elif isinstance(model, torch.nn.Module):
        net, config = model, dict(model.config()) if hasattr(model, "config") else {}
    else:
        net, config = load_model(detector.resolve_model(model), device)
    detector.check_model(config)
    # channels_last: the runner feeds NHWC memory; convs then skip a transpose.
    net = net.to(device).eval().to(memory_format=torch.channels_last)
    return net, config


def run_fingerprint(detector: Any, config: dict[str, Any], options: dict[str, Any],
                    normalisation: dict[str, Any], backend: str) -> dict[str, Any]:
    """The store's fingerprint: the detector's, plus the resolved backend when it is
    not exact (a bf16/int8 map is never resumed into an fp32 store, nor the reverse)."""
    from ..models.backends import is_exact

    fingerprint = detector.fingerprint(config, options, normalisation)
    if not is_exact(backend):
        fingerprint["backend"] = backend
    return fingerprint


def prepare_run(detector: Any, slide: Any, net: Any, config: dict[str, Any], *,
                options: dict[str, Any], device: Any, model_arg: Any = None,
                region: tuple[int, int, int, int] | None = None,
                roi_cells: int | None = None, batch_size: int | None = None,
                tissue: Any = None, forward: Any = None,
                pixel_transform: Any = None, backend: str = "fp32") -> PreparedRun:
    """Geometry, ROI plan (tissue-filtered when `tissue` is given), forward, fingerprint.
    `forward` replaces the detector's (a network being trained, already dense; run as
    given, so `backend` must be "fp32" then); `pixel_transform` maps each tile's pixels
    before it (stain normalisation); `backend` (models/backends.py) runs the network."""
    from ..engine.plan import plan_rois
    from ..engine.run import Normalisation
    from ..models.backends import apply_backend, resolve_backend

    resolved = resolve_backend(backend, device, detector.task)
    if forward is not None and resolved != "fp32":
        raise WsiDetectError("a caller's own forward runs as given: use backend='fp32'")

    shape0 = tuple(slide.levels[0].shape[:2])
    geometry = detector.geometry(shape0, slide.mpp, config, options)
    cells = int(roi_cells or detector.default_roi_cells(getattr(device, "type", device),
                                                        options))
    rois = plan_rois(shape0, geometry, cells, tissue_mask=tissue, region=region)
    dev_type = getattr(device, "type", str(device))
    bs = int(batch_size or (2 if dev_type == "cuda" else 1))
    if bs < 1:
        raise WsiDetectError(f"batch size must be at least 1, got {bs}")
    norm = Normalisation.from_config(config)
    if forward is None:
        forward = apply_backend(detector.forward(net, config, options), resolved,
                                device=device)
    fingerprint = run_fingerprint(detector, config, options, norm.to_dict(), resolved)
    return PreparedRun(
        detector=detector, net=net, forward=forward,
        config=config, options=dict(options), geometry=geometry, rois=rois,
        roi_cells=cells, device=device, batch_size=bs, normalisation=norm,
        fingerprint=fingerprint,
        model_name=model_identity(config, model_arg), tissue=tissue, region=region,
        pixel_transform=pixel_transform, backend=resolved,
        backend_requested=str(backend))


def run_tiles(prep: PreparedRun, slide: Any, rois: list[Any] | None = None, store: Any = None,
              cancel: threading.Event | None = None, progress: ProgressFn | None = None,
              n_readers: int = 2) -> Any:
    """The streaming runner over `rois` (default: the whole plan); iterate it for tiles,
    read `.stats` after."""
    from ..engine.reader import read_roi
    from ..engine.run import HeatmapRunner

    transform = prep.pixel_transform
    # in the reader threads, like the read itself: the transform is numpy, per pixel
    reader = read_roi if transform is None else (
        lambda s, g, roi: transform(read_roi(s, g, roi)))
    return HeatmapRunner(slide, prep.forward, prep.geometry,
                         prep.rois if rois is None else rois, device=prep.device,
                         batch_size=prep.batch_size, store=store, progress_cb=progress,
                         cancel_event=cancel, n_readers=n_readers,
                         normalisation=prep.normalisation, reader=reader)


def _forget_tile(store: Any, tile: Any, fresh: bool) -> None:
    """A tile with NaN/inf is not a result: unmark it, and remove a store this run
    created when nothing valid is in it (a broken model leaves no half-made folder)."""
    import shutil

    t = store.roi_cells
    store.computed[tile.r0 // t, tile.c0 // t] = 0
    if fresh and store.path is not None and not store.computed_blocks().any():
        shutil.rmtree(store.path, ignore_errors=True)


def _slide_identity(slide: Any) -> dict[str, Any] | None:
    """File name and size of the slide, recorded in the store (see HeatmapStore.create)."""
    path = Path(str(getattr(slide, "path", "") or ""))
    try:
        return {"name": path.name, "bytes": path.stat().st_size} if path.name else None
    except OSError:
        return None


def _roi_cells(request: DetectionRequest) -> int | None:
    """The request's ROI size; with the default (None), that of a store being resumed."""
    if request.roi_cells is not None or request.out is None or request.overwrite:
        return request.roi_cells
    from ..engine.heatmap import stored_roi_cells

    return stored_roi_cells(request.out)


def _open_store(prep: PreparedRun, out: str | None, overwrite: bool,
                slide: Any = None) -> Any:
    from ..engine.heatmap import HeatmapStore, open_run_store

    if out is not None:
        return open_run_store(out, prep.geometry, prep.roi_cells, prep.model_name,
                              prep.fingerprint, overwrite=overwrite,
                              slide=_slide_identity(slide))
    return HeatmapStore.create(None, prep.geometry, prep.roi_cells, prep.model_name,
                               prep.fingerprint)


def detection_events(request: DetectionRequest, cancel: threading.Event | None = None, *,
                     progress: ProgressFn | None = None, slide: Any = None,
                     model: Any = None, tissue_mask: Any = None
                     ) -> Iterator[RunStarted | Any | JobOutcome]:
    """Run `request`, yielding RunStarted, HeatmapTiles, then JobOutcome (see module
    docstring). `slide`, `model` ((net, config) or module) and `tissue_mask` override
    what the request names, for callers that already hold them."""
    from ..models.device import resolve_device
    from . import get_detector

    start = time.perf_counter()
    detector = get_detector(request.task)
    options = detector.resolve_options(request.options)
    detector.defaults(None, request.params)  # bad slider values fail before any work
    lock = None
    if request.out is not None:
        check_out_dir(request.out, detector.results_file)
        lock = RunFolderLock(request.out)
    owned = slide is None
    timings: dict[str, Any] = {}
    try:
        if request.out is not None:
            # a set a kill left committed is installed; a damaged journal is dropped,
            # since this run rewrites the whole set
            finish_commit(request.out, locked=True, rewrite=True)
        if owned:
            from ..slide import open_slide

            slide = open_slide(request.slide)
        if request.mpp is not None:
            if not 0.01 <= float(request.mpp) <= 20:
                raise WsiDetectError(f"mpp must be in [0.01, 20] µm/px, got {request.mpp}")
            slide.mpp = float(request.mpp)
        device = resolve_device(request.device)
        t = time.perf_counter()
        net, config = load_checked_model(detector, model if model is not None
                                         else request.model, device)
        params = detector.defaults(config, request.params)
        timings["model_load_s"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        tissue = tissue_mask
        if tissue is None and request.use_tissue:
            from ..slide.tissue import compute_tissue_mask

            tissue = compute_tissue_mask(slide)
        timings["tissue_s"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        transform = detector.pixel_transform(slide, tissue, config, options)
        if transform is not None:
            timings["pixel_transform_fit_s"] = round(time.perf_counter() - t, 4)
        try:
            prep = prepare_run(detector, slide, net, config, options=options, device=device,
                               model_arg=request.model if model is None else model,
                               region=request.region, roi_cells=_roi_cells(request),
                               batch_size=request.batch_size, tissue=tissue,
                               pixel_transform=transform, backend=request.backend)
        except EmptyTissueError as exc:
            raise EmptyTissueError(
                f"{Path(str(getattr(slide, 'path', request.slide))).name}: {exc}; if the "
                "tissue is faint, run with --no-tissue-mask (use_tissue=False)") from None
        store = _open_store(prep, request.out, request.overwrite, slide)
        todo = store.pending(prep.rois)
        yield RunStarted(detector.task, prep.geometry, store, config, dict(options),
                         dict(params), len(prep.rois), len(todo), str(device), request.out)
        runner = run_tiles(prep, slide, todo, store, cancel, progress, request.n_readers)
        status = "done"
        t = time.perf_counter()
        try:
            for tile in runner:
                if not np.isfinite(tile.probs).all():
                    _forget_tile(store, tile, fresh=len(todo) == len(prep.rois))
                    raise ModelFileError(
                        f"the model {prep.model_name!r} produced non-finite values (NaN/inf) "
                        f"on ROI {tile.roi_index}: its weights are broken; results would be "
                        "meaningless, so the run stops here")
                yield tile
        except CancelledError:
            status = "cancelled"
        timings["inference_s"] = round(time.perf_counter() - t, 4)
        stats = runner.stats.to_dict()
        timings.update({
            "io_wait_fraction": stats["io_wait_fraction"], "model_s": stats["model_s"],
            "rois_planned": len(prep.rois), "rois_computed": runner.stats.done,
            "rois_resumed": len(prep.rois) - len(todo),
            "rois_repaired": len(getattr(store, "repaired", ())),
        })
        cell_area = prep.geometry.cell_size0 ** 2
        tissue_px = sum(r.rows * r.cols * cell_area * r.tissue for r in todo)
        timings["tissue_megapixels"] = round(tissue_px / 1e6, 3)
        if timings["inference_s"] > 0:
            timings["tissue_mpx_per_s"] = round(tissue_px / 1e6 / timings["inference_s"], 3)
        pending = len(store.pending(prep.rois))
        t = time.perf_counter()
        if status == "done":
            detector.finish(store, slide, net, config, options)
        heatmap = store.to_numpy()
        timings["stitch_s"] = round(time.perf_counter() - t, 4)
        if status == "done":
            store.mark_complete()  # result.write installs it with the results (one set)
        result = DetectionResult.build(
            detector, heatmap, prep, params, timings, slide, store, pending,
            device=str(device), use_tissue=tissue is not None)
        if transform is not None and hasattr(transform, "to_dict"):
            result.slide_info["stain"] = transform.to_dict()  # what the fit found
        timings["total_s"] = round(time.perf_counter() - start, 4)
        if request.out is not None and status == "done":
            result.write(request.out, locked=True)
        yield JobOutcome(status, result, runner.stats.done, len(todo),
                         time.perf_counter() - start, stats)
    finally:
        if owned and slide is not None:
            slide.close()
        if lock is not None:
            lock.release()


def detect(request: DetectionRequest, cancel: threading.Event | None = None, *,
           progress: ProgressFn | None = None, on_tile: Callable[[Any], None] | None = None,
           slide: Any = None, model: Any = None, tissue_mask: Any = None,
           on_start: Callable[[RunStarted], None] | None = None) -> DetectionResult:
    """Run `request` to the end and return its result (written to `request.out` when
    given). A cancelled run raises CancelledError and keeps the partial store.
    `on_start` is called when the tiles begin (the CLI's Ctrl-C turns graceful then)."""
    from ..engine.run import HeatmapTile

    outcome: JobOutcome | None = None
    for event in detection_events(request, cancel, progress=progress, slide=slide,
                                  model=model, tissue_mask=tissue_mask):
        if isinstance(event, RunStarted) and on_start is not None:
            on_start(event)
        elif isinstance(event, HeatmapTile) and on_tile is not None:
            on_tile(event)
        elif isinstance(event, JobOutcome):
            outcome = event
    assert outcome is not None
    if outcome.status == "cancelled":
        store = outcome.result.store
        where = (f"; the partial heatmap is kept in {store.path}: run the same command "
                 "again to resume") if store is not None and store.path is not None else ""
        raise CancelledError(f"cancelled after {outcome.done} of {outcome.total} ROIs{where}")
    return outcome.result
