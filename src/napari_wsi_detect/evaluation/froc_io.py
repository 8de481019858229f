"""Inputs of the FROC evaluation: detections and ground truth, matched by slide id.

Detections
  * a run folder of ours (`DIR/regions.geojson` [+ `DIR/summary.json`]): one detection
    per feature, probability `measurements.max_probability`, location
    `measurements.peak_x/peak_y` (the point of maximum probability) when present, else
    `measurements.centroid_x/centroid_y`, else the geometry's centroid (a Point is itself);
  * the official per-slide CSV: `prob,x,y` rows (level-0 px), header optional;
  * a folder of either (CSV files, or sub-folders that are run folders).
Ground truth
  * a mask TIFF at downsample 32 (our phantom's `<stem>.tumour-mask.tif`, lesion labels or
    binary), or a pyramidal mask (Camelyon `<stem>_Mask.tif`) whose level at downsample
    32 is read (never level 0);
  * Camelyon/ASAP XML, NCRF JSON, or GeoJSON polygons classified Tumor (holes = inner
    rings; Exclusion polygons subtracted);
  * a folder of those.
Slide id = file name without its format suffixes (`Tumor_001.csv`, `Tumor_001.xml`,
`Tumor_001_Mask.tif`, `phantom.tumour-mask.tif` -> `Tumor_001` / `phantom`); for a run
folder, the slide named in summary.json, else the folder name. Matching ignores case.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..annotations.truth import read_tumour_polygons
from ..errors import AnnotationError
from .froc import (
    EVALUATION_DOWNSAMPLE,
    L0_RESOLUTION,
    EvaluationError,
    SlideEval,
    crop_to_lesions,
    evaluation_mask_from_mask,
    evaluation_mask_from_polygons,
)

RUN_REGIONS = "regions.geojson"
RUN_SUMMARY = "summary.json"
# A single-page mask larger than this is level 0, not level 5 (Camelyon level 5 is
# ~3000 x 7000): refuse rather than load gigabytes.
_MAX_LEVEL5_SIDE = 40_000

_MASK_SUFFIX = re.compile(r"([._-](tumou?r[._-])?mask)\.(tiff?|png)$", re.IGNORECASE)
_FORMAT_SUFFIX = re.compile(
    r"\.(geojson\.gz|geojson|xml|json|csv|ome\.tiff?|tiff?|svs|ndpi|mrxs|png)$",
    re.IGNORECASE,
)


def slide_id_from_path(path: str | os.PathLike) -> str:
    """Slide id of a detections/truth file name (see the module docstring)."""
    name = Path(path).name
    stripped = _MASK_SUFFIX.sub("", name)
    if stripped == name:
        stripped = _FORMAT_SUFFIX.sub("", name)
    return stripped


def is_mask_file(path: str | os.PathLike) -> bool:
    return bool(_MASK_SUFFIX.search(Path(path).name))


# --------------------------------------------------------------------------------------
# Detections


@dataclass
class DetectionSet:
    slide_id: str
    detections: np.ndarray  # (N, 3): probability, x, y (level-0 px)
    source: Path
    slide_score: float | None = None  # summary.json's, when a run folder gives one

    @property
    def score(self) -> float:
        """Slide score: the run's own, else the max detection probability (0 if none)."""
        if self.slide_score is not None:
            return float(self.slide_score)
        return float(self.detections[:, 0].max()) if len(self.detections) else 0.0


def read_detection_csv(path: str | os.PathLike) -> np.ndarray:
    """(N, 3) prob, x, y of an official Camelyon16 submission CSV (header optional)."""
    path = Path(path)
    rows = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise EvaluationError(f"cannot read detections file {path}: {exc}") from exc
    first = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) < 3:
                raise ValueError
            rows.append((float(fields[0]), float(fields[1]), float(fields[2])))
        except ValueError:
            if first:  # a header line such as "prob,x,y"
                first = False
                continue
            raise EvaluationError(
                f"{path.name} line {number}: expected 'probability,x,y' numbers, got "
                f"{line.strip()!r}"
            ) from None
        first = False
    det = np.array(rows, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(det)):
        raise EvaluationError(f"{path.name}: NaN or infinite values among the detections")
    return det


