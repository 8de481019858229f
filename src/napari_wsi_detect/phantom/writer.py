"""Phantom whole-slide images: synthetic H&E lymph-node sections with exact ground truth.

`write_phantom(path, seed, size, mpp)` writes three files side by side, atomically:

* `path` (e.g. `x.tif`): tiled (512 px), pyramidal (×2 levels down to < 1024 px) JPEG
  TIFF with the µm per pixel in its resolution tags; OpenSlide reads it as
  "generic-tiff", tifffile as one series with levels;
* `x.geojson`: QuPath-style truth in level-0 pixels: metastases as "Tumor" Polygon
  annotations (with `size_class` macro/micro/itc, area and major axis in µm), mitotic
  figures as "Mitosis" Point detections, look-alikes as "Imposter" Point detections;
* `x.tumour-mask.tif`: the Camelyon16 evaluation mask at level 5 (downsample 32),
  uint8, 0 = no tumour, k = lesion k (the polygon's `lesion` property).

The slide is rendered tile by tile from the seed alone (see `phantom.render`), so any
size streams in bounded memory, and the truth polygons are the very polygons that decided
which pixels became tumour.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .._atomic import atomic_paths
from ..annotations.geojson import (
    IMPOSTER_CLASS,
    MITOSIS_CLASS,
    TUMOUR_CLASS,
    Feature,
    load_geojson_object,
    parse_geojson,
    write_geojson,
)
from ..errors import AnnotationError, WsiDetectError
from .geometry import raster_polygon
from .layout import PhantomLayout, make_layout
from .pyramid import write_pyramid_tiff
from .render import PhantomRenderer

__all__ = [
    "DEFAULT_SIZE",
    "MASK_DOWNSAMPLE",
    "PhantomLesion",
    "PhantomTruth",
    "load_phantom_truth",
    "phantom_layout",
    "render_phantom_region",
    "truth_paths",
    "tumour_mask",
    "write_phantom",
]

DEFAULT_SIZE = (20000, 15000)  # 4.9 × 3.6 mm at 0.243 µm/px: room for a macro-metastasis
MASK_DOWNSAMPLE = 32  # level 5


@dataclass
class PhantomLesion:
    label: int  # value of this lesion in the tumour mask
    size_class: str  # "macro" | "micro" | "itc" | "primary"
    polygon: np.ndarray  # (N, 2) level-0 (x, y), open ring
    area_um2: float  # without the holes
    major_axis_um: float
    id: str = ""
    holes: list[np.ndarray] = field(default_factory=list)  # open rings (primary tumours)


@dataclass
class PhantomTruth:
    slide_path: Path
    geojson_path: Path
    mask_path: Path
    mpp: float
    size: tuple[int, int]  # (width, height) level-0 px
    seed: int
    tumours: list[PhantomLesion] = field(default_factory=list)
    mitoses: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (N, 2) x, y
    imposters: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    mitosis_kinds: list[str] = field(default_factory=list)
    imposter_kinds: list[str] = field(default_factory=list)
    mask_downsample: int = MASK_DOWNSAMPLE
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"tumours": len(self.tumours), "mitoses": len(self.mitoses), "imposters": len(self.imposters)}
        for cls in ("macro", "micro", "itc"):
            out[cls] = sum(t.size_class == cls for t in self.tumours)
        primary = sum(t.size_class == "primary" for t in self.tumours)
        if primary:  # only then: metastasis-only truth files stay as they were
            out["primary"] = primary
        return out

    def read_mask(self) -> np.ndarray:
        """The level-5 lesion-label mask, (ceil(H/32), ceil(W/32)) uint8."""
        return tifffile.imread(self.mask_path)


def truth_paths(slide_path: str | os.PathLike) -> tuple[Path, Path]:
    """(geojson, tumour mask) paths that belong to a phantom slide."""
    p = Path(slide_path)
    return p.with_suffix(".geojson"), p.with_name(p.stem + ".tumour-mask.tif")


def phantom_layout(
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    mpp: float = 0.243,
    *,
    tumour: bool = True,
    lesions: dict[str, int] | None = None,
    mitosis_density: float = 150.0,
    imposter_density: float = 60.0,
    primary: int = 0,
    lesion_contrast: float = 1.0,
) -> tuple[PhantomLayout, list[str]]:
    """The slide's plan (tissue, lesions, figures) without rendering any pixel."""
    _check_args(size, mpp, lesions, mitosis_density, imposter_density)
    primary = _check_primary(primary, tumour)
    if not 0.0 < float(lesion_contrast) <= 1.5:
        raise WsiDetectError(f"lesion_contrast must be in (0, 1.5], got {lesion_contrast!r}")
    w, h = int(size[0]), int(size[1])
    layout, notes = make_layout(w, h, float(mpp), int(seed), lesions, tumour, mitosis_density,
                                imposter_density, primary=primary)
    layout.lesion_contrast = float(lesion_contrast)  # drawing only: the plan is unchanged
    return layout, notes


