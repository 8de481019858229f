"""Where the widget's runs live on disk, and how a saved run folder comes back.

Every widget run streams into a run folder: the one the user opened (a `wsi-detect
TASK --out DIR` folder resumes in the widget) or a per-slide, per-settings folder in the
user cache (`$WSI_DETECT_CACHE` or the platform cache dir), so a napari crash leaves a
resumable partial heatmap, exactly like the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from napari_wsi_detect.errors import WsiDetectError


def cache_root() -> Path:
    env = os.environ.get("WSI_DETECT_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-wsi-detect"))


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_key(detector: Any, model: str, options: dict[str, Any]) -> tuple[str, str]:
    """(model name, fingerprint text) the job will give the store: read from the model's
    JSON only (no weights), so the widget knows before a run whether a store fits."""
    from napari_wsi_detect.detectors.job import model_identity
    from napari_wsi_detect.engine.run import Normalisation
    from napari_wsi_detect.models.io import load_config

    config = load_config(model)
    detector.check_model(config)
    fp = detector.fingerprint(config, options, Normalisation.from_config(config).to_dict())
    return model_identity(config, model), json.dumps(json.loads(json.dumps(fp)), sort_keys=True)


def store_key(store: Any) -> tuple[str, str]:
    return store.model_name, json.dumps(store.params, sort_keys=True)


def cache_run_dir(slide_path: str, shape0: tuple[int, int], task: str,
                  key: tuple[str, str]) -> Path:
    slide = Path(slide_path)
    return (cache_root() / "runs" / f"{slide.stem}-{_digest(str(slide.resolve()), shape0)}"
            / f"{task}-{_digest(key)}")


def load_run(folder: Path, slide_layer: Any, shape0: tuple[int, int]) -> Any:
    """A DetectionResult from a run folder (finished, or a partial heatmap only), checked
    against the slide it is opened on."""
    from napari_wsi_detect.detectors import get_detector
    from napari_wsi_detect.detectors.result import DetectionResult, read_summary
    from napari_wsi_detect.engine.heatmap import COMMIT_JOURNAL, open_heatmap
    from napari_wsi_detect.engine.maps import read_maps

    summary: dict[str, Any] = {}
    if (folder / "summary.json").is_file() or (folder / COMMIT_JOURNAL).exists():
        # first: installs an output set a kill interrupted, refuses a mixed one
        summary = read_summary(folder, check=True)
    store = open_heatmap(folder)
    g = store.geometry
    if (g.height0, g.width0) != tuple(shape0):
        raise WsiDetectError(
            f"the run in {folder} was made on a {g.width0} x {g.height0} px slide, but "
            f"{slide_layer.name} is {shape0[1]} x {shape0[0]} px: open the slide it was made on")
    det = get_detector(summary.get("task", "metastases"))
    config = dict(summary.get("model") or {})
    saved = summary.get("parameters") or {}
    values = det.defaults(config, {p.key: saved[p.key] for p in det.params if p.key in saved})
    options = {p.key: store.params.get(p.key, saved.get(p.key, p.default)) for p in det.options}
    heatmap = store.to_numpy()
    # maps a detector's finish stored (the tumour refinement), as DetectionResult.build
    maps = read_maps(store, getattr(det, "extra_maps", ()) or ())
    detections = (det.postprocess(heatmap, g, values, maps=maps)
                  if getattr(det, "extra_maps", ()) else det.postprocess(heatmap, g, values))
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
