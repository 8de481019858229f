"""Inputs of `wsi-detect evaluate dice`: truth and predicted tumour masks on one grid.

Truth (per slide, matched by slide id as in `froc_io`: the file name without format
suffixes, case ignored)
  * a mask at downsample 32 (the phantom's `<stem>.tumour-mask.tif`, a Camelyon
    `<stem>_Mask.tif` pyramid, a PNG): tumour = value > 0; its grid is the evaluation
    grid;
  * annotations (QuPath GeoJSON, ASAP XML, NCRF JSON; holes and Exclusion polygons
    subtracted, `annotations/truth.py`): rasterised on the level-5 grid of the slide
    (size from the run's summary.json, else the phantom GeoJSON's own record, else
    the extent of both outlines);
  * a folder of those (a mask preferred over annotations of the same slide).
Prediction
  * a run folder (`summary.json` + its results file, e.g. `tumour.geojson`, as last
    written: the pathologist's edits included), or that results file inside one; the
    slide id, level-0 size and pixel size come from summary.json (`read_summary`);
  * a GeoJSON of tumour polygons (`<id>.geojson`), or a mask TIFF/PNG at downsample 32;
  * a folder of run folders / such files.
Pixel sizes recorded on both sides (mask resolution / run summary) must agree within
2 % (the same scan); a level-5 mask must have the run's slide size / 32 cells (±1).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnnotationError
from .froc import EVALUATION_DOWNSAMPLE, EvaluationError, check_mask_cells, rasterise_polygons
from .froc_io import _summary_mpp
from .segmentation import SlideDice, slide_dice
from .truth_masks import (
    RUN_SUMMARY,
    is_mask_file,
    read_mask_file,
    slide_id_from_path,
    truth_files,
)

DS = EVALUATION_DOWNSAMPLE
_MPP_TOLERANCE = 0.02
_HEATMAP = "heatmap.zarr"


@dataclass
class MaskSource:
    """One side of a slide: a level-5 mask, or polygons to rasterise on the grid."""

    slide_id: str
    source: Path
    mask: np.ndarray | None = None  # bool (rows, cols) at downsample 32
    tumour: list[Any] | None = None  # shapely polygons, level-0 px
    exclusion: list[Any] | None = None
    slide_size: tuple[int, int] | None = None  # level-0 (width, height) when recorded
    mpp: float | None = None  # level-0 µm/px when recorded
    region: tuple[float, float, float, float] | None = None  # level-0 x, y, w, h a run covered

    def grid(self, shape: tuple[int, int]) -> np.ndarray:
        if self.mask is not None:
            return _fit(self.mask, shape, self)
        return rasterise_polygons(self.tumour or [], shape, self.exclusion or [], DS)

    def extent_cells(self) -> tuple[int, int]:
        """(rows, cols) reaching past every outline (for truths with no recorded size)."""
        if self.mask is not None:
            return self.mask.shape
        rows = cols = 1
        for g in (self.tumour or []):
            x0, y0, x1, y1 = g.bounds
            rows, cols = max(rows, math.ceil(y1 / DS) + 1), max(cols, math.ceil(x1 / DS) + 1)
        return rows, cols


def _fit(mask: np.ndarray, shape: tuple[int, int], side: MaskSource) -> np.ndarray:
    """`mask` on a grid of `shape`: identical, or cut/padded by one cell of rounding."""
    if mask.shape == tuple(shape):
        return mask
    if any(abs(a - b) > 1 for a, b in zip(mask.shape, shape, strict=True)):
        raise EvaluationError(
            f"slide {side.slide_id}: {side.source.name} is a {mask.shape[1]} x "
            f"{mask.shape[0]} cell mask, the other side's level-5 grid is {shape[1]} x "
            f"{shape[0]}: not the same slide, or not at downsample {DS}")
    out = np.zeros(shape, dtype=bool)
    r, c = min(shape[0], mask.shape[0]), min(shape[1], mask.shape[1])
    out[:r, :c] = mask[:r, :c]
    return out


# -- truth -----------------------------------------------------------------------------
def read_truth_file(path: Path) -> MaskSource:
    from ..annotations.truth import read_tumour_polygons

    sid = slide_id_from_path(path)
    name = path.name.lower()
    if is_mask_file(path) or name.endswith((".tif", ".tiff", ".png")):
        mask, mpp = read_mask_file(path)
        return MaskSource(sid, path, mask=mask > 0, mpp=mpp)
    tumour, exclusion = read_tumour_polygons(path)
    return MaskSource(sid, path, tumour=tumour, exclusion=exclusion,
                      slide_size=_phantom_size(path), mpp=_phantom_mpp(path))


def _phantom_member(path: Path) -> dict:
    if not path.name.lower().endswith(".geojson"):
        return {}
    from ..annotations.geojson import load_geojson_object

    doc = load_geojson_object(path)
    member = doc.get("phantom") if isinstance(doc, dict) else None
    return member if isinstance(member, dict) else {}


def _phantom_size(path: Path) -> tuple[int, int] | None:
    size = _phantom_member(path).get("size")
    if (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and 0 < v < 10**7 for v in size)):
        return int(size[0]), int(size[1])
    return None


def _phantom_mpp(path: Path) -> float | None:
    mpp = _phantom_member(path).get("mpp")
    return float(mpp) if isinstance(mpp, (int, float)) and 0.01 <= mpp <= 20 else None


def load_truth_masks(paths: Iterable[str | os.PathLike]) -> list[MaskSource]:
    files = truth_files(paths)
    if not files:
        raise AnnotationError(
            f"no ground truth in {', '.join(map(str, paths))}: expected level-5 mask TIFFs "
            "(<id>.tumour-mask.tif) or annotation files (GeoJSON, XML)")
    return [read_truth_file(f) for f in files]


# -- predictions -----------------------------------------------------------------------
def read_run_folder(folder: Path) -> MaskSource:
    """The tumour polygons a run folder holds, with its slide's id, size and mpp."""
    from ..annotations.truth import read_tumour_polygons
    from ..detectors.result import read_summary

    summary = read_summary(folder, check=True)
    results = _results_file(folder, summary)
    task = str(summary.get("task", ""))
    kind = _result_kind(task)
    if kind == "points":
        raise EvaluationError(
            f"{folder} is a {task} run: its {results.name} holds points, not a tumour "
            "outline; give a tumour (or metastases) run folder to --masks")
    slide = summary.get("slide") if isinstance(summary.get("slide"), dict) else {}
    sid = folder.name
    if isinstance(summary.get("slide_id"), str) and summary["slide_id"]:
        sid = summary["slide_id"]
    elif isinstance(slide.get("path"), str) and slide["path"]:
        sid = slide_id_from_path(slide["path"])
    size = None
    w, h = slide.get("width"), slide.get("height")
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
        size = (w, h)
    tumour, exclusion = read_tumour_polygons(results)
    return MaskSource(sid, results, tumour=tumour, exclusion=exclusion, slide_size=size,
                      mpp=_summary_mpp(summary, folder / RUN_SUMMARY),
                      region=_region(summary, folder))


