"""Re-render an existing slide as if another scanner (and another stain batch) had made it.

`rescan_slide(src, dst, Rescan(...))` streams `src` tile by tile into a new pyramidal
JPEG TIFF `dst` (phantom/pyramid.py, bounded memory for any slide size) and carries the
truth files beside it (`<stem>.geojson` phantom truth, `<stem>.tumour-mask.tif`), so
`wsi-detect evaluate` and scripts/evaluate_shift.py score the rescanned slide against
the same lesions.

Per output pixel, in the order light meets them in a scanner:

1. **stain** (the tissue): optical density `od = -log((I + 1) / 256)` (the convention of
   training/augment.stain_jitter), concentrations `c = od · M⁻¹` in the slide's own
   H&E basis `M` (Macenko, estimated once on a low level; Ruifrok's when too little
   tissue), haematoxylin × `h_gain`, eosin × `e_gain`, then back through the basis
   rotated by `stain_rotation_deg` (both stain vectors turned about the normal of their
   plane: a hue change of the dyes, not of the camera). One 3×3 matrix in OD space.
2. **optics**: a Gaussian defocus of `blur_sigma_px` output pixels, plus, when the pixel
   size grows, the anti-alias of the resampling (σ = √(k² − 1)/2 source px for a
   k-fold coarser grid), as one Gaussian in source pixels;
3. **sampling**: to `mpp` µm/px (bilinear on the blurred source; output pixel centres
   at `(u + ½)·k − ½` source px), so a 0.243 µm/px slide becomes a 0.5 µm/px one with
   the same tissue;
4. **camera**: gamma (`255·(I/255)^gamma`), brightness (× factor), clipped to uint8;
5. **file**: JPEG at `jpeg_quality` (the pyramid writer's encoder).

Every step is a function of global source coordinates with a margin covering the
Gaussian, so a tile is the same whichever tile order wrote it. The truth: at the same
pixel size the truth files are copied byte for byte; with a new pixel size the phantom
GeoJSON's coordinates are scaled (areas and axes in µm unchanged) and the level-5 mask
is rasterised again from the scaled polygons (the writer's rule); a mask without a
phantom GeoJSON is resampled nearest-neighbour.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .._atomic import atomic_paths
from ..errors import WsiDetectError

__all__ = ["Rescan", "od_transform", "rescan_slide", "slide_stain_matrix"]


@dataclass(frozen=True)
class Rescan:
    """A scanner/stain shift; the defaults change nothing but the JPEG re-encoding."""

    h_gain: float = 1.0  # haematoxylin concentration factor
    e_gain: float = 1.0  # eosin concentration factor
    stain_rotation_deg: float = 0.0  # both stain OD vectors turned in their plane
    blur_sigma_px: float = 0.0  # defocus, Gaussian σ in output pixels
    gamma: float = 1.0  # < 1 brightens the mid-tones
    brightness: float = 1.0  # intensity factor
    jpeg_quality: int = 90  # of the written tiles (the phantom writes 90)
    mpp: float | None = None  # output µm/px (None: the source's)

    def check(self) -> None:
        if not (self.h_gain >= 0 and self.e_gain >= 0):
            raise WsiDetectError("stain gains must be ≥ 0")
        if self.blur_sigma_px < 0 or not 0 < self.gamma <= 5 or not 0 < self.brightness <= 5:
            raise WsiDetectError("blur must be ≥ 0 px, gamma and brightness in (0, 5]")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise WsiDetectError(f"JPEG quality must be 1-100, got {self.jpeg_quality}")
        if self.mpp is not None and not 0.05 <= self.mpp <= 10:
            raise WsiDetectError(f"mpp {self.mpp} µm/px is not a microscope resolution")

    def to_dict(self) -> dict:
        return asdict(self)


def _turn(v: np.ndarray, axis: np.ndarray, theta: float) -> np.ndarray:
    """Rodrigues rotation of `v` about the unit `axis`."""
    return (v * math.cos(theta) + np.cross(axis, v) * math.sin(theta)
            + axis * float(axis @ v) * (1 - math.cos(theta)))


def od_transform(matrix: np.ndarray, h_gain: float = 1.0, e_gain: float = 1.0,
                 rotation_deg: float = 0.0) -> np.ndarray:
    """3×3 `T` with `od_out = od_in · T` (row vectors): concentrations in `matrix`'s
    basis (rows H, E, residual), H and E scaled, back through the rotated basis. With no
    rotation this is stain_jitter's concentration model with zero bias."""
    m = np.asarray(matrix, dtype=np.float64)
    rotated = m.copy()
    if rotation_deg:
        axis = np.cross(m[0], m[1])
        axis /= np.linalg.norm(axis)
        theta = math.radians(rotation_deg)
        for i in (0, 1):
            # an OD vector has no negative absorption: clip, keep unit length
            v = np.clip(_turn(m[i], axis, theta), 1e-3, None)
            rotated[i] = v / np.linalg.norm(v)
    return np.linalg.inv(m) @ np.diag([h_gain, e_gain, 1.0]) @ rotated


