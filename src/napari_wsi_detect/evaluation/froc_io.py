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

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..annotations.truth import read_tumour_polygons
from ..errors import AnnotationError
from .froc import (
    EVALUATION_DOWNSAMPLE,
    L0_RESOLUTION,
    EvaluationError,
    SlideEval,
    check_level0_mpp,
    check_mask_cells,
    crop_to_lesions,
    evaluation_mask_from_mask,
    growth_threshold_px,
    polygons_extent,
    rasterise_polygons,
)

RUN_REGIONS = "regions.geojson"
RUN_SUMMARY = "summary.json"
# A single-page mask larger than this is level 0, not level 5 (Camelyon level 5 is
# ~3000 x 7000): refuse rather than load gigabytes.
_MAX_LEVEL5_SIDE = 40_000
# Pixel sizes recorded by a run and a mask that differ by more than this contradict.
_MPP_TOLERANCE = 0.02
_MPP_RANGE = (0.01, 20.0)

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


def _load_json(path: Path) -> object:
    """The one bounded JSON reader of annotation files (gzip, size and nesting checked)."""
    from ..annotations.geojson import load_geojson_object

    return load_geojson_object(path)


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
            or not math.isfinite(value) or not _MPP_RANGE[0] <= value <= _MPP_RANGE[1]):
        raise EvaluationError(
            f"{path}: the recorded slide pixel size {value!r} is not a number in "
            f"[{_MPP_RANGE[0]}, {_MPP_RANGE[1]:g}] µm/px; the run summary is damaged"
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
# Ground truth


@dataclass
class SlideTruth:
    slide_id: str
    is_tumour: bool
    evaluation_mask: np.ndarray | None  # labels at downsample 32 (None for normal)
    itc_labels: list[int]
    source: Path
    mask_offset: tuple[int, int] = (0, 0)  # of evaluation_mask in the level-5 frame
    # level-0 µm/px the truth file records (a mask's resolution/description), or None
    mpp: float | None = None
    # level-0 µm/px evaluation_mask was computed with (75 µm growth, 275 µm ITC rule)
    level0_mpp: float = L0_RESOLUTION
    # the binary tumour at level 5, cropped to its bounding box (to recompute the
    # evaluation mask at another pixel size), its offset and the frame's (rows, cols)
    # (None: unbounded below/right, as for annotation polygons)
    tumour: np.ndarray | None = field(default=None, repr=False)
    tumour_offset: tuple[int, int] = (0, 0)
    frame: tuple[int, int] | None = None

    @property
    def n_lesions(self) -> int:
        if self.evaluation_mask is None:
            return 0
        return int(self.evaluation_mask.max()) - len(self.itc_labels)

    def at_mpp(self, level0_mpp: float) -> SlideTruth:
        """This truth with its evaluation mask computed at `level0_mpp` µm/px."""
        level0_mpp = check_level0_mpp(level0_mpp)
        if not self.is_tumour or abs(level0_mpp - self.level0_mpp) <= 1e-9 * level0_mpp:
            return self
        if self.tumour is None:
            raise EvaluationError(
                f"slide {self.slide_id}: the evaluation mask of {self.source.name} was made "
                f"at {self.level0_mpp:g} µm/px and cannot be recomputed at {level0_mpp:g}"
            )
        labels, itc, offset = _evaluate_binary(self.tumour, self.tumour_offset, self.frame,
                                               level0_mpp)
        return replace(self, evaluation_mask=labels, itc_labels=itc, mask_offset=offset,
                       level0_mpp=level0_mpp, is_tumour=bool(labels.size and labels.max()))


def _tight(binary: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    crop = binary[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    return np.ascontiguousarray(crop, dtype=bool), (int(rows[0]), int(cols[0]))


def _evaluate_binary(tight: np.ndarray, offset: tuple[int, int], frame: tuple[int, int] | None,
                     level0_mpp: float) -> tuple[np.ndarray, list[int], tuple[int, int]]:
    """(cropped labels, ITC labels, their offset in the level-5 frame) of a tight binary
    tumour crop: padded by more than the 75 µm growth (clipped to the frame), which gives
    exactly the labels of the whole frame (see `evaluation_mask_from_mask`)."""
    margin = int(math.ceil(growth_threshold_px(level0_mpp, EVALUATION_DOWNSAMPLE))) + 4
    th, tw = tight.shape
    r0, c0 = max(offset[0] - margin, 0), max(offset[1] - margin, 0)
    r1, c1 = offset[0] + th + margin, offset[1] + tw + margin
    if frame is not None:
        r1, c1 = min(r1, frame[0]), min(c1, frame[1])
    check_mask_cells((r1 - r0, c1 - c0), "the tumour")
    canvas = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    canvas[offset[0] - r0: offset[0] - r0 + th, offset[1] - c0: offset[1] - c0 + tw] = tight
    labels, itc = evaluation_mask_from_mask(canvas, level0_mpp)
    cropped, (lr, lc) = crop_to_lesions(labels)
    return cropped, itc, (r0 + lr, c0 + lc)


def read_mask_level5(path: str | os.PathLike, downsample: int = EVALUATION_DOWNSAMPLE) -> np.ndarray:
    """The tumour mask at `downsample` from a mask image (see `read_mask_file`)."""
    return read_mask_file(path, downsample)[0]


def read_mask_file(path: str | os.PathLike, downsample: int = EVALUATION_DOWNSAMPLE
                   ) -> tuple[np.ndarray, float | None]:
    """(the 2-D tumour mask at `downsample`, the level-0 µm/px the file records or None).

    A single-level file is taken as already at downsample 32 (our phantoms write it so).
    A pyramid: the level whose size is the base size / 32 (±1 px of rounding). A colour
    image (a slide given as truth by mistake) is refused: masks are one channel.
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        from PIL import Image

        try:
            with Image.open(path) as im:
                check_mask_cells((im.height, im.width), f"{path.name}")
                return _mask_channel(np.asarray(im), path), None
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
                check_mask_cells((h, w), path.name)
                _refuse_colour_page(levels[0].keyframe, path)
                page = levels[0].keyframe
                mpp = _mask_mpp(page, downsample)
                return _mask_channel(levels[0].asarray(), path), mpp
            base = max(range(len(dims)), key=lambda i: dims[i][0] * dims[i][1])
            bh, bw = dims[base]
            _refuse_colour_page(levels[base].keyframe, path)
            if int(getattr(levels[base].keyframe, "samplesperpixel", 1)) >= 3:
                # An RGB pyramid: a slide given as truth? Its smallest level says.
                smallest = min(range(len(dims)), key=lambda i: dims[i][0] * dims[i][1])
                if dims[smallest][0] * dims[smallest][1] <= 2**24:
                    _mask_channel(levels[smallest].asarray(), path)
            for lvl, (h, w) in zip(levels, dims, strict=True):
                if abs(h - bh / downsample) <= 1 and abs(w - bw / downsample) <= 1:
                    check_mask_cells((h, w), path.name)
                    _refuse_colour_page(lvl.keyframe, path)
                    mpp = _mask_mpp(levels[base].keyframe, 1)
                    return _mask_channel(lvl.asarray(), path), mpp
            raise AnnotationError(
                f"{path.name}: no pyramid level at downsample {downsample} "
                f"(levels: {', '.join(f'{w}x{h}' for h, w in dims)})"
            )
    except tifffile.TiffFileError as exc:
        raise AnnotationError(f"{path.name} is not a readable TIFF mask ({exc})") from exc
    except FileNotFoundError as exc:
        raise AnnotationError(f"mask not found: {path}") from exc
    except (ValueError, OSError, ZeroDivisionError) as exc:
        raise AnnotationError(f"{path.name} is not a readable TIFF mask ({exc})") from exc


def _not_a_mask(path: Path, why: str) -> AnnotationError:
    return AnnotationError(
        f"{path.name} is not a tumour mask: {why}. A mask is one channel (0 = not tumour, "
        "> 0 = tumour or lesion labels) at downsample 32 or as a pyramid; give the "
        "slide's mask or annotation file with --truth, not the slide"
    )


def _refuse_colour_page(page: object, path: Path) -> None:
    photometric = int(getattr(page, "photometric", 1))
    spp = int(getattr(page, "samplesperpixel", 1))
    compression = int(getattr(page, "compression", 1))
    if photometric == 6 or (compression in (6, 7, 33003, 33005, 34712) and spp >= 3):
        raise _not_a_mask(path, f"it is a {spp}-channel JPEG colour image (a slide)")


def _mask_channel(mask: np.ndarray, path: Path) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biu":
        raise _not_a_mask(path, f"its pixels are {mask.dtype} (not integer labels)")
    if mask.ndim == 3:
        if mask.shape[2] >= 3 and (np.any(mask[..., 0] != mask[..., 1])
                                   or np.any(mask[..., 0] != mask[..., 2])):
            raise _not_a_mask(path, f"it is a {mask.shape[2]}-channel colour image (a slide?)")
        mask = mask[..., 0]  # grey stored as RGB(A): the script reads channel 0
    if mask.ndim != 2:
        raise _not_a_mask(path, f"its image has shape {mask.shape}")
    return mask


def _mask_mpp(page: object, downsample: int) -> float | None:
    """Level-0 µm/px recorded by a mask page: our phantom's description ({"mpp": mask
    µm/px, "downsample": 32}), else the resolution tags (cm or inch) / `downsample`."""
    desc = getattr(page, "description", "") or ""
    if desc.lstrip().startswith("{"):
        try:
            meta = json.loads(desc)
        except (ValueError, RecursionError):
            meta = None
        if isinstance(meta, dict) and isinstance(meta.get("mpp"), (int, float)):
            ds = meta.get("downsample", downsample)
            if isinstance(ds, (int, float)) and ds > 0:
                return _plausible(float(meta["mpp"]) / float(ds))
    tags = getattr(page, "tags", {})
    xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
    if xres is None or unit is None:
        return None
    try:
        num, den = xres.value
        per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
        if not per_unit or not num or not den:
            return None
        return _plausible(per_unit / (num / den) / downsample)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _plausible(mpp: float) -> float | None:
    if not math.isfinite(mpp) or not _MPP_RANGE[0] < mpp < _MPP_RANGE[1]:
        return None
    return mpp


def load_truth_file(path: str | os.PathLike, level0_mpp: float | None = None) -> SlideTruth:
    """Evaluation mask + ITC list of one ground-truth file (mask or annotations), at
    `level0_mpp` µm/px, by default the pixel size the file records (a mask's), else the
    official 0.243."""
    path = Path(path)
    slide_id = slide_id_from_path(path)
    name = path.name.lower()
    frame: tuple[int, int] | None
    recorded: float | None = None
    if is_mask_file(path) or name.endswith((".tif", ".tiff")):
        mask, recorded = read_mask_file(path)
        binary = mask > 0
        frame = binary.shape
        if not binary.any():
            return SlideTruth(slide_id, False, None, [], path, mpp=recorded)
        tight, offset = _tight(binary)
        del mask, binary
    else:
        if not name.endswith((".xml", ".json", ".geojson", ".geojson.gz")):
            raise AnnotationError(
                f"{path.name}: unknown ground-truth format; use a level-5 mask TIFF, "
                "Camelyon XML, NCRF JSON or GeoJSON"
            )
        tumour, exclusion = read_tumour_polygons(path)
        extent = polygons_extent(tumour)
        if not tumour or extent is None:
            return SlideTruth(slide_id, False, None, [], path)
        ds = EVALUATION_DOWNSAMPLE
        # Rasterise only the polygons' bounding box (one cell of slack each side):
        # memory follows the tumour's extent, not how far from the origin it lies.
        r0 = max(int(math.floor(extent[1] / ds)) - 1, 0)
        c0 = max(int(math.floor(extent[0] / ds)) - 1, 0)
        r1 = max(int(math.ceil(extent[3] / ds)) + 1, r0 + 1)
        c1 = max(int(math.ceil(extent[2] / ds)) + 1, c0 + 1)
        check_mask_cells((r1 - r0, c1 - c0), f"the tumour polygons of {path.name}")
        window = rasterise_polygons(tumour, (r1 - r0, c1 - c0), exclusion, ds,
                                    origin=(r0, c0))
        frame = None
        if not window.any():
            return SlideTruth(slide_id, False, None, [], path)
        tight, (tr, tc) = _tight(window)
        offset = (r0 + tr, c0 + tc)
    mpp = check_level0_mpp(level0_mpp if level0_mpp is not None
                           else recorded if recorded is not None else L0_RESOLUTION)
    labels, itc, mask_offset = _evaluate_binary(tight, offset, frame, mpp)
    return SlideTruth(slide_id, True, labels, itc, path, mask_offset, mpp=recorded,
                      level0_mpp=mpp, tumour=tight, tumour_offset=offset, frame=frame)


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
    paths: Iterable[str | os.PathLike], level0_mpp: float | None = None
) -> list[SlideTruth]:
    """Truth of every file given; a folder contributes its mask/annotation files, one per
    slide id (mask preferred over XML over JSON over GeoJSON). `level0_mpp`: see
    `load_truth_file` (None = each file's recorded pixel size, else 0.243)."""
    return [load_truth_file(f, level0_mpp) for f in truth_files(paths)]


def truth_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The truth files of `paths`: each file given, and from each folder its mask or
    annotation files, one per slide id (mask preferred over XML over JSON over GeoJSON);
    a file given by name wins over a folder's file of the same slide."""
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
    given = {slide_id_from_path(e).lower() for e in explicit}
    return explicit + [f for k, f in chosen.items() if k not in given]


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
