"""Inputs of the FROC evaluation: detections and ground truth, matched by slide id.

Detections
  * a run folder of ours (`DIR/regions.geojson` [+ `DIR/summary.json`]): one detection
    per feature, probability `measurements.max_probability`, location
    `measurements.peak_x/peak_y` (the point of maximum probability) when present, else
    `measurements.centroid_x/centroid_y`, else the geometry's centroid (a Point is itself);
  * the official per-slide CSV: `prob,x,y` rows (level-0 px), header optional;
  * a folder of either (CSV files, or sub-folders that are run folders).
Ground truth: `truth_masks.py` (masks and annotations at downsample 32).
Slide id = file name without its format suffixes (`Tumor_001.csv`, `Tumor_001.xml`,
`Tumor_001_Mask.tif`, `phantom.tumour-mask.tif` -> `Tumor_001` / `phantom`); for a run
folder, the slide named in summary.json, else the folder name. Matching ignores case.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AnnotationError
from .froc import (
    L0_RESOLUTION,
    EvaluationError,
    SlideEval,
    check_level0_mpp,
)
from .truth_masks import (  # noqa: F401  (public names of this module before the split)
    MPP_RANGE,
    RUN_SUMMARY,
    SlideTruth,
    _load_json,
    is_mask_file,
    load_truth,
    load_truth_file,
    read_mask_file,
    read_mask_level5,
    slide_id_from_path,
    truth_files,
)

RUN_REGIONS = "regions.geojson"
# Pixel sizes recorded by a run and a mask that differ by more than this contradict.
_MPP_TOLERANCE = 0.02

# --------------------------------------------------------------------------------------
# Detections


@dataclass
class DetectionSet:
    slide_id: str
    detections: np.ndarray  # (N, 3): probability, x, y (level-0 px)
    source: Path
    slide_score: float | None = None  # summary.json's, when a run folder gives one
    mpp: float | None = None  # level-0 µm/px the run recorded for its slide (summary.json)

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
            # A header ("prob,x,y") has no number in its first three fields; a first line
            # such as "high,100,200" is a bad row, not a header to skip.
            if first and not any(_parses(f) for f in fields[:3]):
                first = False
                continue
            raise EvaluationError(
                f"{path.name} line {number}: expected 'probability,x,y' numbers, got "
                f"{line.strip()[:80]!r}"
            ) from None
        first = False
    det = np.array(rows, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(det)):
        raise EvaluationError(f"{path.name}: NaN or infinite values among the detections")
    return det


def _parses(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _detection_number(path: Path, i: int, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str) and _parses(value):
            value = float(value)
        else:
            raise EvaluationError(
                f"{path.name}: feature {i}: {name} {str(value)[:40]!r} is not a number"
            )
    if not math.isfinite(value):
        raise EvaluationError(f"{path.name}: feature {i}: {name} is {value} (not finite)")
    return float(value)


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
        if not isinstance(props, dict):
            raise EvaluationError(f"{path.name}: feature {i}: 'properties' is not an object")
        meas = props.get("measurements") or {}
        if isinstance(meas, list):  # older QuPath: [{"name":..., "value":...}]
            meas = {m.get("name"): m.get("value") for m in meas if isinstance(m, dict)}
        if not isinstance(meas, dict):
            raise EvaluationError(f"{path.name}: feature {i}: 'measurements' is not an object")
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
        rows.append((_detection_number(path, i, "measurements.max_probability", prob),
                     _detection_number(path, i, "x", x), _detection_number(path, i, "y", y)))
    det = np.array(rows, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(det)):
        raise EvaluationError(f"{path.name}: NaN or infinite detection values")
    return det


def read_run_folder(folder: str | os.PathLike) -> DetectionSet:
    """Detections and slide score of one `wsi-detect metastases --out DIR` folder."""
    from ..detectors.result import read_summary
    from ..engine.heatmap import COMMIT_JOURNAL

    folder = Path(folder)
    regions = folder / RUN_REGIONS
    if not regions.is_file():
        raise EvaluationError(f"{folder} is not a run folder: {RUN_REGIONS} is missing")
    slide_id, slide_score, mpp = folder.name, None, None
    summary_path = folder / RUN_SUMMARY
    if summary_path.is_file() or (folder / COMMIT_JOURNAL).exists():
        # The one summary reader: installs an interrupted output set, refuses regions
        # that are not the ones the summary was written with.
        summary = read_summary(folder, check=True)
        mpp = _summary_mpp(summary, summary_path)
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
    return DetectionSet(slide_id, read_regions_geojson(regions), folder, slide_score, mpp)


def _summary_mpp(summary: dict, path: Path) -> float | None:
    """The slide's level-0 µm/px a run recorded (None when the slide did not say)."""
    slide = summary.get("slide")
    value = None
    if isinstance(slide, dict) and not slide.get("mpp_assumed"):
        value = slide.get("mpp")
    if value is None:
        value = summary.get("slide_mpp", summary.get("mpp"))
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not MPP_RANGE[0] <= value <= MPP_RANGE[1]):
        raise EvaluationError(
            f"{path}: the recorded slide pixel size {value!r} is not a number in "
            f"[{MPP_RANGE[0]}, {MPP_RANGE[1]:g}] µm/px; the run summary is damaged"
        )
    return float(value)


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
# Matching


