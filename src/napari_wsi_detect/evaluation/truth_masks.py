"""Ground truth of the evaluations: lesion masks and annotations, read at downsample 32.

* a mask TIFF at downsample 32 (our phantom's `<stem>.tumour-mask.tif`, lesion labels or
  binary), or a pyramidal mask (Camelyon `<stem>_Mask.tif`) whose level at downsample
  32 is read (never level 0);
* Camelyon/ASAP XML, NCRF JSON, or GeoJSON polygons classified Tumor (holes = inner
  rings; Exclusion polygons subtracted);
* a folder of those (`truth_files`: one per slide id, the mask preferred).

Slide id = file name without its format suffixes (`slide_id_from_path`). The FROC
(froc_io.match_slides) and the Dice (segmentation_io) read truth through this module.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..annotations.truth import read_tumour_polygons
from ..errors import AnnotationError
from .froc import (
    EVALUATION_DOWNSAMPLE,
    L0_RESOLUTION,
    EvaluationError,
    check_level0_mpp,
    check_mask_cells,
    crop_to_lesions,
    evaluation_mask_from_mask,
    growth_threshold_px,
    polygons_extent,
    rasterise_polygons,
)

RUN_SUMMARY = "summary.json"
# A single-page mask larger than this is level 0, not level 5 (Camelyon level 5 is
# ~3000 x 7000): refuse rather than load gigabytes.
_MAX_LEVEL5_SIDE = 40_000
MPP_RANGE = (0.01, 20.0)  # plausible level-0 µm/px

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



def _load_json(path: Path) -> object:
    """The one bounded JSON reader of annotation files (gzip, size and nesting checked)."""
    from ..annotations.geojson import load_geojson_object

    return load_geojson_object(path)


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
    if not math.isfinite(mpp) or not MPP_RANGE[0] < mpp < MPP_RANGE[1]:
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
