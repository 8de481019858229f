"""npe2 sample data: a synthetic lymph-node slide ("phantom") with its ground truth.

File › Open Sample › WSI Detect › Phantom lymph node gives three layers:

* "Phantom lymph node (synthetic)": the slide, a multiscale RGB image in µm, opened from
  a file exactly as a dropped slide is (the Detect widget reads that file);
* "phantom truth": the metastases as a Shapes layer (red outlines, labelled with their
  size class), read from the phantom's GeoJSON truth;
* "phantom truth points": mitotic figures and look-alikes as Points, hidden at first.

The truth layers hold level-0 pixels as data with the slide's µm scale (see
`shapes_io.placement`), so they lie on the slide layer.

The slide (8192 × 6144 px, ~17 MB) is written once into the user cache
(~/.cache/napari-wsi-detect, or $NAPARI_WSI_DETECT_CACHE) and opened from there
afterwards (well under a second). Writing takes ~10 s; in napari it runs in a worker
thread while the main thread keeps serving the event loop (a nested `QEventLoop`, as a
modal dialog does), so the window stays live and a progress bar counts the tiles. The
npe2 sample command must return its layers, so it returns when the file is there.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from napari_wsi_detect._napari.layers import LayerData, slide_layer_data

PHANTOM_SEED = 0
PHANTOM_SIZE = (8192, 6144)  # the size the demo model's thresholds were chosen on
PHANTOM_MPP = 0.243
SLIDE_NAME = "Phantom lymph node (synthetic)"
TRUTH_NAME = "phantom truth"
TRUTH_EDGE_UM = 4.0  # outline width: visible at whole-slide zoom, thin beside a lesion
_POLL_MS = 50


def cache_dir() -> Path:
    root = os.environ.get("NAPARI_WSI_DETECT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "napari-wsi-detect"


def cached_phantom(seed: int | None = None, size: tuple[int, int] | None = None) -> Path:
    """Where the sample phantom lives in the cache (it may not be written yet). The
    package version is part of the name: a new release renders anew."""
    from napari_wsi_detect import __version__

    seed = PHANTOM_SEED if seed is None else int(seed)
    w, h = PHANTOM_SIZE if size is None else (int(size[0]), int(size[1]))
    return cache_dir() / f"phantom-lymph-node-{__version__}-seed{seed}-{w}x{h}.tif"


def _complete(path: Path) -> bool:
    from napari_wsi_detect.phantom import truth_paths

    return path.exists() and truth_paths(path)[0].exists()


def phantom_path(seed: int | None = None, size: tuple[int, int] | None = None) -> Path:
    """Path of the cached phantom, writing it first if needed (blocking, no GUI)."""
    out = cached_phantom(seed, size)
    if not _complete(out):
        _job(("write", out), lambda job: _write(job, out, seed, size)).future.result()
    return out


def phantom_lymph_node() -> list[LayerData]:
    """npe2 sample-data command: the phantom slide and its truth layers.

    Writing (first time), opening and reading the truth run in a worker thread; in
    napari's GUI the main thread meanwhile serves the event loop (see `_wait_live`)."""
    from napari_wsi_detect._napari.reader import _prefer_once

    _prefer_once()  # plugin code runs: from now on a dropped .svs needs no reader dialog
    out = cached_phantom()

    def work(job: _Job) -> list[LayerData]:
        _write(job, out, None, None)
        _warm_imports()
        return phantom_layers(out)

    return _wait_live(_job(("sample", out), work), writing=not _complete(out))


def phantom_layers(path: str | os.PathLike) -> list[LayerData]:
    """Layer data of a phantom slide and of the truth written beside it."""
    from napari_wsi_detect.slide import open_slide

    slide = open_slide(path)  # stays open: the layer's dask arrays read from it
    # The truth outlines come last: on top, and the layer napari selects.
    truth = sorted(truth_layers(path, slide.mpp), key=lambda layer: layer[2] == "shapes")
    return [slide_layer_data(slide, name=SLIDE_NAME), *truth]


def truth_layers(path: str | os.PathLike, mpp: float | None) -> list[LayerData]:
    """"phantom truth" Shapes (metastases) and "phantom truth points" (mitoses and
    look-alikes, hidden) from the phantom's GeoJSON, placed on a slide of `mpp`."""
    import numpy as np

    from napari_wsi_detect._napari.annotation_reader import read_annotation_file
    from napari_wsi_detect._napari.shapes_io import features_to_layers
    from napari_wsi_detect.phantom import truth_paths

    geojson = truth_paths(path)[0]
    layers = features_to_layers(read_annotation_file(geojson), mpp, name=TRUTH_NAME,
                                metadata={"source": str(geojson), "phantom_truth": True})
    for _data, kwargs, kind in layers:
        if kind == "shapes":
            edge = np.asarray(kwargs["edge_color"], dtype=float)
            face = edge.copy()
            face[:, 3] = 0.15  # a light fill finds an ITC at whole-slide zoom
            kwargs.update(
                face_color=face,
                edge_width=max(float(kwargs["edge_width"]), TRUTH_EDGE_UM / (mpp or 1.0)),
                text={"string": "{name}", "size": 10, "color": "white",
                      "anchor": "upper_left"},
            )
        else:
            kwargs["visible"] = False
    return layers