def slide_stain_matrix(slide) -> np.ndarray:
    """Macenko H&E basis of the slide from its first level ≤ 1024 px across (Ruifrok's
    when too little tissue shows)."""
    from ..training.augment import RUIFROK_HED, macenko_stain_matrix

    level = len(slide.levels) - 1
    for i, lv in enumerate(slide.levels):
        if max(lv.shape) <= 1024:
            level = i
            break
    h, w = slide.levels[level].shape
    rgb = slide.read_region(level, 0, 0, w, h).reshape(-1, 3)
    # every k-th pixel, ≤ 2^18 of them: Macenko's float64 OD copies stay a few MB
    m = macenko_stain_matrix(rgb[:: max(1, rgb.shape[0] >> 18)])
    return RUIFROK_HED if m is None else m


def _resample_axis(a: np.ndarray, start: int, n: int, k: float, origin: int, axis: int
                   ) -> np.ndarray:
    """Output samples start..start+n-1 along `axis` of `a` (whose index 0 is source px
    `origin`), bilinear, output centre u -> source (u + ½)·k − ½."""
    pos = (np.arange(start, start + n) + 0.5) * k - 0.5 - origin
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, a.shape[axis] - 2)
    f = (pos - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n
    f = f.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - f) + np.take(a, i0 + 1, axis=axis) * f


class _Renderer:
    def __init__(self, slide, params: Rescan, k: float, transform: np.ndarray) -> None:
        self.slide = slide
        self.p = params
        self.k = k
        self.t = transform.astype(np.float32)
        aa = math.sqrt(k * k - 1) / 2 if k > 1 else 0.0
        self.sigma = math.hypot(aa, params.blur_sigma_px * k)  # source px
        self.margin = int(4 * self.sigma + 0.5) + 2  # scipy's truncate=4 support, + bilinear
        self.identity_stain = np.allclose(transform, np.eye(3), atol=1e-9)

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        k, m = self.k, self.margin
        sx0, sy0 = math.floor(x * k) - m, math.floor(y * k) - m
        sx1, sy1 = math.ceil((x + w) * k) + m, math.ceil((y + h) * k) + m
        img = self.slide.read_region(0, sx0, sy0, sx1 - sx0, sy1 - sy0).astype(np.float32)
        if not self.identity_stain:  # in place where possible: a few window copies at most
            img += 1.0
            img *= 1.0 / 256.0
            np.log(img, out=img)
            img = img @ self.t  # = -od · T = -od_out (linear), with od = -log(...)
            np.exp(img, out=img)
            img *= 256.0
            img -= 1.0
        if self.sigma > 0:
            img = gaussian_filter(img, sigma=(self.sigma, self.sigma, 0), mode="nearest")
        if k != 1.0:
            img = _resample_axis(img, y, h, k, sy0, 0)
            img = _resample_axis(img, x, w, k, sx0, 1)
        else:
            img = img[m:m + h, m:m + w]
        if self.p.gamma != 1.0:
            img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** self.p.gamma
        if self.p.brightness != 1.0:
            img = img * self.p.brightness
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _scaled_truth(src_slide: Path, dst_slide: Path, scale: float, mpp: float,
                  size: tuple[int, int], note: str, tmp_geojson: Path, tmp_mask: Path | None
                  ) -> None:
    """The phantom truth of `src_slide` in `dst_slide`'s pixels (coordinates × scale)."""
    from ..annotations.geojson import load_geojson_object
    from .writer import _write_geojson, _write_mask, load_phantom_truth, truth_paths

    truth = load_phantom_truth(src_slide)
    member = load_geojson_object(truth.geojson_path).get("phantom", {})
    geojson_path, mask_path = truth_paths(dst_slide)
    tumours = [replace(t, polygon=t.polygon * scale, holes=[hl * scale for hl in t.holes])
               for t in truth.tumours]
    new = replace(truth, slide_path=dst_slide, geojson_path=geojson_path, mask_path=mask_path,
                  mpp=mpp, size=size, tumours=tumours, mitoses=truth.mitoses * scale,
                  imposters=truth.imposters * scale, notes=[*truth.notes, note])
    if tmp_mask is not None:  # the writer's mask rule on a layout-shaped view
        _write_mask(tmp_mask, SimpleNamespace(width=size[0], height=size[1], mpp=mpp,
                                              lesions=tumours))
    _write_geojson(tmp_geojson, new, bool(member.get("tumour", bool(tumours))),
                   int(member.get("primary", 0)))