def _region(summary: dict, folder: Path) -> tuple[float, float, float, float] | None:
    params = summary.get("parameters")
    region = params.get("region") if isinstance(params, dict) else None
    if region is None:
        return None
    if (not isinstance(region, list) or len(region) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in region)
            or region[2] <= 0 or region[3] <= 0):
        raise EvaluationError(f"{folder / RUN_SUMMARY}: its region {region!r} is not "
                              "[x, y, width, height] in level-0 px; the summary is damaged")
    return tuple(float(v) for v in region)


def region_cells(region: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:
    """Cells of the grid whose centre lies in the level-0 rectangle (x, y, w, h)."""
    x, y, w, h = region
    rows = (np.arange(shape[0]) + 0.5) * DS
    cols = (np.arange(shape[1]) + 0.5) * DS
    return ((rows >= y) & (rows < y + h))[:, None] & ((cols >= x) & (cols < x + w))[None, :]


def _results_file(folder: Path, summary: dict) -> Path:
    outputs = summary.get("outputs")
    names = [n for n in outputs if n != _HEATMAP] if isinstance(outputs, dict) else []
    names += ["tumour.geojson", "regions.geojson"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise EvaluationError(
        f"{folder} has a {RUN_SUMMARY} but no results file ({', '.join(dict.fromkeys(names))})")


def _result_kind(task: str) -> str | None:
    try:
        from ..detectors import get_detector

        return str(get_detector(task).result_kind)
    except Exception:  # noqa: BLE001 - an unknown/older task: judge by the file alone
        return None


def _is_run(folder: Path) -> bool:
    return (folder / RUN_SUMMARY).is_file()


def read_prediction_file(path: Path) -> MaskSource:
    if path.parent != path and _is_run(path.parent) and path.suffix.lower() in (".geojson", ".json"):
        return read_run_folder(path.parent)
    name = path.name.lower()
    if is_mask_file(path) or name.endswith((".tif", ".tiff", ".png")):
        mask, mpp = read_mask_file(path)
        return MaskSource(slide_id_from_path(path), path, mask=mask > 0, mpp=mpp)
    if name.endswith((".geojson", ".geojson.gz", ".json", ".xml")):
        from ..annotations.truth import read_tumour_polygons

        tumour, exclusion = read_tumour_polygons(path)
        return MaskSource(slide_id_from_path(path), path, tumour=tumour, exclusion=exclusion)
    raise EvaluationError(
        f"{path.name}: a prediction is a run folder, a GeoJSON of tumour polygons or a "
        "level-5 mask TIFF")


def load_predictions(paths: Iterable[str | os.PathLike]) -> list[MaskSource]:
    out: list[MaskSource] = []
    for p in map(Path, paths):
        if p.is_dir():
            if _is_run(p):
                out.append(read_run_folder(p))
                continue
            children = [c for c in sorted(p.iterdir())
                        if (c.is_dir() and _is_run(c)) or (c.is_file() and _is_prediction_name(c))]
            if not children:
                raise EvaluationError(
                    f"{p} holds no predictions: expected run folders (summary.json + "
                    "tumour.geojson), GeoJSON files or level-5 mask TIFFs")
            out += [read_run_folder(c) if c.is_dir() else read_prediction_file(c) for c in children]
        elif p.is_file():
            out.append(read_prediction_file(p))
        else:
            raise EvaluationError(f"prediction not found: {p}")
    return out


def _is_prediction_name(path: Path) -> bool:
    name = path.name.lower()
    return is_mask_file(path) or name.endswith((".geojson", ".geojson.gz"))


# -- matching --------------------------------------------------------------------------
def _differ(a: float, b: float) -> bool:
    return abs(a - b) > _MPP_TOLERANCE * min(a, b)


def score_pair(truth: MaskSource, pred: MaskSource, mpp: float | None = None
               ) -> tuple[SlideDice, np.ndarray, np.ndarray, list[str]]:
    """(scores, truth grid, predicted grid, warnings) of one slide on the truth's grid."""
    warnings: list[str] = []
    sid = truth.slide_id
    recorded = [(v, s.source.name) for s in (truth, pred) if (v := s.mpp) is not None]
    if mpp is None and len(recorded) == 2 and _differ(recorded[0][0], recorded[1][0]):
        raise EvaluationError(
            f"slide {sid}: the pixel sizes disagree: {recorded[0][1]} records "
            f"{recorded[0][0]:g} µm/px, {recorded[1][1]} {recorded[1][0]:g}: different "
            "scans? Check them, or pass --mpp to choose the level-0 pixel size")
    use_mpp = mpp if mpp is not None else (recorded[0][0] if recorded else None)
    size = pred.slide_size or truth.slide_size
    expected = None if size is None else (math.ceil(size[1] / DS), math.ceil(size[0] / DS))
    if truth.mask is not None:
        shape = truth.mask.shape
        if expected is not None and any(abs(a - b) > 1 for a, b in zip(shape, expected, strict=True)):
            raise EvaluationError(
                f"slide {sid}: the truth {truth.source.name} is {shape[1]} x {shape[0]} cells, "
                f"but the slide is {size[0]} x {size[1]} px, i.e. {expected[1]} x {expected[0]} "
                f"cells at downsample {DS}: not this slide's level-5 mask")
    elif pred.mask is not None:
        shape = pred.mask.shape
    elif expected is not None:
        shape = expected
    else:
        a, b = truth.extent_cells(), pred.extent_cells()
        shape = (max(a[0], b[0]), max(a[1], b[1]))
        warnings.append(f"slide {sid}: no slide size recorded; the grid spans the outlines "
                        f"({shape[1]} x {shape[0]} cells)")
    check_mask_cells(shape, f"slide {sid}")
    t, p = truth.grid(shape), pred.grid(shape)
    if pred.region is not None:
        # the run looked at a region only: truth elsewhere was never its to find
        inside = region_cells(pred.region, shape)
        t, p = t & inside, p & inside
        x, y, w, h = (int(v) for v in pred.region)
        warnings.append(f"slide {sid}: scored inside the run's region only "
                        f"(x {x}, y {y}, {w} x {h} px level 0)")
    cell_mm2 = None if use_mpp is None else (DS * use_mpp / 1000.0) ** 2
    scores = slide_dice(t, p, sid, cell_mm2)
    scores.truth_source, scores.prediction_source = str(truth.source), str(pred.source)
    return scores, t, p, warnings


def match(truths: list[MaskSource], preds: list[MaskSource]
          ) -> tuple[list[tuple[MaskSource, MaskSource]], list[str]]:
    """Pairs (truth, prediction) by slide id; a prediction without truth is an error."""
    by_id: dict[str, MaskSource] = {}
    for t in truths:
        key = t.slide_id.lower()
        if key in by_id:
            raise EvaluationError(
                f"two ground truths for slide {t.slide_id}: {by_id[key].source} and {t.source}")
        by_id[key] = t
    pairs, seen, missing = [], set(), []
    for p in preds:
        key = p.slide_id.lower()
        if key in seen:
            raise EvaluationError(f"two predictions for slide {p.slide_id} ({p.source})")
        seen.add(key)
        if key in by_id:
            pairs.append((by_id[key], p))
        else:
            missing.append(p.slide_id)
    if missing:
        raise EvaluationError(
            f"no ground truth for slide(s) {', '.join(missing)}; truth was read for "
            f"{', '.join(sorted(t.slide_id for t in truths)) or 'none'}. Ids are file names "
            "without format suffixes (or the slide in a run's summary.json), case ignored")
    warnings = [f"truth {t.source.name} has no prediction: left out"
                for k, t in by_id.items() if k not in seen]
    return pairs, warnings
