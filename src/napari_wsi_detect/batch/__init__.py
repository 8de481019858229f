"""Many slides: one task per slide on dask.distributed, resumable, with a report.

`run_batch(slides, task, out, ...)` (batch/run.py) is the Python entry point and
`wsi-detect batch` its command line. The pieces: `cohort.py` (slides, output folders,
what is already finished), `cluster.py` (LocalCluster or a scheduler address),
`task.py` (what a worker runs for one slide), `report.py` (report.csv/json),
`evaluate.py` (the cohort's evaluation with --truth). Batch never names a task: it goes
through the detector registry and the one job (detectors/job.py). See docs/batch.md.
"""

from .._lazy import attach

_LAZY = {
    "run_batch": "napari_wsi_detect.batch.run",
    "BatchReport": "napari_wsi_detect.batch.report",
}

__getattr__, __all__ = attach(__name__, _LAZY)
