"""Reopen a run folder as a `DetectionResult`: the stored maps post-processed with the
values its summary.json records, never the network. The widget's Open run, the
exports and the run-folder reader all use this one loader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import WsiDetectError


def load_result(folder: str | os.PathLike, *, need_summary: bool = False,
                shape0: tuple[int, int] | None = None, slide_name: str = "the slide") -> Any:
    """The run in `folder` (finished, or only a partial heatmap unless `need_summary`).

    `shape0` (level-0 height, width): refuse a run made on a slide of another size.
    WsiDetectError for a folder that is not a run, a mixed output set (an interrupted
    install is finished first, by read_summary) or a damaged store."""
    from ..engine.heatmap import COMMIT_JOURNAL, open_heatmap
    from ..engine.maps import read_maps
    from . import get_detector
    from .result import DetectionResult, read_summary

    folder = Path(folder)
    if not folder.is_dir():
        raise WsiDetectError(f"{folder} is not a folder: give the run folder (--out of "
                             "wsi-detect TASK), which holds summary.json and heatmap.zarr")
    summary: dict[str, Any] = {}
    if need_summary or (folder / "summary.json").is_file() or (folder / COMMIT_JOURNAL).exists():
        summary = read_summary(folder, check=True)
    store = open_heatmap(folder)
    g = store.geometry
    if shape0 is not None and (g.height0, g.width0) != tuple(shape0):
        raise WsiDetectError(
            f"the run in {folder} was made on a {g.width0} x {g.height0} px slide, but "
            f"{slide_name} is {shape0[1]} x {shape0[0]} px: open the slide it was made on")
    det = get_detector(summary.get("task", "metastases"))
    config = dict(summary.get("model") or {})
    saved = summary.get("parameters") or {}
    values = det.defaults(config, {p.key: saved[p.key] for p in det.params if p.key in saved})
    options = {p.key: store.params.get(p.key, saved.get(p.key, p.default)) for p in det.options}
    heatmap = store.to_numpy()
    maps = read_maps(store, det.extra_maps)
    detections = det.postprocess_stored(heatmap, g, values, maps)
    rois = summary.get("rois") or {}
    computed = int(store.computed_blocks().sum())
    return DetectionResult(
        det.task, heatmap, g, detections, dict(summary.get("timings") or {}), config,
        {**options, **{k: v for k, v in saved.items() if k not in values}, **values},
        dict(summary.get("slide") or {}), store,
        int(rois.get("planned", computed)),
        # No summary (a cancelled CLI run): how many ROIs are left is not known, only
        # that the store is not finished.
        int(rois["pending"]) if "pending" in rois else (0 if store.complete else -1), folder,
        maps=maps)