def render_phantom_region(
    x: int, y: int, w: int, h: int, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE,
    mpp: float = 0.243, **kwargs,
) -> np.ndarray:
    """Level-0 pixels (h, w, 3) of the phantom `write_phantom` would write (before JPEG)."""
    layout, _ = phantom_layout(seed, size, mpp, **kwargs)
    return PhantomRenderer(layout).render(int(x), int(y), int(w), int(h))


def write_phantom(
    path: str | os.PathLike,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    mpp: float = 0.243,
    *,
    tumour: bool = True,
    lesions: dict[str, int] | None = None,
    mitosis_density: float = 150.0,
    imposter_density: float = 60.0,
    primary: int = 0,
    lesion_contrast: float = 1.0,
    tile: int = 512,
    quality: int = 90,
    progress: Callable[[int, int], None] | None = None,
) -> PhantomTruth:
    """Write a phantom slide and its truth; see the module docstring.

    `tumour=False` makes a normal node (no metastases, no mitoses; imposters remain).
    `lesions` overrides the per-class counts, e.g. {"macro": 1, "micro": 3, "itc": 0};
    by default they grow with the tissue area. `primary=N` adds N large primary-tumour
    regions (lobulated, ragged, with stroma holes; size class "primary", see
    `phantom.primary`) and makes the metastasis counts default to none. `lesion_contrast`
    < 1 draws the tumour's stain and nuclei part way towards the host tissue's (fainter
    lesions; 1 = the usual look). Densities are per mm² of tumour (mitoses)
    or of tissue (imposters). Lesions that do not fit are skipped and listed in
    `PhantomTruth.notes`.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise WsiDetectError(f"phantom slide must be a .tif/.tiff file, got {path.name!r}")
    if not path.parent.is_dir():
        raise WsiDetectError(f"folder {path.parent} does not exist; create it first")
    layout, notes = phantom_layout(
        seed, size, mpp, tumour=tumour, lesions=lesions,
        mitosis_density=mitosis_density, imposter_density=imposter_density, primary=primary,
        lesion_contrast=lesion_contrast,
    )
    renderer = PhantomRenderer(layout)
    geojson_path, mask_path = truth_paths(path)
    description = (
        f"napari-wsi-detect phantom lymph node|seed={layout.seed}|mpp={layout.mpp}"
        f"|width={layout.width}|height={layout.height}|tumour={bool(tumour)}"
    )
    if primary:
        description += f"|primary={int(primary)}"
    if lesion_contrast != 1.0:
        description += f"|lesion_contrast={float(lesion_contrast):g}"
    # renamed in this order, the slide last: when it exists, its truth is complete
    with atomic_paths(mask_path, geojson_path, path) as (tmp_mask, tmp_geojson, tmp_slide):
        write_pyramid_tiff(
            tmp_slide, layout.width, layout.height, renderer.render, mpp=layout.mpp,
            tile=tile, quality=quality, description=description, progress=progress,
        )
        truth = _truth_from_layout(layout, path, geojson_path, mask_path, notes)
        _write_mask(tmp_mask, layout)
        _write_geojson(tmp_geojson, truth, tumour, int(primary))
    return truth


# -- validation ---------------------------------------------------------------------
def _check_args(size, mpp, lesions, mitosis_density, imposter_density) -> None:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise WsiDetectError(f"size must be (width, height) in pixels, got {size!r}") from None
    if w < 512 or h < 512:
        raise WsiDetectError(f"phantom size {w}×{h} is too small; use at least 512×512 pixels")
    if w * h > 2.5e10:
        raise WsiDetectError(f"phantom size {w}×{h} is beyond 2.5 gigapixels; pick a smaller size")
    if not (0.05 <= float(mpp) <= 10.0):
        raise WsiDetectError(f"mpp {mpp} µm/px is not a microscope resolution (0.05–10)")
    if lesions is not None:
        bad = set(lesions) - {"macro", "micro", "itc"}
        if bad or any(int(v) < 0 for v in lesions.values()):
            raise WsiDetectError(
                f"lesions must map 'macro'/'micro'/'itc' to counts ≥ 0, got {lesions!r}"
            )
    if mitosis_density < 0 or imposter_density < 0:
        raise WsiDetectError("mitosis and imposter densities must be ≥ 0 per mm²")


def _check_primary(primary, tumour: bool) -> int:
    try:
        n = int(primary)
    except (TypeError, ValueError):
        raise WsiDetectError(f"primary must be a number of tumour regions, got {primary!r}") from None
    if n != primary or not 0 <= n <= 8:
        raise WsiDetectError(f"primary must be a whole number of tumour regions from 0 to 8, got {primary!r}")
    if n and not tumour:
        raise WsiDetectError("a normal slide (tumour=False / --normal) cannot have primary tumours; drop one")
    return n


# -- truth --------------------------------------------------------------------------
def _uuid(seed: int, family: int, index: int) -> str:
    rng = np.random.default_rng([seed, 977, family, index])
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _truth_from_layout(layout: PhantomLayout, path: Path, geojson_path: Path, mask_path: Path, notes: list[str]) -> PhantomTruth:
    tumours = [
        PhantomLesion(les.label, les.size_class, les.polygon.copy(), les.area_um2, les.major_axis_um,
                      _uuid(layout.seed, 0, les.label), holes=[h.copy() for h in les.holes])
        for les in layout.lesions
    ]
    return PhantomTruth(
        slide_path=path, geojson_path=geojson_path, mask_path=mask_path, mpp=layout.mpp,
        size=(layout.width, layout.height), seed=layout.seed, tumours=tumours,
        mitoses=np.array([(f.x, f.y) for f in layout.mitoses], dtype=np.float64).reshape(-1, 2),
        imposters=np.array([(f.x, f.y) for f in layout.imposters], dtype=np.float64).reshape(-1, 2),
        mitosis_kinds=[f.kind for f in layout.mitoses],
        imposter_kinds=[f.kind for f in layout.imposters],
        notes=list(notes),
    )


def tumour_mask(layout: PhantomLayout, downsample: int = MASK_DOWNSAMPLE) -> np.ndarray:
    """Lesion labels on the level-`log2(downsample)` grid (pixel-centre rule)."""
    h = -(-layout.height // downsample)
    w = -(-layout.width // downsample)
    mask = np.zeros((h, w), np.uint8)
    for les in layout.lesions:
        inside = raster_polygon(les.polygon, 0.0, 0.0, w, h, scale=downsample)
        for hole in les.holes:
            inside &= ~raster_polygon(hole, 0.0, 0.0, w, h, scale=downsample)
        mask[inside] = les.label
    return mask


def _write_mask(path: Path, layout: PhantomLayout) -> None:
    meta = {
        "downsample": MASK_DOWNSAMPLE, "level": 5, "mpp": layout.mpp * MASK_DOWNSAMPLE,
        "slide_size": [layout.width, layout.height],
        "labels": {str(les.label): les.size_class for les in layout.lesions},
        "meaning": "0 = not tumour, k = lesion k (GeoJSON property 'lesion')",
    }
    res = 1e4 / (layout.mpp * MASK_DOWNSAMPLE)
    tifffile.imwrite(
        path, tumour_mask(layout), description=json.dumps(meta), metadata=None,
        compression="zlib", resolution=(res, res), resolutionunit="CENTIMETER",
    )


def _point_feature(fid: str, x: float, y: float, cls: tuple[str, tuple[int, int, int]], kind: str,
                   lesion: int) -> Feature:
    return Feature(
        geometry={"type": "Point", "coordinates": [round(x, 2), round(y, 2)]},
        object_type="detection", classification=cls[0], color=cls[1], id=fid,
        properties={"kind": kind, "lesion": lesion},
    )


def _closed(ring: np.ndarray) -> list:
    return np.vstack([ring, ring[:1]]).round(2).tolist()


def _write_geojson(path: Path, truth: PhantomTruth, tumour: bool, primary: int = 0) -> None:
    features = []
    for t in truth.tumours:
        features.append(Feature(
            geometry={"type": "Polygon", "coordinates": [_closed(t.polygon)] + [_closed(h) for h in t.holes]},
            object_type="annotation",
            classification=TUMOUR_CLASS[0],
            color=TUMOUR_CLASS[1],
            measurements={
                "area_um2": round(t.area_um2, 1),
                "major_axis_um": round(t.major_axis_um, 2),
                "lesion": t.label,
            },
            name=f"{t.size_class}-{t.label}",
            id=t.id,
            properties={"size_class": t.size_class, "lesion": t.label},
        ))
    seed = truth.seed
    lesion_of = _lesion_lookup(truth)
    for i, ((x, y), kind) in enumerate(zip(truth.mitoses, truth.mitosis_kinds, strict=True)):
        features.append(_point_feature(_uuid(seed, 1, i), x, y, MITOSIS_CLASS, kind, lesion_of(x, y)))
    for i, ((x, y), kind) in enumerate(zip(truth.imposters, truth.imposter_kinds, strict=True)):
        features.append(_point_feature(_uuid(seed, 2, i), x, y, IMPOSTER_CLASS, kind, lesion_of(x, y)))
    # foreign member (allowed by RFC 7946): what this truth belongs to
    phantom = {
        "seed": truth.seed, "mpp": truth.mpp, "size": list(truth.size), "tumour": bool(tumour),
        "mask": truth.mask_path.name, "mask_downsample": truth.mask_downsample,
        "counts": truth.counts(), "notes": truth.notes,
    }
    if primary:
        phantom["primary"] = primary
    write_geojson(path, features, gz=False, members={"phantom": phantom})


def _lesion_lookup(truth: PhantomTruth):
    from .geometry import points_in_polygon

    def lesion_of(x: float, y: float) -> int:
        px, py = np.array([x]), np.array([y])
        for t in truth.tumours:
            if points_in_polygon(t.polygon, px, py)[0] and not any(
                points_in_polygon(h, px, py)[0] for h in t.holes
            ):
                return t.label
        return 0

    return lesion_of


def load_phantom_truth(slide_path: str | os.PathLike) -> PhantomTruth:
    """Read the truth written beside a phantom slide."""
    slide_path = Path(slide_path)
    geojson_path, mask_path = truth_paths(slide_path)
    if not geojson_path.exists():
        raise AnnotationError(
            f"no phantom truth {geojson_path.name} beside {slide_path.name}; "
            "write the slide with `wsi-detect phantom` to get one"
        )
    doc = load_geojson_object(geojson_path)
    features = parse_geojson(doc, source=geojson_path.name)
    tumours, mit, imp, mk, ik = [], [], [], [], []
    try:
        meta = doc["phantom"]
        for f in features:
            props, geom = f.properties, f.geometry
            if f.classification == TUMOUR_CLASS[0] and geom["type"] == "Polygon":
                rings = [np.asarray(r, dtype=np.float64)[:-1] for r in geom["coordinates"]]
                m = f.measurements
                tumours.append(PhantomLesion(int(props["lesion"]), props["size_class"], rings[0],
                                             float(m["area_um2"]), float(m["major_axis_um"]), f.id,
                                             holes=rings[1:]))
            elif f.classification == MITOSIS_CLASS[0]:
                mit.append(geom["coordinates"])
                mk.append(props.get("kind", ""))
            elif f.classification == IMPOSTER_CLASS[0]:
                imp.append(geom["coordinates"])
                ik.append(props.get("kind", ""))
        return PhantomTruth(
            slide_path=slide_path, geojson_path=geojson_path, mask_path=mask_path,
            mpp=float(meta["mpp"]), size=(int(meta["size"][0]), int(meta["size"][1])),
            seed=int(meta["seed"]),
            tumours=tumours,
            mitoses=np.asarray(mit, dtype=np.float64).reshape(-1, 2),
            imposters=np.asarray(imp, dtype=np.float64).reshape(-1, 2),
            mitosis_kinds=mk, imposter_kinds=ik,
            mask_downsample=int(meta.get("mask_downsample", MASK_DOWNSAMPLE)),
            notes=list(meta.get("notes", [])),
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise AnnotationError(
            f"{geojson_path.name} is not a phantom truth file ({type(exc).__name__}: {exc})"
        ) from exc
