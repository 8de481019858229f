"""H&E stain estimation and normalisation, shared by training (augment.py) and inference.

Stain normalisation maps a slide's colours onto the model's *reference* (the look of the
slides it was trained on), so that a slide from another scanner or lab reaches the
network looking like its training data:

* ``macenko`` (Macenko et al. 2009): the slide's H and E optical-density vectors and
  their 99th-percentile concentrations are estimated; each pixel is unmixed with the
  slide's vectors, its H and E concentrations are rescaled to the reference's maxima and
  it is remixed with the reference's vectors.
* ``reinhard`` (Reinhard et al. 2001): the mean and standard deviation of each channel
  in the decorrelated lαβ space are matched to the reference's.

The slide's statistics are fitted **once per slide** on a low-resolution level over its
tissue mask (`fit_slide`), and the same per-pixel map is then applied to every tile
(`StainNormaliser.__call__`): a pure per-pixel function, so tiles and their halos agree
at every seam. (torchstain's and staintools' normalisers re-estimate the source stain of
each image they are given, i.e. per tile here: seams, and a slide-level fit is what
both papers describe; so the few lines of maths live here, on our one Macenko estimate.)
The reference is fitted the same way on the training slides and stored in the model's
JSON (`"stain_reference"`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import WsiDetectError

METHODS = ("none", "macenko", "reinhard")

# Ruifrok & Johnston (2001) optical-density vectors, as in skimage.color.rgb_from_hed:
# haematoxylin, eosin, and a third (DAB) direction that completes the basis.
RUIFROK_HED = np.array([[0.65, 0.70, 0.29],
                        [0.07, 0.99, 0.11],
                        [0.27, 0.57, 0.78]])
RUIFROK_HED = RUIFROK_HED / np.linalg.norm(RUIFROK_HED, axis=1, keepdims=True)

# Optical density of each uint8 value: OD = −ln((v + 1) / 256), as in augment.stain_jitter.
_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
_OD_BETA = 0.15  # Macenko's "transparent" cut: pixels with any channel OD below are glass

# Reinhard's RGB → LMS and log-LMS → lαβ (Reinhard et al. 2001, eqs. 1–4).
_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402],
                     [0.1967, 0.7244, 0.0782],
                     [0.0241, 0.1288, 0.8444]])
_LMS2LAB = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64)
_LMS2RGB = np.linalg.inv(_RGB2LMS)
_LAB2LMS = np.linalg.inv(_LMS2LAB)

FIT_TARGET_MPP = 2.0  # µm/px of the level the slide statistics are fitted on
FIT_MAX_LEVEL_PX = 1 << 24  # a level larger than this is never read whole for the fit
FIT_MAX_PIXELS = 1 << 20  # tissue pixels used for a fit (a seeded random subset)


def macenko_stain_matrix(rgb: np.ndarray, beta: float = _OD_BETA, alpha: float = 1.0
                         ) -> np.ndarray | None:
    """Macenko et al. (2009) H&E optical-density vectors of an image or of (N, 3)
    pixels (3×3, rows H, E, residual), or None when there is too little stained tissue
    to estimate them."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / 256.0)
    od = od[np.all(od > beta, axis=1)]
    if len(od) < 100:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors span the stain plane
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([math.cos(lo), math.sin(lo)])
    v2 = plane @ np.array([math.cos(hi), math.sin(hi)])
    v1 *= np.sign(v1.sum()) or 1.0
    v2 *= np.sign(v2.sum()) or 1.0
    # Haematoxylin is the bluer one (larger red-channel OD).
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    third = np.cross(h, e)
    if np.linalg.norm(third) < 1e-6:
        return None
    third = np.abs(third)
    m = np.stack([h, e, third])
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8/float RGB → Reinhard lαβ (float32)."""
    lms = np.asarray(rgb, np.float32) @ _RGB2LMS.T.astype(np.float32)
    return np.log10(np.maximum(lms, 1.0)) @ _LMS2LAB.T.astype(np.float32)


def fit_stats(pixels: np.ndarray, method: str) -> dict[str, Any] | None:
    """The statistics of `method` of (N, 3) uint8 tissue pixels (JSON-ready), or None
    when they cannot be estimated (too little stained tissue)."""
    pixels = np.asarray(pixels, np.uint8).reshape(-1, 3)
    if method == "macenko":
        m = macenko_stain_matrix(pixels)
        if m is None:
            return None
        od = _OD_LUT[pixels]
        od = od[np.all(od > _OD_BETA, axis=1)]
        conc = od @ np.linalg.inv(m).astype(np.float32)
        max_conc = np.percentile(conc[:, :2], 99, axis=0)
        if not np.all(max_conc > 1e-3):
            return None
        return {"matrix": m.round(6).tolist(),
                "max_concentrations": max_conc.astype(float).round(6).tolist()}
    if method == "reinhard":
        if len(pixels) < 100:
            return None
        lab = _lab(pixels)
        return {"mean": lab.mean(axis=0).astype(float).round(6).tolist(),
                "std": np.maximum(lab.std(axis=0), 1e-4).astype(float).round(6).tolist()}
    raise WsiDetectError(f"stain normalisation must be one of {', '.join(METHODS)}, "
                         f"got {method!r}")


@dataclass(frozen=True)
class StainNormaliser:
    """A per-pixel colour map (uint8 RGB → uint8 RGB) from a slide's fitted statistics
    (`source`) to the model's reference (`target`), both from `fit_stats`."""

    method: str
    source: dict[str, Any]
    target: dict[str, Any]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        shape = rgb.shape
        px = np.ascontiguousarray(rgb[..., :3]).reshape(-1, 3)
        if self.method == "macenko":
            src = np.asarray(self.source["matrix"], np.float64)
            ref = np.asarray(self.target["matrix"], np.float64)
            gain = (np.asarray(self.target["max_concentrations"], np.float64)
                    / np.asarray(self.source["max_concentrations"], np.float64))
            # unmix with the slide's vectors, rescale H and E, remix with the reference's:
            # one 3×3 matrix on optical density (the residual channel is kept as is)
            m = (np.linalg.inv(src) @ np.diag([gain[0], gain[1], 1.0]) @ ref).astype(np.float32)
            out = 256.0 * np.exp(-(_OD_LUT[px] @ m)) - 1.0
        elif self.method == "reinhard":
            mu_s, sd_s = (np.asarray(self.source[k], np.float32) for k in ("mean", "std"))
            mu_t, sd_t = (np.asarray(self.target[k], np.float32) for k in ("mean", "std"))
            lab = (_lab(px) - mu_s) * (sd_t / sd_s) + mu_t
            lms = np.power(np.float32(10.0), lab @ _LAB2LMS.T.astype(np.float32))
            out = lms @ _LMS2RGB.T.astype(np.float32)
        else:
            raise WsiDetectError(f"no stain normaliser for method {self.method!r}")
        res = np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(*shape[:-1], 3)
        if shape[-1] > 3:  # an alpha channel (RGBA reads) passes through
            res = np.concatenate([res, rgb[..., 3:]], axis=-1)
        return res

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "slide": self.source, "reference": self.target}


