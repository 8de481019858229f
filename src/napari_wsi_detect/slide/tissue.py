"""Tissue masks: which parts of a slide hold tissue, at low resolution.

The detectors only look where there is tissue (METHODS §1, "multi-level mapping"): a mask is
computed once on a ~8 µm/px image of the slide (about 1.25×) and every ROI asks
`TissueMask.fraction(x, y, w, h)` in level-0 pixels, which is O(1) thanks to a summed-area
table.

How a pixel is called tissue (see docs/tissue.md for the measurements behind the choices):

1. Score = HSV saturation. Glass, dust, shading and tile seams are grey (saturation ≈ 0),
   stained tissue is pink/purple. Optical density also rises on grey debris and on the
   darker tile seams of some scanners, so it is kept only as an alternative (`method="od"`).
2. Threshold = Otsu of the score, clamped to [low, high]. The low clamp is the guard that
   makes an empty or almost-white image give no tissue instead of an Otsu split of noise;
   the high clamp stops Otsu from cutting an all-tissue image into "light" and "dark"
   tissue.
3. Pen ink is rejected with H&E optical-density ratios: both stains absorb green most, and
   eosin/haematoxylin absorb blue much less than green. Green/blue/teal marker absorbs
   red more than green; red and black marker absorb blue about as much as green.
4. Specks are removed and small holes filled, with sizes in µm² when the pixel size is
   known.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage as ndi

from napari_wsi_detect.errors import EmptyTissueError, WsiDetectError

if TYPE_CHECKING:
    from napari_wsi_detect.slide.base import Slide

Method = Literal["saturation", "od"]

DEFAULT_TARGET_MPP = 8.0  # ≈ 1.25× objective: enough to see tissue, tiny to compute
DEFAULT_MAX_SIDE = 4096  # the mask never exceeds this many pixels on its longest side
UNKNOWN_MPP_SIDE = 2048  # longest side of the mask when the slide's pixel size is unknown
# Bounds on the work for one mask: a level is read whole only up to this many pixels
# (≈ 16k × 16k); beyond, the stored thumbnail or a sparse sample is used instead.
MAX_TISSUE_READ_PX = 2**28
MAX_SAMPLES = 256 * 256  # mask pixels when sampling
MAX_SAMPLED_DECODE_BYTES = 2**31  # decoded tile bytes when sampling

# Otsu is trusted only inside these bounds (per method); see the module docstring.
_CLAMPS: dict[str, tuple[float, float]] = {
    "saturation": (0.06, 0.12),
    "od": (0.05, 0.12),  # mean optical density over R, G, B (log10)
}

# Pen rejection on optical-density ratios (measured on ../shared/data/tiles, docs/tissue.md)
_MAX_OD_RED_OVER_GREEN = 1.0  # H&E ≤ 0.86 (99th pct); green/teal pen ≥ 2
_MAX_OD_BLUE_OVER_GREEN = 0.7  # H&E median 0.61, 95th pct 0.76; red pen 0.73–1.0, black ≈ 1
_SURE_OD_RED_OVER_GREEN = 1.3  # beyond these a pixel is ink whatever its neighbours
_SURE_OD_BLUE_OVER_GREEN = 0.9
_RED_PEN_MIN_SATURATION = 0.7  # H&E ≤ 0.65 (99th pct); red marker up to 0.89
_PEN_MIN_OD = 0.1  # below this (near-white) ratios are noise, nothing to reject
_PEN_VOTE_UM = 24.0  # neighbourhood for borderline pen pixels (3 px at 8 µm/px)
_PEN_HALO_UM = 16.0  # pen edges blur into glass/tissue; drop that halo too

_MIN_OBJECT_UM2 = 10_000.0  # 0.01 mm²: a 100 µm square; smaller bits are dust or specks
_MIN_HOLE_UM2 = 50_000.0  # fill holes (fat, lumina) smaller than ≈ 0.22 mm square
_MIN_OBJECT_PX = 16  # fall-backs when mpp is unknown (pixels of the mask)
_MIN_HOLE_PX = 64


# ---------------------------------------------------------------------------------------
# pixel classification
# ---------------------------------------------------------------------------------------
def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 from RGB or RGBA; transparent pixels read as white (like OpenSlide)."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise WsiDetectError(
            f"expected an (h, w, 3) RGB or (h, w, 4) RGBA image, got shape {a.shape}"
        )
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = (a[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return a


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max − min) / max in [0, 1], float32."""
    rgb = _as_rgb(rgb)
    mx = rgb.max(axis=2).astype(np.float32)
    mn = rgb.min(axis=2).astype(np.float32)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Per-channel optical density −log10(I / 255), float32 (h, w, 3); 0 for white."""
    rgb = _as_rgb(rgb).astype(np.float32)
    return -np.log10((rgb + 1.0) / 256.0)


def pen_mask(rgb: np.ndarray, vote_px: int = 3) -> np.ndarray:
    """Pixels coloured by marker ink (green, blue, red or black), not by H&E.

    Red marker and eosin-rich tissue overlap pixel by pixel (blue/green OD ratio 0.7–0.8
    occurs in both), so borderline pixels count as pen only where most of their
    `vote_px`-wide neighbourhood is pen-coloured too: ink comes in strokes, the
    borderline tissue pixels are scattered.
    """
    rgb = _as_rgb(rgb)
    od = optical_density(rgb)
    od_r, od_g, od_b = od[..., 0], od[..., 1], od[..., 2]
    inked = od.max(axis=2) > _PEN_MIN_OD
    g = np.maximum(od_g, 1e-3)
    rg, bg = od_r / g, od_b / g
    # Saturated pure red (green ≈ blue) is marker; eosin is pink, i.e. blue above green.
    mx = rgb.max(axis=2).astype(np.float32)
    mn = rgb.min(axis=2).astype(np.float32)
    gb_gap = np.abs(rgb[..., 1].astype(np.float32) - rgb[..., 2].astype(np.float32))
    pure_red = (
        (rgb[..., 0] == mx) & (mx - mn > _RED_PEN_MIN_SATURATION * mx) & (gb_gap < 0.35 * (mx - mn))
    )
    sure = inked & ((rg > _SURE_OD_RED_OVER_GREEN) | (bg > _SURE_OD_BLUE_OVER_GREEN) | pure_red)
    maybe = inked & ((rg > _MAX_OD_RED_OVER_GREEN) | (bg > _MAX_OD_BLUE_OVER_GREEN))
    if vote_px > 1:
        maybe = ndi.uniform_filter(maybe.astype(np.float32), size=vote_px) > 0.5
    return sure | (maybe & inked)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of a 1-D sample (no scikit-image import on the hot path)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def tissue_score(rgb: np.ndarray, method: Method = "saturation") -> np.ndarray:
    """The per-pixel score thresholded by `tissue_mask_from_rgb` (float32, (h, w))."""
    if method == "saturation":
        return saturation(rgb)
    if method == "od":
        return optical_density(rgb).mean(axis=2)
    raise WsiDetectError(f"unknown tissue method {method!r}; use 'saturation' or 'od'")


def tissue_threshold(score: np.ndarray, method: Method = "saturation") -> float:
    """Otsu of `score`, clamped to the method's [low, high] (the no-contrast guard)."""
    low, high = _CLAMPS[method]
    sample = score.ravel()
    if sample.size > 1_000_000:  # Otsu needs the histogram shape, not every pixel
        sample = sample[:: sample.size // 1_000_000]
    if sample.size == 0 or float(np.percentile(sample, 99.5)) < low:
        return low  # nothing stands out of the background: do not split noise
    return float(min(max(_otsu(sample), low), high))


def _px_area(um2: float, mpp: float | None, fallback_px: int) -> int:
    if mpp is None or mpp <= 0:
        return fallback_px
    return max(1, int(round(um2 / (mpp * mpp))))


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    *,
    mpp: float | None = None,
    method: Method = "saturation",
    exclude_pen: bool = True,
    min_object_um2: float = _MIN_OBJECT_UM2,
    min_hole_um2: float = _MIN_HOLE_UM2,
    threshold: float | None = None,
) -> np.ndarray:
    """Boolean tissue mask of an RGB(A) image.

    `mpp` is the pixel size of `rgb` (µm); it turns the speck/hole sizes (µm²) into
    pixels, and without it small fixed pixel sizes are used. `threshold` overrides the
    clamped Otsu threshold of the score.
    """
    rgb = _as_rgb(rgb)
    # A 1-px blur removes JPEG chroma noise, which on near-white glass reaches the
    # saturation of pale tissue pixel by pixel but not on average.
    score = ndi.gaussian_filter(tissue_score(rgb, method), sigma=1.0)
    t = tissue_threshold(score, method) if threshold is None else float(threshold)
    mask = score > t
    if exclude_pen and mask.any():
        vote = 5 if mpp is None else min(9, max(3, int(round(_PEN_VOTE_UM / mpp))))
        pen = pen_mask(rgb, vote_px=vote)
        if pen.any():
            halo = 1 if mpp is None else max(1, int(round(_PEN_HALO_UM / mpp)))
            # Grow the pen by its blurred edge, but only into pixels that are pen-coloured
            # at a laxer level; plain tissue next to a marker line stays tissue.
            pen = ndi.binary_dilation(pen, iterations=min(halo, 8)) & (~_clearly_he(rgb) | pen)
            mask &= ~pen
    if not mask.any():
        return mask
    min_obj = _px_area(min_object_um2, mpp, _MIN_OBJECT_PX)
    min_hole = _px_area(min_hole_um2, mpp, _MIN_HOLE_PX)
    mask = _remove_small(mask, min_obj)
    mask = ~_remove_small(~mask, min_hole, keep_border=True)
    return mask


