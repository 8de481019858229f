"""One result type for every detector, with one summary.json shape.

A run folder holds ``heatmap.zarr`` (the store), the detector's results file
(``regions.geojson`` for metastases) and ``summary.json``, replaced together as one set
(`outdir.commit_outputs`). summary.json records the sha256 of the results file and the
id of the store it belongs to, so a reader can tell a matching set from one mixed by
hand or by an older version (`read_summary(..., check=True)`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import sha256_file as _sha256
from ..errors import WsiDetectError
from .base import Detections

SUMMARY_NAME = "summary.json"
SUMMARY_FORMAT = 2
SUMMARY_KEYS = (
    "format", "task", "slide", "slide_score", "region_count", "regions", "model",
    "parameters", "geometry", "timings", "complete", "rois", "outputs", "package_version",
    "created",
)


@dataclass
class DetectionResult:
    """A detection on one slide. `heatmap` is the float32 map (rows, cols), NaN where
    nothing was computed; `detections` come from the current post-processing values
    (`parameters`); `complete` is False while planned ROIs are still pending."""

    task: str
    heatmap: np.ndarray
    geometry: Any
    detections: Detections
    timings: dict[str, Any]
    config: dict[str, Any]
    parameters: dict[str, Any]
    slide_info: dict[str, Any] = field(default_factory=dict)
    store: Any = None
    rois_planned: int = 0
    rois_pending: int = 0
    out_dir: Path | None = None
    # maps the detector's `finish` stored beside the heatmap (engine/maps.py), e.g. the
    # tumour detector's refined map; passed to its postprocess as `maps=`
    maps: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, detector: Any, heatmap: np.ndarray, prep: Any, params: dict[str, Any],
              timings: dict[str, Any], slide: Any, store: Any, pending: int, *,
              device: str, use_tissue: bool) -> DetectionResult:
        from ..engine.maps import read_maps

        maps = read_maps(store, detector.extra_maps)
        detections = detector.postprocess_stored(heatmap, prep.geometry, params, maps)
        timings["postprocess_s"] = round(detections.seconds, 4)
        h0, w0 = slide.levels[0].shape[:2]
        tissue = prep.tissue
        parameters = {
            **prep.options,
            "device": device,
            "backend": {"requested": prep.backend_requested, "resolved": prep.backend},
            "roi_cells": prep.roi_cells,
            "roi_pixels": prep.geometry.read_size(prep.roi_cells),
            "batch_size": prep.batch_size,
            "region": list(prep.region) if prep.region is not None else None,
            "tissue_mask": use_tissue,
            **params,
        }
        slide_info = {
            "path": str(getattr(slide, "path", "")),
            "width": int(w0),
            "height": int(h0),
            "mpp": slide.mpp,
            "mpp_assumed": prep.geometry.mpp_assumed,
            "tissue_fraction": (round(float(tissue.tissue_fraction), 4)
                                if tissue is not None and hasattr(tissue, "tissue_fraction")
                                else None),
        }
        return cls(detector.task, heatmap, prep.geometry, detections, timings,
                   prep.config, parameters, slide_info, store, len(prep.rois), pending,
                   maps=maps)

    # -- views --------------------------------------------------------------------------------
    @property
    def detector(self) -> Any:
        from . import get_detector

        return get_detector(self.task)

    @property
    def regions(self) -> list[Any]:
        return self.detections.items

    @property
    def slide_score(self) -> float:
        return self.detections.score

    @property
    def complete(self) -> bool:
        return self.rois_pending == 0

    def values(self) -> dict[str, Any]:
        """The post-processing values in force (one key per schema Param)."""
        return {p.key: self.parameters[p.key] for p in self.detector.params}

    def postprocess(self, **values: Any) -> list[Any]:
        """Re-run post-processing only (slider moves; never the network) with `values`
        changed; updates `detections`/`parameters` and returns the items."""
        new = self.detector.defaults(None, {**self.values(), **values})
        self.detections = self.detector.postprocess_stored(self.heatmap, self.geometry, new,
                                                           self.maps)
        self.parameters.update(new)
        self.timings["postprocess_s"] = round(self.detections.seconds, 4)
        return self.detections.items

    def features(self) -> list[Any]:
        return self.detector.features(self.detections)

    def summary(self) -> dict[str, Any]:
        from .. import __version__

        model = {k: v for k, v in self.config.items()
                 if not str(k).startswith("_") and k not in ("training",)}
        model["path"] = self.config.get("_json_path")
        score = self.slide_score
        return {
            "format": SUMMARY_FORMAT,
            "task": self.task,
            "slide": self.slide_info,
            "slide_score": score if score is not None and math.isfinite(score) else None,
            **self.detector.summary_items(self.detections),
            "model": model,
            "parameters": dict(self.parameters),
            "geometry": self.geometry.to_dict(),
            "timings": dict(self.timings),
            "complete": self.complete,
            "rois": {"planned": self.rois_planned, "pending": self.rois_pending},
            "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # -- files ----------------------------------------------------------------------------------
    def write(self, out_dir: str | os.PathLike, features: list[Any] | None = None, *,
              locked: bool = False) -> Path:
        """Write DIR/heatmap.zarr, DIR/<results file> and DIR/summary.json as one set
        (`outdir.commit_outputs`: all replaced or none). `features` replaces the computed
        ones (the widget saves the layer as the pathologist edited it). The folder is
        locked for the write unless `locked` (the job holds the lock). Returns DIR."""
        import uuid

        from .._atomic import TMP_SUFFIX, write_json_atomic
        from ..annotations.geojson import write_geojson
        from ..engine.heatmap import ATTR_KEY, FINAL_NAME, PARTIAL_SUFFIX, HeatmapStore
        from .outdir import RunFolderLock, commit_outputs, committed, finish_commit

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        t_write = time.perf_counter()
        if self.store is None:
            raise WsiDetectError("this result has no heatmap store to write")
        final = out / FINAL_NAME
        token = uuid.uuid4().hex[:16]
        replacements: list[tuple[Path, Path]] = []
        lock = None if locked else RunFolderLock(out)
        try:
            finish_commit(out, locked=True)
            where = Path(self.store.path).resolve() if self.store.path is not None else None
            if where == final.resolve():
                store_id = self.store.attrs.get("id")
            else:
                partial = out / (FINAL_NAME + PARTIAL_SUFFIX)
                store = (self.store if where == partial.resolve()
                         else self.store.copy(partial))
                meta = store.attrs
                meta.update(complete=self.complete, id=token)
                store.group.attrs[ATTR_KEY] = meta
                store_id = token
                replacements.append((partial, final))
            results = out / self.detector.results_file
            new_results = out / f".{results.name}.{token}{TMP_SUFFIX}"
            write_geojson(new_results, self.features() if features is None else features)
            summary = self.summary()
            summary["outputs"] = {results.name: {"sha256": _sha256(new_results)}}
            if store_id:
                summary["outputs"][FINAL_NAME] = {"id": store_id}
            new_summary = out / f".{SUMMARY_NAME}.{token}{TMP_SUFFIX}"
            write_json_atomic(new_summary, summary)
            replacements += [(new_results, results), (new_summary, out / SUMMARY_NAME)]
            commit_outputs(out, replacements)
        finally:
            if not committed(out):  # after the commit point the temporaries are the set
                for tmp in out.glob(f".*.{token}{TMP_SUFFIX}"):
                    tmp.unlink(missing_ok=True)
            if lock is not None:
                lock.release()
        if replacements and replacements[0][1] == final:
            self.store = HeatmapStore.open(final)
        self.out_dir = out
        from ..exports import after_write  # the OME-Zarr copy of the maps (issue 16)

        t_ngff = time.perf_counter()
        after_write(out, self)
        # Only in memory (bench wholeslide --breakdown): summary.json is already written.
        self.timings["outputs_s"] = round(t_ngff - t_write, 4)
        self.timings["ngff_s"] = round(time.perf_counter() - t_ngff, 4)
        return out


def read_summary(folder: str | os.PathLike, check: bool = False) -> dict[str, Any]:
    """summary.json of a run folder, older shapes mapped to today's keys. An output set
    whose writing was interrupted after its commit point is installed first. With
    `check`, WsiDetectError when the results file or heatmap store is not the one the
    summary was written with (a folder mixed by hand or by an older version)."""
    from .outdir import finish_commit
    from .params import canonical_keys

    folder = Path(folder)
    path = folder / SUMMARY_NAME
    if folder.is_dir():
        finish_commit(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WsiDetectError(f"{folder} has no {SUMMARY_NAME}: not a run folder") from None
    except (OSError, ValueError) as exc:
        raise WsiDetectError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise WsiDetectError(f"{path} is not a run summary")
    data["parameters"] = canonical_keys(data.get("parameters"))
    if isinstance(data.get("slide"), str):  # the widget's old summary shape
        data["slide"] = {"path": data["slide"]}
    data.setdefault("task", "metastases")
    if check:
        _check_outputs(folder, path, data.get("outputs"))
    return data


def _check_outputs(folder: Path, path: Path, outputs: Any) -> None:
    from ..engine.heatmap import ATTR_KEY, FINAL_NAME

    if not isinstance(outputs, dict):
        return
    redo = "run the detection again into this folder to rewrite the set"
    for name, meta in outputs.items():
        f = folder / str(name)
        if not isinstance(meta, dict):
            raise WsiDetectError(f"{path}: its record of {name} is damaged; {redo}")
        if name == FINAL_NAME:
            have = None
            try:
                have = json.loads((f / "zarr.json").read_text(encoding="utf-8"))
                have = have["attributes"][ATTR_KEY].get("id")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                have = None
            if have != meta.get("id"):
                raise WsiDetectError(
                    f"{f} is not the heatmap {path} was written with (missing, damaged or "
                    f"from another run); {redo}")
        elif not f.is_file() or _sha256(f) != meta.get("sha256"):
            raise WsiDetectError(
                f"{f} does not belong to {path} (changed or left half-written); {redo}")