def _fit_level(slide: Any) -> int:
    """The pyramid level nearest FIT_TARGET_MPP µm/px that is small enough to read whole
    (the smallest level when none is)."""
    mpp0 = float(getattr(slide, "mpp", None) or 0.25)
    w0 = slide.levels[0].shape[1]
    best, best_err = len(slide.levels) - 1, math.inf
    for i, lv in enumerate(slide.levels):
        h, w = lv.shape[:2]
        if h * w > FIT_MAX_LEVEL_PX:
            continue
        err = abs(math.log(mpp0 * w0 / w / FIT_TARGET_MPP))
        if err < best_err:
            best, best_err = i, err
    return best


def tissue_pixels(slide: Any, tissue: Any = None, seed: int = 0) -> np.ndarray:
    """(N, 3) uint8 pixels of `slide`'s tissue on its fit level (all pixels when
    `tissue` is None; Macenko's OD cut drops the glass anyway), at most FIT_MAX_PIXELS."""
    level = _fit_level(slide)
    h, w = slide.levels[level].shape[:2]
    rgb = np.asarray(slide.read_region(level, 0, 0, w, h))[..., :3]
    if tissue is not None and hasattr(tissue, "mask"):
        mask = np.asarray(tissue.mask, bool)
        h0, w0 = slide.levels[0].shape[:2]
        d = float(tissue.downsample)  # level-0 px per mask px
        rows = np.minimum(((np.arange(h) + 0.5) * (h0 / h) / d).astype(int), mask.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * (w0 / w) / d).astype(int), mask.shape[1] - 1)
        keep = mask[rows[:, None], cols[None, :]]
        px = rgb[keep] if keep.any() else rgb.reshape(-1, 3)
    else:
        px = rgb.reshape(-1, 3)
    if len(px) > FIT_MAX_PIXELS:
        px = px[np.random.default_rng(seed).choice(len(px), FIT_MAX_PIXELS, replace=False)]
    return np.ascontiguousarray(px)


def fit_slide(slide: Any, tissue: Any, method: str, reference: dict[str, Any] | None
              ) -> StainNormaliser | None:
    """The normaliser of `slide` towards a model's `reference` (its JSON's
    "stain_reference"), or None for method "none". WsiDetectError when the model has no
    reference for `method` or the slide's stain cannot be estimated."""
    if method == "none":
        return None
    if method not in METHODS:
        raise WsiDetectError(f"stain normalisation must be one of {', '.join(METHODS)}, "
                             f"got {method!r}")
    target = (reference or {}).get(method)
    if not target:
        raise WsiDetectError(
            f"the model has no {method} stain reference (\"stain_reference\" in its JSON): "
            "use stain_normalisation none, or a model trained with one")
    source = fit_stats(tissue_pixels(slide, tissue), method)
    if source is None:
        raise WsiDetectError(f"too little stained tissue to estimate the slide's stain "
                             f"({method}); run with stain_normalisation none")
    return StainNormaliser(method, source, target)


def fit_reference(slides: list[Any], tissues: list[Any] | None = None) -> dict[str, Any]:
    """A model's "stain_reference": every method's statistics over the pooled tissue
    pixels of `slides` (opened slides; their tissue masks or None)."""
    tissues = tissues or [None] * len(slides)
    px = np.concatenate([tissue_pixels(s, t, seed=i)
                         for i, (s, t) in enumerate(zip(slides, tissues, strict=True))])
    if len(px) > FIT_MAX_PIXELS:
        px = px[np.random.default_rng(0).choice(len(px), FIT_MAX_PIXELS, replace=False)]
    ref: dict[str, Any] = {"fit_target_mpp": FIT_TARGET_MPP}
    for method in METHODS[1:]:
        stats = fit_stats(px, method)
        if stats is not None:
            ref[method] = stats
    return ref


__all__ = ["METHODS", "RUIFROK_HED", "StainNormaliser", "fit_reference", "fit_slide",
           "fit_stats", "macenko_stain_matrix", "tissue_pixels"]