def _clearly_he(rgb: np.ndarray) -> np.ndarray:
    """Pixels whose optical-density ratios sit well inside the H&E range."""
    od = optical_density(rgb)
    g = np.maximum(od[..., 1], 1e-3)
    return (od[..., 0] < 0.9 * g) & (od[..., 2] < 0.7 * g) & (od[..., 1] > 0.1)


def _remove_small(mask: np.ndarray, min_px: int, keep_border: bool = False) -> np.ndarray:
    """Drop connected components (8-connected) smaller than `min_px` pixels.

    With `keep_border`, components touching the image edge are kept whatever their size
    (used for holes: background reaching the slide edge is not a hole).
    """
    if min_px <= 1:
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    if keep_border:
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[np.unique(edge)] = True
        keep[0] = False
    return keep[labels]


# ---------------------------------------------------------------------------------------
# the mask object
# ---------------------------------------------------------------------------------------
@dataclass
class TissueMask:
    """A tissue mask at `downsample` level-0 pixels per mask pixel.

    Mask pixel (r, c) covers level-0 [c·d, (c+1)·d) × [r·d, (r+1)·d). `slide_shape` is the
    level-0 (height, width); area beyond it is not slide and never counts as tissue.
    """

    mask: np.ndarray
    downsample: float
    mpp: float | None = None
    slide_shape: tuple[int, int] | None = None
    _sat: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 2:
            raise WsiDetectError(f"a tissue mask must be 2-D, got shape {self.mask.shape}")
        if not self.downsample > 0:
            raise WsiDetectError(f"tissue mask downsample must be > 0, got {self.downsample}")
        self.downsample = float(self.downsample)
        if self.slide_shape is None:
            h, w = self.mask.shape
            self.slide_shape = (int(round(h * self.downsample)), int(round(w * self.downsample)))
        self.slide_shape = (int(self.slide_shape[0]), int(self.slide_shape[1]))
        # Summed-area table with a zero row/column in front: sat[j, i] = sum(mask[:j, :i]).
        sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.float64)
        np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.float64), axis=1, out=sat[1:, 1:])
        self._sat = sat

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    def _area(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
        """Tissue area (mask px²) of [x0, x1) × [y0, y1) in mask coordinates.

        The integral of a piecewise-constant image is bilinear inside each cell, so the
        bilinear interpolation of the summed-area table at fractional corners is exact.
        """
        return (
            self._integral(x1, y1)
            - self._integral(x0, y1)
            - self._integral(x1, y0)
            + self._integral(x0, y0)
        )

    def _integral(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        sat = self._sat
        h, w = self.mask.shape
        i = np.clip(np.floor(x).astype(np.int64), 0, max(w - 1, 0))
        j = np.clip(np.floor(y).astype(np.int64), 0, max(h - 1, 0))
        fx = np.clip(x - i, 0.0, 1.0)
        fy = np.clip(y - j, 0.0, 1.0)
        s00, s01 = sat[j, i], sat[j, i + 1]
        s10, s11 = sat[j + 1, i], sat[j + 1, i + 1]
        return s00 * (1 - fx) * (1 - fy) + s01 * fx * (1 - fy) + s10 * (1 - fx) * fy + s11 * fx * fy

    def fractions(self, x, y, w, h) -> np.ndarray:
        """Vectorised `fraction` over arrays of level-0 rectangles."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        w = np.asarray(w, np.float64)
        h = np.asarray(h, np.float64)
        d = self.downsample
        sh, sw = self.slide_shape
        # Clip to the slide (outside = no tissue), then go to mask coordinates.
        cx0, cx1 = np.clip(x, 0, sw) / d, np.clip(x + w, 0, sw) / d
        cy0, cy1 = np.clip(y, 0, sh) / d, np.clip(y + h, 0, sh) / d
        area = self._area(cx0, cy0, cx1, cy1) * d * d
        full = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(full > 0, area / np.where(full > 0, full, 1.0), 0.0)
        return np.clip(out, 0.0, 1.0)

    def fraction(self, x: float, y: float, w: float, h: float) -> float:
        """Fraction of tissue in the level-0 rectangle [x, x+w) × [y, y+h), O(1).

        Parts of the rectangle outside the slide count as no tissue. Plain Python on
        purpose: numpy's per-call overhead is ~40× the arithmetic for one rectangle
        (use `fractions` for many at once).
        """
        if w <= 0 or h <= 0:
            return 0.0
        d = self.downsample
        sh, sw = self.slide_shape
        x0, x1 = min(max(x, 0), sw) / d, min(max(x + w, 0), sw) / d
        y0, y1 = min(max(y, 0), sh) / d, min(max(y + h, 0), sh) / d
        f = self._integral_scalar
        area = f(x1, y1) - f(x0, y1) - f(x1, y0) + f(x0, y0)
        return min(max(area * d * d / (w * h), 0.0), 1.0)

    def _integral_scalar(self, x: float, y: float) -> float:
        h, w = self.mask.shape
        i = min(max(int(math.floor(x)), 0), max(w - 1, 0))
        j = min(max(int(math.floor(y)), 0), max(h - 1, 0))
        fx = min(max(x - i, 0.0), 1.0)
        fy = min(max(y - j, 0.0), 1.0)
        get = self._sat.item  # .item returns Python floats: no numpy scalar overhead
        top = get(j, i) * (1 - fx) + get(j, i + 1) * fx
        bottom = get(j + 1, i) * (1 - fx) + get(j + 1, i + 1) * fx
        return top * (1 - fy) + bottom * fy

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide's area that is tissue."""
        sh, sw = self.slide_shape
        return self.fraction(0, 0, sw, sh)

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    def level0_bbox(self) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) of the tissue's bounding box in level-0 pixels, None if no tissue."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        if rows.size == 0:
            return None
        d = self.downsample
        sh, sw = self.slide_shape
        x0, y0 = int(math.floor(cols[0] * d)), int(math.floor(rows[0] * d))
        x1 = min(int(math.ceil((cols[-1] + 1) * d)), sw)
        y1 = min(int(math.ceil((rows[-1] + 1) * d)), sh)
        return (x0, y0, x1 - x0, y1 - y0)

    def to_level0(self, col: float, row: float) -> tuple[float, float]:
        """Level-0 (x, y) of the centre of mask pixel (row, col)."""
        return ((col + 0.5) * self.downsample, (row + 0.5) * self.downsample)

    def require_tissue(self, what: str = "the slide") -> TissueMask:
        """Return self, or raise EmptyTissueError when there is no tissue."""
        if self.is_empty:
            raise EmptyTissueError(
                f"no tissue found in {what}: the image is blank, almost white or only pen "
                "marks at low resolution. Check the slide, or select a region by hand."
            )
        return self

    # -- persistence --------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write as `.npz` (compact, exact) or `.png` (viewable; geometry in a text chunk)."""
        path = Path(path)
        meta = {
            "downsample": self.downsample,
            "mpp": self.mpp,
            "slide_shape": list(self.slide_shape),
        }
        from .._atomic import atomic_path

        with atomic_path(path) as tmp:  # a crash never leaves a half-written mask
            if path.suffix.lower() == ".png":
                from PIL import Image, PngImagePlugin

                info = PngImagePlugin.PngInfo()
                info.add_text("napari-wsi-detect-tissue", json.dumps(meta))
                Image.fromarray(self.mask.astype(np.uint8) * 255).save(tmp, format="PNG", pnginfo=info)
            else:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, mask=self.mask, meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TissueMask:
        path = Path(path)
        try:
            if path.suffix.lower() == ".png":
                from PIL import Image

                with Image.open(path) as im:
                    meta = json.loads(im.text["napari-wsi-detect-tissue"])
                    mask = np.asarray(im.convert("L")) > 127
            else:
                with np.load(path, allow_pickle=False) as z:
                    mask = z["mask"]
                    meta = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise WsiDetectError(
                f"{path} is not a tissue mask written by napari-wsi-detect ({exc})"
            ) from exc
        return cls(mask, meta["downsample"], meta.get("mpp"), tuple(meta["slide_shape"]))


# ---------------------------------------------------------------------------------------
# from a slide
# ---------------------------------------------------------------------------------------
def _target_downsample(slide: Slide, target_mpp: float, max_side: int) -> tuple[float, int]:
    """(level-0 px per mask px aimed at, longest mask side allowed)."""
    h0, w0 = slide.levels[0].shape
    longest = max(h0, w0)
    mpp = slide.mpp
    if mpp is None and slide.objective_power:
        mpp = 10.0 / float(slide.objective_power)  # 20× ≈ 0.5 µm/px, 40× ≈ 0.25 µm/px
    side_cap = max(1, int(max_side) if mpp else min(int(max_side), UNKNOWN_MPP_SIDE))
    target = target_mpp / mpp if mpp else longest / side_cap
    return max(1.0, target, longest / side_cap), side_cap


def _read_cost_px(slide: Slide, level: int) -> int:
    """Pixels decoded to read all of `level`: a synthetic level is computed from the
    smallest native level, which is then read whole."""
    native = _native_count(slide)
    h, w = slide.levels[min(level, native - 1)].shape
    return int(h) * int(w)


def _native_count(slide: Slide) -> int:
    """Levels stored in the file (duck-typed slides may only have `levels`)."""
    n = getattr(slide, "native_level_count", None)
    if n is None:
        n = sum(1 for lv in slide.levels if not getattr(lv, "synthetic", False))
    return max(1, int(n))


def _segment_shape(slide: Slide, level: int) -> tuple[int, int]:
    get = getattr(slide, "segment_shape", None)
    if get is not None:
        return get(level)
    tile = getattr(slide.levels[level], "tile", None)
    return (int(tile[0]), int(tile[1])) if tile else (512, 512)


def _area_reduce(rgb: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return rgb
    h, w = rgb.shape[:2]
    pad_h, pad_w = (-h) % factor, (-w) % factor
    if pad_h or pad_w:
        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    hh, ww = rgb.shape[0] // factor, rgb.shape[1] // factor
    block = rgb.reshape(hh, factor, ww, factor, 3).mean(axis=(1, 3), dtype=np.float32)
    return np.round(block).astype(np.uint8)


def _thumbnail(slide: Slide, side_cap: int) -> tuple[np.ndarray, float] | None:
    """(RGB, level-0 px per pixel) of the slide's stored thumbnail when it shows the
    whole slide (same aspect ratio as level 0), else None."""
    h0, w0 = slide.levels[0].shape
    try:
        names = slide.associated_names
    except WsiDetectError:
        return None
    if "thumbnail" not in names:
        return None
    try:
        thumb = np.asarray(slide.associated_image("thumbnail"))[..., :3]
    except WsiDetectError:
        return None
    th, tw = thumb.shape[:2]
    if min(th, tw) < 16 or abs((tw / th) / (w0 / h0) - 1.0) > 0.02:
        return None  # a cropped or padded overview, not the slide itself
    factor = max(1, math.ceil(max(th, tw) / side_cap))
    return _area_reduce(thumb, factor), factor * (w0 / tw + h0 / th) / 2.0


def _read_sampled(slide: Slide, target: float, side_cap: int) -> tuple[np.ndarray, float]:
    """(RGB, level-0 px per pixel) from small patches of the smallest native level, one
    per mask pixel, on a grid coarse enough that the tiles decoded stay within
    `MAX_SAMPLED_DECODE_BYTES` (a slide without a usable pyramid or thumbnail)."""
    level = _native_count(slide) - 1
    lv = slide.levels[level]
    seg_h, seg_w = _segment_shape(slide, level)
    seg_bytes = max(1, int(seg_h) * int(seg_w) * 3)
    n_max = int(min(MAX_SAMPLES, max(64, MAX_SAMPLED_DECODE_BYTES // seg_bytes)))
    h0, w0 = slide.levels[0].shape
    ds = max(target, max(h0, w0) / side_cap, math.sqrt(h0 * w0 / n_max))
    mh, mw = max(1, math.ceil(h0 / ds)), max(1, math.ceil(w0 / ds))
    lds = float(lv.downsample)
    k = int(max(1, min(8, ds / lds)))  # patch side in pixels of `level`
    half = k * lds / 2.0
    out = np.empty((mh, mw, 3), np.uint8)
    for r in range(mh):
        y = int(round((r + 0.5) * ds - half))
        for c in range(mw):
            x = int(round((c + 0.5) * ds - half))
            patch = np.asarray(slide.read_region(level, x, y, k, k))[..., :3]
            out[r, c] = np.round(patch.reshape(-1, 3).mean(axis=0))
    return out, ds


def _read_reduced(slide: Slide, level: int, factor: int, strip_bytes: int = 64 << 20) -> np.ndarray:
    """Level `level` area-averaged by `factor`, read in strips so memory stays bounded."""
    lv = slide.levels[level]
    lh, lw = lv.shape
    oh, ow = -(-lh // factor), -(-lw // factor)
    out = np.empty((oh, ow, 3), np.uint8)
    rows = max(factor, (strip_bytes // max(lw * 3, 1)) // factor * factor)
    for y in range(0, lh, rows):
        n = min(rows, lh - y)
        strip = slide.read_region(level, 0, int(round(y * lv.downsample)), lw, n)
        strip = np.asarray(strip)[..., :3]
        pad_h, pad_w = (-n) % factor, (-lw) % factor
        if pad_h or pad_w:  # beyond the slide reads as white, as read_region does
            strip = np.pad(strip, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
        hh, ww = strip.shape[0] // factor, strip.shape[1] // factor
        block = strip.reshape(hh, factor, ww, factor, 3).mean(axis=(1, 3), dtype=np.float32)
        out[y // factor : y // factor + hh] = np.round(block).astype(np.uint8)
    return out


def compute_tissue_mask(
    slide: Slide,
    *,
    target_mpp: float = DEFAULT_TARGET_MPP,
    max_side: int = DEFAULT_MAX_SIDE,
    method: Method = "saturation",
    exclude_pen: bool = True,
    require_tissue: bool = False,
    **options: float,
) -> TissueMask:
    """Tissue mask of a slide at about `target_mpp` µm/px (≈ 1.25× for 8 µm).

    Reads the level nearest below that resolution (synthetic pyramid levels included) and
    averages it down, in strips; the mask's longest side stays within `max_side` (2048
    when the pixel size is unknown). When that would mean decoding more than
    `MAX_TISSUE_READ_PX` pixels (a huge slide without a pyramid), the stored thumbnail is
    used, else a sparse sample of the smallest level: the work is bounded whatever the
    file declares. A greyscale slide raises EmptyTissueError saying it needs RGB. With
    `require_tissue`, an empty mask raises EmptyTissueError. `options` go to
    `tissue_mask_from_rgb`.
    """
    name = str(getattr(slide, "path", "the slide"))
    if getattr(slide, "colour", "rgb") == "greyscale":
        raise EmptyTissueError(
            f"{name} is a greyscale image: tissue detection and the detectors need an RGB "
            "(colour) brightfield slide. Use the colour scan (or export it in RGB)."
        )
    target, side_cap = _target_downsample(slide, target_mpp, max_side)
    level = slide.best_level_for_downsample(target)
    h0, w0 = slide.levels[0].shape
    if _read_cost_px(slide, level) <= MAX_TISSUE_READ_PX:
        level_ds = float(slide.levels[level].downsample)
        lh, lw = slide.levels[level].shape
        factor = max(1, int(math.floor(target / level_ds + 1e-6)),
                     math.ceil(max(lh, lw) / side_cap - 1e-9))
        small = _read_reduced(slide, level, factor)
        # Effective level-0 px per mask px (levels are rounded, so measure, not assume).
        downsample = factor * (w0 / lw + h0 / lh) / 2.0
    else:
        # No stored level small enough: never decode all of a huge level.
        found = _thumbnail(slide, side_cap)
        small, downsample = found if found is not None else _read_sampled(
            slide, target, side_cap)
    mask_mpp = slide.mpp * downsample if slide.mpp else None
    mask = tissue_mask_from_rgb(
        small, mpp=mask_mpp, method=method, exclude_pen=exclude_pen, **options
    )
    result = TissueMask(mask, downsample, slide.mpp, (h0, w0))
    if require_tissue:
        result.require_tissue(name)
    return result
