"""Whole-slide map geometry and the ROI plan (Fast ScanNet, METHODS §1, Eq. 1-3).

THE coordinate conventions of the package (docs/architecture.md), stated once here and
tested in tests/test_plan.py:

* Level-0 pixels: origin at the top-left corner of the top-left pixel, x = column (right),
  y = row (down); pixel (x, y) covers [x, x+1) x [y, y+1).
* Model pixels: the model runs at its own mpp. ``d = model_mpp / slide_mpp`` level-0
  pixels per model pixel. Model pixel (u, v) covers level-0 [u*d, (u+1)*d) x [v*d, (v+1)*d).
* Whole-slide map (WSM): patch ``L_p`` (244), output stride ``S = S_p / alpha`` model px,
  offset ``o = (L_p - S) / 2``. Map cell (r, c) is the patch whose top-left model pixel is
  ``(c*S - o, r*S - o)``; its centre is the centre of the S x S block
  ``[c*S, (c+1)*S) x [r*S, (r+1)*S)``, i.e. level-0 ``((c + 1/2)*S*d, (r + 1/2)*S*d)``.
  Cell (r, c) "owns" the level-0 rectangle ``[c*S*d, (c+1)*S*d) x [r*S*d, (r+1)*S*d)``;
  polygons drawn from the map follow these cell edges. The map has
  ``ceil(H0 / (S*d)) x ceil(W0 / (S*d))`` cells (rows x cols).
  The paper's H_I = H_M * S'_p (Eq. 3) is the top-left of a cell's block; the patch centre
  is that + S/2 in our convention (the paper adds L_p/2 to the patch's own top-left, which
  is the same point: c*S - o + L_p/2 = c*S + S/2).
* napari (pixel centres at integer positions times scale): with the slide layer at
  ``scale = mpp``, the heatmap layer has ``scale = S*d*mpp`` and
  ``translate = (S*d - 1)/2 * mpp``.
* ROIs: a ROI produces a block of up to T x T cells with top-left cell (r0, c0), T the ROI
  size in cells (L'_m). It reads ``L_p + (n - 1)*S`` model pixels per axis (n = the block's
  rows or cols) whose top-left model pixel is ``(c0*S - o, r0*S - o)``. ROI stride
  ``S_r = T*S``; dense tiles stitch edge to edge (alpha = 2, T = 166 -> L'_r = 2884,
  S_r = 2656). Reads outside the slide are white.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..errors import EmptyTissueError, WsiDetectError

PATCH = 244  # L_p: the ScanNet receptive field / training patch
MODEL_STRIDE = 32  # S_p: five 2x2 pools

# ROI size in map cells per alpha unit: 83 gives the paper's L_r = 2868 (GPU: 2884 px at
# alpha = 2). CPU: 52 -> 1892 px ROIs at alpha = 2. A ROI of n cells reads a 228 px halo
# (L_p - S) beyond its n*S px, so the share of network work that lands on the ROI's own
# cells is (n*S / (L_p + (n-1)*S))^2: 0.62 at the former 26 (1060 px), 0.77 at 52; the
# whole-slide run on a 2-core CPU is ~1.3x faster (bench wholeslide --breakdown,
# docs/engine.md) while one ROI still takes well under a second with the bundled model.
GPU_CELLS_PER_ALPHA = 83
CPU_CELLS_PER_ALPHA = 52

# Snap d to a whole ratio when within this relative distance (0.243 vs 0.25 µm/px are
# both "40x"; resampling by 3 % would only blur the input).
D_SNAP_TOLERANCE = 0.05

DEFAULT_MIN_TISSUE = 0.001


class _TissueLike(Protocol):
    def fraction(self, x: int, y: int, w: int, h: int) -> float: ...


def snap_downsample(d: float, tolerance: float = D_SNAP_TOLERANCE) -> float:
    """Return d snapped to the nearest integer (d >= 1) or 1/integer (d < 1) when within
    `tolerance` (relative); otherwise d unchanged."""
    if d <= 0 or not math.isfinite(d):
        raise WsiDetectError(f"invalid model/slide pixel-size ratio {d!r}")
    if d >= 1:
        k = round(d)
        return float(k) if abs(d - k) <= tolerance * d else d
    k = round(1 / d)
    return 1.0 / k if abs(1 / d - k) <= tolerance / d else d


@dataclass(frozen=True)
class MapGeometry:
    """Geometry of a whole-slide map; see the module docstring for the conventions."""

    height0: int  # level-0 slide height (px)
    width0: int  # level-0 slide width (px)
    slide_mpp: float  # µm per level-0 pixel (the model's when the slide has none)
    model_mpp: float  # µm per model pixel
    alpha: int = 2  # dense coefficient
    patch: int = PATCH
    model_stride: int = MODEL_STRIDE
    d: float = 1.0  # level-0 px per model px (snapped, see snap_downsample)
    mpp_assumed: bool = False  # True when the slide had no mpp

    def __post_init__(self) -> None:
        if self.height0 <= 0 or self.width0 <= 0:
            raise WsiDetectError(f"slide size {self.width0}x{self.height0} is empty")
        if self.alpha < 1 or self.model_stride % self.alpha:
            raise WsiDetectError(
                f"density alpha={self.alpha} must divide the model stride {self.model_stride} "
                "(use 1, 2, 4, 8 ...)"
            )
        if (self.patch - self.stride) % 2:
            raise WsiDetectError(
                f"alpha={self.alpha} gives an output stride {self.stride} that cannot be "
                f"centred in a {self.patch} px patch; use a smaller alpha"
            )

    # -- construction ----------------------------------------------------------------
    @classmethod
    def for_slide(
        cls,
        shape0: tuple[int, int],
        slide_mpp: float | None,
        model_mpp: float | None,
        alpha: int = 2,
        patch: int = PATCH,
        model_stride: int = MODEL_STRIDE,
    ) -> MapGeometry:
        """Geometry for a slide of level-0 `shape0` = (height, width)."""
        assumed = False
        if model_mpp is None or model_mpp <= 0:
            model_mpp = slide_mpp if slide_mpp else 0.243
        if slide_mpp is None or slide_mpp <= 0:
            warnings.warn(
                f"the slide has no pixel size; assuming the model's {model_mpp:g} µm/px "
                "(areas and scales may be wrong)",
                stacklevel=2,
            )
            slide_mpp, assumed = model_mpp, True
        d = snap_downsample(model_mpp / slide_mpp)
        return cls(
            height0=int(shape0[0]),
            width0=int(shape0[1]),
            slide_mpp=float(slide_mpp),
            model_mpp=float(model_mpp),
            alpha=int(alpha),
            patch=int(patch),
            model_stride=int(model_stride),
            d=float(d),
            mpp_assumed=assumed,
        )

    # -- derived ---------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """S = S_p / alpha, output stride in model pixels."""
        return self.model_stride // self.alpha

    @property
    def offset(self) -> int:
        """o = (L_p - S) / 2 model pixels."""
        return (self.patch - self.stride) // 2

    @property
    def cell_size0(self) -> float:
        """Side of one map cell in level-0 pixels (S * d)."""
        return self.stride * self.d

    @property
    def cell_um(self) -> float:
        return self.cell_size0 * self.slide_mpp

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the whole-slide map."""
        s = self.cell_size0
        return (math.ceil(self.height0 / s - 1e-9), math.ceil(self.width0 / s - 1e-9))

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    def read_size(self, n: int) -> int:
        """Model pixels read for a block of n cells: L_p + (n - 1) * S (Eq. 1)."""
        return self.patch + (n - 1) * self.stride

    # -- transforms ------------------------------------------------------------------
    def cell_to_level0(self, r: float, c: float) -> tuple[float, float]:
        """Level-0 (x, y) of the centre of map cell (r, c)'s patch."""
        s = self.cell_size0
        return ((c + 0.5) * s, (r + 0.5) * s)

    def level0_to_cell(self, x: float, y: float) -> tuple[int, int]:
        """(r, c) of the cell owning level-0 point (x, y) (may lie outside the map)."""
        s = self.cell_size0
        return (math.floor(y / s), math.floor(x / s))

    def cell_rect0(self, r: int, c: int, rows: int = 1, cols: int = 1) -> tuple[float, ...]:
        """Level-0 (x, y, w, h) owned by the block of cells starting at (r, c)."""
        s = self.cell_size0
        return (c * s, r * s, cols * s, rows * s)

    def napari_scale(self, level0_scale: float | None = None) -> tuple[float, float]:
        """Heatmap layer scale (y, x) for a slide layer whose level 0 has scale
        `level0_scale` (default: the slide mpp, i.e. world units = µm)."""
        k = self.slide_mpp if level0_scale is None else level0_scale
        return (self.cell_size0 * k, self.cell_size0 * k)

    def napari_translate(self, level0_scale: float | None = None) -> tuple[float, float]:
        """Heatmap layer translate (y, x) relative to a slide layer at `level0_scale`."""
        k = self.slide_mpp if level0_scale is None else level0_scale
        t = (self.cell_size0 - 1) / 2 * k
        return (t, t)

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MapGeometry:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass(frozen=True)
class ROI:
    """One region of interest: a block of map cells and the model-pixel window it reads."""

    index: int
    r0: int
    c0: int
    rows: int
    cols: int
    read_x: int  # model-pixel top-left of the read window: c0*S - o
    read_y: int
    read_w: int  # L_p + (cols - 1)*S model pixels
    read_h: int
    tissue: float = field(default=1.0, compare=False)  # tissue fraction of the footprint

    @property
    def block(self) -> tuple[int, int, int, int]:
        return (self.r0, self.c0, self.rows, self.cols)