# --- work off the main thread -----------------------------------------------------------------
class _Job:
    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self.cancel = threading.Event()
        self.future: Future[Any] = Future()


class _Cancelled(Exception):
    pass


_jobs: dict[tuple[str, Path], _Job] = {}
_jobs_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _job(key: tuple[str, Path], work: Callable[[_Job], Any]) -> _Job:
    """`work(job)` on the worker thread, or the same job when it is still in flight (a
    second Open Sample while the first one writes waits for that write)."""
    global _executor
    with _jobs_lock:
        job = _jobs.get(key)
        if job is not None and not job.future.done():
            return job
        job = _jobs[key] = _Job()
        if _executor is None:
            # Non-daemon worker: at interpreter exit Python joins it, and a cancelled
            # write stops at the next tile and removes its temporary files.
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phantom-sample")
        job.future = _executor.submit(work, job)
        return job


def _write(job: _Job, out: Path, seed: int | None, size: tuple[int, int] | None) -> Path:
    """Write the phantom `out` unless it is complete already (atomically)."""
    if _complete(out):
        return out
    from napari_wsi_detect.phantom import write_phantom

    def progress(done: int, total: int) -> None:
        if job.cancel.is_set():
            raise _Cancelled("phantom sample cancelled")
        job.done, job.total = done, total

    out.parent.mkdir(parents=True, exist_ok=True)
    # write_phantom is atomic: temporary names, then the truth and last the slide.
    write_phantom(out, seed=PHANTOM_SEED if seed is None else seed,
                  size=PHANTOM_SIZE if size is None else size, mpp=PHANTOM_MPP,
                  progress=progress)
    return out


def _warm_imports() -> None:
    """Do on the worker what adding the layers would do first on the main thread in a
    fresh napari (~1.5 s there): import dask.array and its scheduler choice (which imports
    distributed when installed), pandas (layer features) and napari's Image/Shapes/Points
    layers, and build pint's unit registry (layer units)."""
    import dask.array  # noqa: F401
    import dask.base

    dask.base.get_scheduler()

    if "napari" in sys.modules:
        import napari.layers.image.image  # noqa: F401
        import napari.layers.points.points  # noqa: F401
        import napari.layers.shapes.shapes  # noqa: F401
        import pandas  # noqa: F401
        import pint

        pint.get_application_registry().Unit("micrometer")


def _qt_app() -> Any:
    """The Qt application when we run on its thread (napari's GUI), else None."""
    if "qtpy" not in sys.modules:
        return None
    from qtpy.QtCore import QCoreApplication, QThread

    app = QCoreApplication.instance()
    if app is None or QThread.currentThread() is not app.thread():
        return None
    return app


def _wait_live(job: _Job, writing: bool) -> Any:
    """The result of `job`; under napari's GUI the event loop keeps running meanwhile
    (a nested QEventLoop) and a cancelable progress bar counts the tiles written."""
    if _qt_app() is None:
        return job.future.result()
    from napari.utils import cancelable_progress
    from napari.utils.notifications import show_info
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_wsi_detect.errors import WsiDetectError

    if writing:
        show_info("Writing the phantom sample slide (first time only, about 10 s; "
                  f"cached in {cache_dir()})")
    shown_activity = writing and _show_activity(True)
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(_POLL_MS)
    desc = "Phantom sample: writing" if writing else "Phantom sample: opening"
    with cancelable_progress(total=0, desc=desc) as bar:

        def poll() -> None:
            if bar.is_canceled:
                job.cancel.set()
            if job.total and bar.total != job.total:
                bar.total = job.total
            if job.done > bar.n:
                bar.update(job.done - bar.n)
            if job.future.done():
                loop.quit()

        timer.timeout.connect(poll)
        timer.start()
        if not job.future.done():
            (getattr(loop, "exec", None) or loop.exec_)()
        timer.stop()
    if shown_activity:
        _show_activity(False)
    if not job.future.done():  # the application quit while we waited
        job.cancel.set()
        raise WsiDetectError("phantom sample cancelled: napari is closing")
    try:
        return job.future.result()
    except _Cancelled:
        raise WsiDetectError("phantom sample cancelled; nothing was written") from None


def _show_activity(visible: bool) -> bool:
    """Open (or close) the current viewer's activity dock, where the progress bar is;
    True when it was hidden and is now shown. Private napari API, hence best effort."""
    try:
        import napari

        window = napari.current_viewer().window
        if visible == window._qt_window._activity_dialog.isVisible():
            return False
        window._status_bar._toggle_activity_dock(visible)
        return True
    except Exception:
        return False