def _load_json(path: Path) -> object:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return json.load(f)
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AnnotationError(f"file not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise AnnotationError(f"{path.name} is not valid JSON/GeoJSON ({exc})") from exc


def _features(path: Path, data: object) -> list[dict]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    elif isinstance(data, list):  # QuPath also writes a bare list of features
        feats = data
    else:
        raise AnnotationError(f"{path.name}: not a GeoJSON FeatureCollection")
    if not isinstance(feats, list) or not all(isinstance(f, dict) for f in feats):
        raise AnnotationError(f"{path.name}: 'features' must be a list of GeoJSON features")
    return feats


def read_regions_geojson(path: str | os.PathLike) -> np.ndarray:
    """(N, 3) prob, x, y of the detections in a run's regions.geojson."""
    from shapely.geometry import shape

    path = Path(path)
    rows = []
    for i, feat in enumerate(_features(path, _load_json(path))):
        props = feat.get("properties") or {}
        meas = props.get("measurements") or {}
        if isinstance(meas, list):  # older QuPath: [{"name":..., "value":...}]
            meas = {m.get("name"): m.get("value") for m in meas if isinstance(m, dict)}
        prob = meas.get("max_probability", meas.get("probability"))
        if prob is None:
            raise EvaluationError(
                f"{path.name}: feature {i} has no measurements.max_probability; is this a "
                "wsi-detect regions.geojson?"
            )
        if "peak_x" in meas and "peak_y" in meas:
            x, y = meas["peak_x"], meas["peak_y"]
        elif "centroid_x" in meas and "centroid_y" in meas:
            x, y = meas["centroid_x"], meas["centroid_y"]
        else:
            try:
                c = shape(feat["geometry"]).centroid
            except Exception as exc:  # shapely raises several types on bad geometry
                raise EvaluationError(
                    f"{path.name}: feature {i} has neither peak_x/peak_y nor a valid geometry"
                ) from exc
            x, y = c.x, c.y
        rows.append((float(prob), float(x), float(y)))
    det = np.array(rows, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(det)):
        raise EvaluationError(f"{path.name}: NaN or infinite detection values")
    return det


def read_run_folder(folder: str | os.PathLike) -> DetectionSet:
    """Detections and slide score of one `wsi-detect metastases --out DIR` folder."""
    folder = Path(folder)
    regions = folder / RUN_REGIONS
    if not regions.is_file():
        raise EvaluationError(f"{folder} is not a run folder: {RUN_REGIONS} is missing")
    slide_id, slide_score = folder.name, None
    summary_path = folder / RUN_SUMMARY
    if summary_path.is_file():
        summary = _load_json(summary_path)
        if isinstance(summary, dict):
            for key in ("slide_id", "slide", "slide_path", "source"):
                value = summary.get(key)
                if isinstance(value, dict):  # the engine's summary: {"slide": {"path": ...}}
                    value = value.get("path")
                if isinstance(value, str) and value:
                    slide_id = value if key == "slide_id" else slide_id_from_path(value)
                    break
            score = summary.get("slide_score")
            if isinstance(score, (int, float)) and math.isfinite(score):
                slide_score = float(score)
    return DetectionSet(slide_id, read_regions_geojson(regions), folder, slide_score)


def load_detections(paths: Iterable[str | os.PathLike]) -> list[DetectionSet]:
    """Detections of every run folder / CSV given; folders are searched one level deep."""
    out: list[DetectionSet] = []
    for p in map(Path, paths):
        if p.is_dir():
            if (p / RUN_REGIONS).is_file():
                out.append(read_run_folder(p))
                continue
            found = False
            for child in sorted(p.iterdir()):
                if child.is_dir() and (child / RUN_REGIONS).is_file():
                    out.append(read_run_folder(child))
                    found = True
                elif child.is_file() and child.suffix.lower() == ".csv":
                    out.append(DetectionSet(slide_id_from_path(child),
                                            read_detection_csv(child), child))
                    found = True
            if not found:
                raise EvaluationError(
                    f"{p} holds no detections: expected {RUN_REGIONS}, run folders or "
                    "Camelyon CSV files (prob,x,y)"
                )
        elif p.is_file() and p.name == RUN_REGIONS:
            out.append(read_run_folder(p.parent))
        elif p.is_file() and p.suffix.lower() == ".csv":
            out.append(DetectionSet(slide_id_from_path(p), read_detection_csv(p), p))
        elif p.is_file():
            raise EvaluationError(
                f"{p.name}: detections must be a run folder, its {RUN_REGIONS} or a "
                "Camelyon CSV (prob,x,y)"
            )
        else:
            raise EvaluationError(f"detections not found: {p}")
    return out


# --------------------------------------------------------------------------------------
# Ground truth


@dataclass
class SlideTruth:
    slide_id: str
    is_tumour: bool
    evaluation_mask: np.ndarray | None  # labels at downsample 32 (None for normal)
    itc_labels: list[int]
    source: Path
    mask_offset: tuple[int, int] = (0, 0)  # of evaluation_mask in the level-5 frame

    @property
    def n_lesions(self) -> int:
        if self.evaluation_mask is None:
            return 0
        return int(self.evaluation_mask.max()) - len(self.itc_labels)


def read_mask_level5(path: str | os.PathLike, downsample: int = EVALUATION_DOWNSAMPLE) -> np.ndarray:
    """The tumour mask at `downsample` from a mask image.

    A single-level file is taken as already at downsample 32 (our phantoms write it so).
    A pyramid: the level whose size is the base size / 32 (±1 px of rounding).
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        from PIL import Image

        try:
            with Image.open(path) as im:
                return np.asarray(im)
        except OSError as exc:
            raise AnnotationError(f"cannot read mask image {path}: {exc}") from exc
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            levels = [lvl for s in tif.series for lvl in s.levels]
            if not levels:
                raise AnnotationError(f"{path.name}: the TIFF holds no image")
            dims = [tuple(lvl.shape[:2]) for lvl in levels]
            if len(levels) == 1:
                h, w = dims[0]
                if max(h, w) > _MAX_LEVEL5_SIDE:
                    raise AnnotationError(
                        f"{path.name} is a single {w} x {h} image: a level-0 mask. Give a "
                        f"mask at downsample {downsample} (level 5) or a pyramidal mask TIFF"
                    )
                return levels[0].asarray()
            base = max(range(len(dims)), key=lambda i: dims[i][0] * dims[i][1])
            bh, bw = dims[base]
            for lvl, (h, w) in zip(levels, dims, strict=True):
                if abs(h - bh / downsample) <= 1 and abs(w - bw / downsample) <= 1:
                    return lvl.asarray()
            raise AnnotationError(
                f"{path.name}: no pyramid level at downsample {downsample} "
                f"(levels: {', '.join(f'{w}x{h}' for h, w in dims)})"
            )
    except tifffile.TiffFileError as exc:
        raise AnnotationError(f"{path.name} is not a readable TIFF mask ({exc})") from exc
    except FileNotFoundError as exc:
        raise AnnotationError(f"mask not found: {path}") from exc


def load_truth_file(path: str | os.PathLike, level0_mpp: float = L0_RESOLUTION) -> SlideTruth:
    """Evaluation mask + ITC list of one ground-truth file (mask or annotations)."""
    path = Path(path)
    slide_id = slide_id_from_path(path)
    name = path.name.lower()
    if is_mask_file(path) or name.endswith((".tif", ".tiff")):
        labels, itc = evaluation_mask_from_mask(read_mask_level5(path), level0_mpp)
    else:
        if not name.endswith((".xml", ".json", ".geojson", ".geojson.gz")):
            raise AnnotationError(
                f"{path.name}: unknown ground-truth format; use a level-5 mask TIFF, "
                "Camelyon XML, NCRF JSON or GeoJSON"
            )
        tumour, exclusion = read_tumour_polygons(path)
        if not tumour:
            return SlideTruth(slide_id, False, None, [], path)
        labels, itc = evaluation_mask_from_polygons(
            tumour, None, level0_mpp, exclusion_polygons=exclusion
        )
    if labels.max() == 0:
        return SlideTruth(slide_id, False, None, [], path)
    cropped, offset = crop_to_lesions(labels)
    return SlideTruth(slide_id, True, cropped, itc, path, offset)


# Preference when one folder holds several truths of one slide: the mask is what the
# official evaluation uses.
def _truth_rank(path: Path) -> int:
    name = path.name.lower()
    if is_mask_file(path):
        return 0
    for rank, ext in enumerate((".xml", ".json", ".geojson", ".geojson.gz"), start=1):
        if name.endswith(ext):
            return rank
    return 9


def _is_truth_candidate(path: Path) -> bool:
    name = path.name.lower()
    if is_mask_file(path) or name.endswith((".xml", ".geojson", ".geojson.gz")):
        return True
    if name.endswith(".json") and name != RUN_SUMMARY:
        data = _load_json(path)
        return isinstance(data, dict) and bool({"positive", "negative"} & set(data))
    return False  # slides and other TIFFs beside the masks are not truth


def load_truth(
    paths: Iterable[str | os.PathLike], level0_mpp: float = L0_RESOLUTION
) -> list[SlideTruth]:
    """Truth of every file given; a folder contributes its mask/annotation files, one per
    slide id (mask preferred over XML over JSON over GeoJSON)."""
    chosen: dict[str, Path] = {}
    explicit: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for child in sorted(p.iterdir()):
                if child.is_file() and _is_truth_candidate(child):
                    key = slide_id_from_path(child).lower()
                    if key not in chosen or _truth_rank(child) < _truth_rank(chosen[key]):
                        chosen[key] = child
        elif p.is_file():
            explicit.append(p)
        else:
            raise AnnotationError(f"ground truth not found: {p}")
    files = explicit + [f for k, f in chosen.items()
                        if k not in {slide_id_from_path(e).lower() for e in explicit}]
    return [load_truth_file(f, level0_mpp) for f in files]


# --------------------------------------------------------------------------------------
# Matching


@dataclass
class MatchedSlides:
    slides: list[SlideEval]
    slide_scores: list[float]
    slide_labels: list[bool]
    warnings: list[str]


def match_slides(
    detections: Sequence[DetectionSet],
    truths: Sequence[SlideTruth],
    normal_ids: Iterable[str] = (),
    unmatched_are_normal: bool = False,
) -> MatchedSlides:
    """Pair detections with truth by slide id (case-insensitive).

    A slide with detections but no truth is normal only when listed in `normal_ids` or
    when `unmatched_are_normal` (the official script's rule: no mask = normal); otherwise
    it is an error, so a typo in a file name cannot silently turn a tumour slide into a
    normal one. Truths without detections are reported and left out, as the script
    evaluates only the slides it has a CSV for.
    """
    by_id: dict[str, SlideTruth] = {}
    for t in truths:
        key = t.slide_id.lower()
        if key in by_id:
            raise EvaluationError(
                f"two ground truths for slide {t.slide_id}: {by_id[key].source} and {t.source}"
            )
        by_id[key] = t
    normal = {n.strip().lower() for n in normal_ids if n.strip()}
    seen: set[str] = set()
    slides, scores, labels, warnings, missing = [], [], [], [], []
    for d in detections:
        key = d.slide_id.lower()
        if key in seen:
            raise EvaluationError(f"two detection sets for slide {d.slide_id} ({d.source})")
        seen.add(key)
        truth = by_id.get(key)
        if truth is not None and key in normal and truth.is_tumour:
            raise EvaluationError(
                f"slide {d.slide_id} is listed as normal but {truth.source.name} has tumour"
            )
        if truth is not None and truth.is_tumour:
            slides.append(SlideEval(d.slide_id, d.detections, True,
                                    truth.evaluation_mask, truth.itc_labels,
                                    mask_offset=truth.mask_offset))
        elif truth is not None or key in normal or unmatched_are_normal:
            slides.append(SlideEval(d.slide_id, d.detections, False))
        else:
            missing.append(d.slide_id)
            continue
        scores.append(d.score)
        labels.append(slides[-1].is_tumour)
    if missing:
        raise EvaluationError(
            f"no ground truth for slide(s) {', '.join(missing)}: give their mask/annotation "
            "with --truth, list them with --normal, or pass --unmatched-are-normal"
        )
    for key, t in by_id.items():
        if key not in seen:
            warnings.append(f"ground truth {t.source.name} has no detections; slide left out")
    for key in sorted(normal - seen):
        warnings.append(f"normal slide {key} has no detections; slide left out")
    return MatchedSlides(slides, scores, labels, warnings)