def default_roi_cells(device: str, alpha: int) -> int:
    """ROI size T in cells: the paper's 2884 px ROIs on a GPU, 1892 px on a CPU (alpha 2)."""
    per = GPU_CELLS_PER_ALPHA if str(device).startswith(("cuda", "mps")) else CPU_CELLS_PER_ALPHA
    return per * alpha


def _intersects(a: Sequence[float], b: Sequence[float]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def plan_rois(
    slide_shape_level0: tuple[int, int],
    geometry: MapGeometry,
    roi_cells: int,
    tissue_mask: _TissueLike | None = None,
    region: tuple[int, int, int, int] | None = None,
    min_tissue: float = DEFAULT_MIN_TISSUE,
) -> list[ROI]:
    """ROIs tiling the map in T x T blocks (row-major), keeping those whose level-0
    footprint holds more than `min_tissue` tissue (when a mask is given) and, when
    `region` = (x, y, w, h) level-0 is given, that intersect it.

    Raises EmptyTissueError when nothing is left to compute."""
    h0, w0 = int(slide_shape_level0[0]), int(slide_shape_level0[1])
    if (h0, w0) != (geometry.height0, geometry.width0):
        raise WsiDetectError(
            f"slide shape {h0}x{w0} does not match the map geometry "
            f"{geometry.height0}x{geometry.width0}"
        )
    t = int(roi_cells)
    if t < 1:
        raise WsiDetectError(f"ROI size must be at least 1 map cell (got {roi_cells})")
    if region is not None:
        rx, ry, rw, rh = (int(v) for v in region)
        if rw <= 0 or rh <= 0:
            raise WsiDetectError(f"region {region} is empty: give x,y,w,h with w, h > 0")
        if not _intersects((rx, ry, rw, rh), (0, 0, w0, h0)):
            raise WsiDetectError(f"region {region} lies outside the slide ({w0}x{h0} px)")
    rows, cols = geometry.shape
    s, o = geometry.stride, geometry.offset
    rois: list[ROI] = []
    for r0 in range(0, rows, t):
        nr = min(t, rows - r0)
        for c0 in range(0, cols, t):
            nc = min(t, cols - c0)
            x, y, w, h = geometry.cell_rect0(r0, c0, nr, nc)
            if region is not None and not _intersects((x, y, w, h), (rx, ry, rw, rh)):
                continue
            frac = 1.0
            if tissue_mask is not None:
                # Clip to the slide: the last row/col of cells may overhang it.
                ix, iy = int(x), int(y)
                iw = max(1, min(w0, math.ceil(x + w)) - ix)
                ih = max(1, min(h0, math.ceil(y + h)) - iy)
                frac = float(tissue_mask.fraction(ix, iy, iw, ih))
                if frac <= min_tissue:
                    continue
            rois.append(
                ROI(
                    index=len(rois),
                    r0=r0,
                    c0=c0,
                    rows=nr,
                    cols=nc,
                    read_x=c0 * s - o,
                    read_y=r0 * s - o,
                    read_w=geometry.read_size(nc),
                    read_h=geometry.read_size(nr),
                    tissue=frac,
                )
            )
    if not rois:
        where = "in the requested region" if region is not None else "on this slide"
        raise EmptyTissueError(
            f"no tissue found {where}: nothing to analyse (check the slide, or the region)"
        )
    return rois