@dataclass
class MatchedSlides:
    slides: list[SlideEval]
    slide_scores: list[float]
    slide_labels: list[bool]
    warnings: list[str]
    # per tumour slide: {"mpp": level-0 µm/px used, "source": where it came from}
    pixel_sizes: dict[str, dict[str, object]] = field(default_factory=dict)


def _id_list(ids: Iterable[str], limit: int = 20) -> str:
    ids = sorted(set(ids), key=str.lower)
    if not ids:
        return "none"
    shown = ", ".join(ids[:limit])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def resolve_level0_mpp(slide_id: str, detection: DetectionSet, truth: SlideTruth,
                       explicit: float | None) -> tuple[float, str, str | None]:
    """(level-0 µm/px for the 75 µm / 275 µm rules, where it came from, a warning or
    None). The pixel size recorded by the run (summary.json) and by the mask is used;
    `explicit` (--mpp) overrides both; records that contradict each other are an error
    unless overridden; with none, the official 0.243."""
    recorded = []
    if truth.mpp is not None:
        recorded.append((truth.mpp, f"the mask {truth.source.name}"))
    if detection.mpp is not None:
        recorded.append((detection.mpp, f"the run {detection.source / RUN_SUMMARY}"))

    def differ(a: float, b: float) -> bool:
        return abs(a - b) > _MPP_TOLERANCE * min(a, b)

    if explicit is not None:
        clash = [f"{src} records {v:g}" for v, src in recorded if differ(v, explicit)]
        warning = (f"slide {slide_id}: --mpp {explicit:g} µm/px overrides the recorded pixel "
                   f"size ({'; '.join(clash)})") if clash else None
        return explicit, "--mpp", warning
    if recorded:
        values = [v for v, _ in recorded]
        if differ(min(values), max(values)):
            raise EvaluationError(
                f"slide {slide_id}: the pixel sizes disagree: "
                + "; ".join(f"{src} records {v:g} µm/px" for v, src in recorded)
                + ". The detections and the truth may be of different scans; check them, "
                "or pass --mpp to choose the level-0 pixel size"
            )
        return recorded[0][0], recorded[0][1], None
    return L0_RESOLUTION, "default", None


def match_slides(
    detections: Sequence[DetectionSet],
    truths: Sequence[SlideTruth],
    normal_ids: Iterable[str] = (),
    unmatched_are_normal: bool = False,
    mpp: float | None = None,
) -> MatchedSlides:
    """Pair detections with truth by slide id (case-insensitive).

    A slide with detections but no truth is normal only when listed in `normal_ids` or
    when `unmatched_are_normal` (the official script's rule: no mask = normal); otherwise
    it is an error listing the ids read on both sides, so a typo in a file name cannot
    silently turn a tumour slide into a normal one. Truths without detections are
    reported and left out, as the script evaluates only the slides it has a CSV for.

    Each tumour slide is evaluated at its level-0 pixel size (`resolve_level0_mpp`:
    recorded by the run / mask, `mpp` overriding, 0.243 when nothing records it).
    """
    if mpp is not None:
        mpp = check_level0_mpp(mpp)
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
    pixel_sizes: dict[str, dict[str, object]] = {}
    defaulted: list[str] = []
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
            value, source, warning = resolve_level0_mpp(d.slide_id, d, truth, mpp)
            if warning:
                warnings.append(warning)
            if source == "default":
                defaulted.append(d.slide_id)
            pixel_sizes[d.slide_id] = {"mpp": value, "source": source}
            truth = truth.at_mpp(value)
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
            f"no ground truth for slide(s) {_id_list(missing)}. Detections were read for: "
            f"{_id_list(d.slide_id for d in detections)}; ground truth was read for: "
            f"{_id_list(t.slide_id for t in truths)}"
            + (f"; listed as normal: {_id_list(normal)}" if normal else "")
            + ". Ids are file names without format suffixes (or the slide in a run's "
            "summary.json), matched ignoring case: give their mask/annotation with --truth, "
            "list them with --normal, or pass --unmatched-are-normal"
        )
    if defaulted:
        warnings.append(
            f"no pixel size recorded for {_id_list(defaulted)} (neither a run summary nor "
            f"the mask says): the 75 µm / 275 µm rules use the official {L0_RESOLUTION} "
            "µm/px; pass --mpp if the slides were scanned at another resolution"
        )
    for key, t in by_id.items():
        if key not in seen:
            warnings.append(f"ground truth {t.source.name} has no detections; slide left out")
    for key in sorted(normal - seen):
        warnings.append(f"normal slide {key} has no detections; slide left out")
    return MatchedSlides(slides, scores, labels, warnings, pixel_sizes)