def _resampled_mask(src_mask: Path, tmp_mask: Path, k: float, size: tuple[int, int],
                    mpp: float) -> None:
    """A label mask without phantom GeoJSON: nearest-neighbour onto the new grid."""
    import tifffile

    from .writer import MASK_DOWNSAMPLE

    with tifffile.TiffFile(src_mask) as tf:
        page = tf.pages[0]
        mask = page.asarray()
        desc = page.description
    ds = MASK_DOWNSAMPLE
    rows = -(-size[1] // ds)
    cols = -(-size[0] // ds)
    r = np.minimum(((np.arange(rows) + 0.5) * ds * k // ds).astype(int), mask.shape[0] - 1)
    c = np.minimum(((np.arange(cols) + 0.5) * ds * k // ds).astype(int), mask.shape[1] - 1)
    try:
        meta = json.loads(desc)
        meta.update({"mpp": mpp * ds, "slide_size": list(size)})
        desc = json.dumps(meta)
    except (TypeError, ValueError):
        pass
    res = 1e4 / (mpp * ds)
    tifffile.imwrite(tmp_mask, mask[r[:, None], c[None, :]], description=desc, metadata=None,
                     compression="zlib", resolution=(res, res), resolutionunit="CENTIMETER")


def rescan_slide(src: str | os.PathLike, dst: str | os.PathLike, params: Rescan,
                 *, tile: int = 512, src_mpp: float | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Write `dst` (.tif) = `src` seen through `params`, with its truth files; returns
    what was done (sizes, mpp, stain basis, files). Atomic: all files appear together
    (the slide last) or none does."""
    from ..slide import open_slide
    from .pyramid import write_pyramid_tiff
    from .writer import truth_paths

    params.check()
    src, dst = Path(src), Path(dst)
    if dst.suffix.lower() not in (".tif", ".tiff"):
        raise WsiDetectError(f"rescanned slide must be a .tif/.tiff file, got {dst.name!r}")
    if dst.resolve() == src.resolve():
        raise WsiDetectError("rescan: the output must be another file than the input")
    src_geojson, src_mask = truth_paths(src)
    dst_geojson, dst_mask = truth_paths(dst)
    with open_slide(src) as slide:
        mpp0 = src_mpp or slide.mpp
        if not mpp0:
            raise WsiDetectError(f"{src.name} has no pixel size; give src_mpp (--src-mpp)")
        mpp1 = float(params.mpp or mpp0)
        k = mpp1 / mpp0
        w0, h0 = slide.dimensions
        size = (max(1, round(w0 / k)), max(1, round(h0 / k)))
        stains = (params.h_gain, params.e_gain, params.stain_rotation_deg) != (1.0, 1.0, 0.0)
        matrix = slide_stain_matrix(slide) if stains else np.eye(3)
        transform = od_transform(matrix, params.h_gain, params.e_gain,
                                 params.stain_rotation_deg) if stains else np.eye(3)
        note = f"rescanned from {src.name}: {json.dumps(params.to_dict())}"
        description = f"napari-wsi-detect rescan|{note}"
        finals = [p for p, s in ((dst_mask, src_mask), (dst_geojson, src_geojson)) if s.exists()]
        with atomic_paths(*finals, dst) as tmps:
            tmp_of = dict(zip(finals + [dst], tmps, strict=True))
            write_pyramid_tiff(tmp_of[dst], size[0], size[1],
                               _Renderer(slide, params, k, transform), mpp=mpp1, tile=tile,
                               quality=int(params.jpeg_quality), description=description,
                               progress=progress)
            same_grid = size == (w0, h0)
            if same_grid:
                for f, s in ((dst_mask, src_mask), (dst_geojson, src_geojson)):
                    if f in tmp_of:
                        shutil.copyfile(s, tmp_of[f])
            elif dst_geojson in tmp_of:
                # continuous level-0 coordinates: output px u covers source [u·k, (u+1)·k)
                _scaled_truth(src, dst, 1.0 / k, mpp1, size, note, tmp_of[dst_geojson],
                              tmp_of.get(dst_mask))
            elif dst_mask in tmp_of:
                _resampled_mask(src_mask, tmp_of[dst_mask], k, size, mpp1)
    return {"source": str(src), "slide": str(dst), "size": list(size), "mpp": mpp1,
            "source_mpp": mpp0, "stain_matrix": np.asarray(matrix).round(4).tolist(),
            "params": params.to_dict(), "truth": [str(f) for f in finals]}
