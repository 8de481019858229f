"""Training data for H2G-Net (METHODS §3): hierarchical patch sampling and the patch /
refinement batch sources the prefetching producers run. numpy + PIL only (no torch).

Candidates. For each slide, once, in the main process: the tissue mask (slide/tissue.py)
and the tumour truth rasterised on the same grid are box-filtered over one patch
(`patch` model px = `patch·d` level-0 px), giving per grid cell the tissue and tumour
fractions of the patch centred there. Patch labels follow the paper: tumour if more than
25 % of the patch is tumour, non-tumour if none of it is, patches in between are never
drawn; both classes need more than 25 % tissue.

Sampling is uniform at each level: group → slide (of that group) → class (of those the
slide has) → patch (a cell of that class, a point uniformly inside it). The paper's
groups are histological grades; here a group is any label of a slide (default: its
folder, e.g. the scan resolution or phantom family), so one group with many slides does
not drown another.

Patches are read straight from the slides (no patch files), as the metastasis trainer
does (training/patches.py `read_patch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import EmptyTissueError, WsiDetectError

TUMOUR_MIN_FRACTION = 0.25  # "> 25 % tumour" = tumour patch
TISSUE_MIN_FRACTION = 0.25  # "> 25 % tissue"
CLASSES = ("non-tumour", "tumour")


@dataclass
class TumourSlide:
    """Candidate patch centres of one slide: flat indices into a `grid_shape` grid of
    `cell` level-0 px cells, per class (0 = non-tumour, 1 = tumour)."""

    path: str
    group: str
    mpp: float | None
    size: tuple[int, int]  # level-0 (width, height)
    cell: float
    grid_shape: tuple[int, int]
    candidates: tuple[np.ndarray, np.ndarray] = field(default=(np.zeros(0, np.int64),) * 2)
    annotation: str | None = None

    def classes(self) -> list[int]:
        return [k for k in (0, 1) if len(self.candidates[k])]


def patch_fractions(tissue: np.ndarray, tumour: np.ndarray, patch_cells: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(tissue, tumour) fraction of the patch of side `patch_cells` grid cells centred on
    each cell (outside the grid = no tissue, no tumour)."""
    from scipy import ndimage as ndi

    size = max(1, int(round(patch_cells)))
    f = lambda m: ndi.uniform_filter(m.astype(np.float32), size=size, mode="constant")  # noqa: E731
    return f(tissue), f(tumour)


def candidates_from_fractions(tissue_frac: np.ndarray, tumour_frac: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Flat cell indices of (non-tumour, tumour) patches by the paper's rule."""
    eps = 1e-6
    has_tissue = tissue_frac > TISSUE_MIN_FRACTION
    tumour = np.flatnonzero(has_tissue & (tumour_frac > TUMOUR_MIN_FRACTION))
    normal = np.flatnonzero(has_tissue & (tumour_frac <= eps))
    return normal.astype(np.int64), tumour.astype(np.int64)


def build_tumour_slide(path: str | Path, annotation: str | Path | None, group: str,
                       patch: int, model_mpp: float) -> TumourSlide:
    """Open a slide, compute its tissue mask and truth raster, and its candidates."""
    from ..engine.plan import snap_downsample
    from ..slide import open_slide
    from ..slide.tissue import compute_tissue_mask
    from .patches import effective_mpp
    from .truth import load_truth

    with open_slide(path) as slide:
        tissue = compute_tissue_mask(slide)
        mpp = effective_mpp(slide, model_mpp)
        size = slide.dimensions
    ds = float(tissue.downsample)
    truth = load_truth(annotation, size)
    mask = tissue.mask.astype(bool)
    tum = (truth.raster(ds, mask.shape) if not truth.is_empty
           else np.zeros(mask.shape, bool))
    d = snap_downsample(model_mpp / mpp)
    t_frac, u_frac = patch_fractions(mask | tum, tum, patch * d / ds)
    normal, tumour = candidates_from_fractions(t_frac, u_frac)
    if len(normal) + len(tumour) == 0:
        raise EmptyTissueError(f"{path}: no patch with > 25 % tissue; leave this slide out")
    return TumourSlide(str(path), group, mpp, (int(size[0]), int(size[1])), ds, mask.shape,
                       (normal, tumour), str(annotation) if annotation else None)


@dataclass(frozen=True)
class PatchDraw:
    slide: int
    x: float  # level-0 centre
    y: float
    label: int


class HierarchicalSampler:
    """Group → slide → class → patch, uniform at each level (module docstring)."""

    def __init__(self, slides: list[TumourSlide]) -> None:
        slides = [s for s in slides if s.classes()]
        if not slides:
            raise WsiDetectError("no training slide has a patch of either class")
        self.slides = slides
        self.groups = sorted({s.group for s in slides})
        self.by_group = {g: [i for i, s in enumerate(slides) if s.group == g]
                         for g in self.groups}

    def draw(self, rng: np.random.Generator, n: int) -> list[PatchDraw]:
        out = []
        for _ in range(n):
            group = self.groups[int(rng.integers(len(self.groups)))]
            members = self.by_group[group]
            si = members[int(rng.integers(len(members)))]
            s = self.slides[si]
            classes = s.classes()
            label = classes[int(rng.integers(len(classes)))]
            pool = s.candidates[label]
            flat = int(pool[int(rng.integers(len(pool)))])
            r, c = divmod(flat, s.grid_shape[1])
            dx, dy = rng.uniform(0.0, 1.0, 2)
            out.append(PatchDraw(si, (c + dx) * s.cell, (r + dy) * s.cell, label))
        return out

    def summary(self) -> dict:
        return {"groups": {g: len(v) for g, v in self.by_group.items()},
                "candidates": {CLASSES[k]: int(sum(len(s.candidates[k]) for s in self.slides))
                               for k in (0, 1)}}


@dataclass
class PatchAugment:
    """The paper's stage-1 augmentation (strengths; 0 / False switches one off)."""

    flip: bool = True
    rotate90: bool = True
    hsv_shift: float = 20.0  # ± on PIL's 0-255 H, S and V
    brightness: float = 0.2  # × [1 − b, 1 + b]


def augment_patch(img: np.ndarray, rng: np.random.Generator, cfg: PatchAugment
                  ) -> np.ndarray:
    """Flips, 90° rotations, HSV shift, brightness; parameters always drawn in the same
    order so a patch is a pure function of (input, generator state)."""
    k90 = int(rng.integers(4))
    fh, fv = (rng.random(2) < 0.5).tolist()
    shift = rng.uniform(-1.0, 1.0, 3) * cfg.hsv_shift
    bright = 1.0 + float(rng.uniform(-1.0, 1.0)) * cfg.brightness
    if cfg.rotate90 and k90:
        img = np.rot90(img, k90)
    if cfg.flip and fh:
        img = img[:, ::-1]
    if cfg.flip and fv:
        img = img[::-1]
    img = np.ascontiguousarray(img)
    if cfg.hsv_shift:
        hsv = np.asarray(Image.fromarray(img).convert("HSV")).astype(np.float32)
        hsv[..., 0] = np.mod(hsv[..., 0] + shift[0], 256.0)  # hue wraps round
        hsv[..., 1:] = np.clip(hsv[..., 1:] + shift[1:], 0, 255)
        img = np.asarray(Image.fromarray(hsv.round().astype(np.uint8), "HSV").convert("RGB"))
    if cfg.brightness:
        img = np.clip(img.astype(np.float32) * bright, 0, 255).round().astype(np.uint8)
    return img


class TumourPatchSource:
    """Batches of (B, P, P, 3) uint8 patches and (B,) int64 labels; batch k is a pure
    function of (seed, k). Picklable; slides open in the producer (`open`)."""

    def __init__(self, sampler: HierarchicalSampler, batch_size: int, seed: int,
                 patch: int, model_mpp: float, augment: PatchAugment | None) -> None:
        self.sampler, self.batch_size, self.seed = sampler, int(batch_size), int(seed)
        self.patch, self.model_mpp, self.augment = int(patch), float(model_mpp), augment
        self._slides: dict[int, object] = {}

    def open(self) -> None:
        self._slides = {}

    def _slide(self, i: int) -> object:
        if i not in self._slides:
            from ..slide import open_slide

            self._slides[i] = open_slide(self.sampler.slides[i].path)
        return self._slides[i]

    def close(self) -> None:
        for s in self._slides.values():
            s.close()
        self._slides = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_slides"} | {"_slides": {}}

    def make_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        from .patches import read_patch

        rng = np.random.default_rng([self.seed, int(step), 7])
        draws = self.sampler.draw(rng, self.batch_size)
        imgs, labels = [], []
        for d in draws:
            s = self.sampler.slides[d.slide]
            img = read_patch(self._slide(d.slide), d.x, d.y, self.patch, self.model_mpp,
                             s.mpp)
            if self.augment is not None:
                img = augment_patch(img, rng, self.augment)
            imgs.append(img)
            labels.append(d.label)
        return np.stack(imgs), np.asarray(labels, np.int64)


# -- refinement (stage 2) ----------------------------------------------------------------


@dataclass
class RefineAugment:
    """The paper's refinement augmentation: flips, 90° rotations, zoom, Macenko stain."""

    flip: bool = True
    rotate90: bool = True
    zoom: float = 0.25  # crop side in [1 − z, 1] of the image, resized back
    stain_sigma: float = 0.1  # H, E concentrations × [1 − σ, 1 + σ] (Macenko vectors)
    stain_bias: float = 0.05
    # The stage-1 maps of training slides come from a model that saw those slides, so
    # they are cleaner than on new ones: h ** γ, γ in [1/(1+g), 1+g], makes the U-Net
    # read the map's shape rather than trust its level (not in the paper).
    heat_gamma: float = 1.0


class RefineBatchSource:
    """Batches for the U-Net from precomputed inputs: `inputs` (n, 4, S, S) float16
    (RGB in [0, 1] + the stage-1 heatmap), `truths` (n, S, S) uint8; each sample is
    augmented and cropped to `crop`² (the U-Net is fully convolutional, so it trains on
    crops and runs on the whole S²). `groups` steer the draw: group → slide, uniform."""

    def __init__(self, inputs_path: str, truths_path: str, groups: list[str],
                 batch_size: int, crop: int, seed: int, augment: RefineAugment | None
                 ) -> None:
        self.inputs_path, self.truths_path = inputs_path, truths_path
        self.groups, self.batch_size, self.crop = list(groups), int(batch_size), int(crop)
        self.seed, self.augment = int(seed), augment
        self._x = self._y = None

    def open(self) -> None:
        self._x = np.load(self.inputs_path, mmap_mode="r")
        self._y = np.load(self.truths_path, mmap_mode="r")

    def close(self) -> None:
        self._x = self._y = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_x", "_y")} | {
            "_x": None, "_y": None}

    def make_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if self._x is None:
            self.open()
        rng = np.random.default_rng([self.seed, int(step), 11])
        names = sorted(set(self.groups))
        xs, ys = [], []
        for _ in range(self.batch_size):
            g = names[int(rng.integers(len(names)))]
            members = [i for i, n in enumerate(self.groups) if n == g]
            i = members[int(rng.integers(len(members)))]
            x, y = augment_refine(np.asarray(self._x[i], np.float32),
                                  np.asarray(self._y[i], np.float32), rng, self.augment,
                                  self.crop)
            xs.append(x)
            ys.append(y)
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def augment_refine(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                   cfg: RefineAugment | None, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(4, S, S) input and (S, S) truth → augmented (4, crop, crop), (crop, crop)."""
    from .augment import RUIFROK_HED, macenko_stain_matrix, stain_jitter

    s = x.shape[-1]
    k90 = int(rng.integers(4))
    fh, fv = (rng.random(2) < 0.5).tolist()
    zoom = 1.0 - float(rng.uniform(0.0, 1.0)) * (cfg.zoom if cfg else 0.0)
    alpha = 1.0 + rng.uniform(-1, 1, 2) * (cfg.stain_sigma if cfg else 0.0)
    bias = rng.uniform(-1, 1, 2) * (cfg.stain_bias if cfg else 0.0)
    g = cfg.heat_gamma if cfg else 0.0
    gamma = float(np.exp(rng.uniform(-1.0, 1.0) * np.log1p(g)))
    side = max(crop, int(round(s * zoom)))
    top, left = (int(rng.integers(s - side + 1)) for _ in range(2))
    x = x[:, top:top + side, left:left + side]
    y = y[top:top + side, left:left + side]
    if side != s:  # zoom: the crop resized back to the full side
        x = np.stack([_resize(c, s) for c in x])
        y = _resize(y, s)
    if cfg is not None and (cfg.stain_sigma or cfg.stain_bias):
        rgb = np.clip(x[:3].transpose(1, 2, 0) * 255.0, 0, 255)
        matrix = macenko_stain_matrix(rgb[::4, ::4].astype(np.uint8))
        rgb = stain_jitter(rgb, alpha, bias, RUIFROK_HED if matrix is None else matrix)
        x = np.concatenate([np.clip(rgb / 255.0, 0, 1).transpose(2, 0, 1), x[3:]], 0)
    if gamma != 1.0:
        x = np.concatenate([x[:3], np.clip(x[3:], 0.0, 1.0) ** gamma], 0)
    if cfg is not None and cfg.rotate90 and k90:
        x, y = np.rot90(x, k90, axes=(1, 2)), np.rot90(y, k90)
    if cfg is not None and cfg.flip and fh:
        x, y = x[:, :, ::-1], y[:, ::-1]
    if cfg is not None and cfg.flip and fv:
        x, y = x[:, ::-1], y[::-1]
    top, left = (int(rng.integers(s - crop + 1)) for _ in range(2))
    x = x[:, top:top + crop, left:left + crop]
    y = y[top:top + crop, left:left + crop]
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y > 0.5, np.float32)


def _resize(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(a, np.float32), "F").resize(
        (side, side), Image.Resampling.BILINEAR))


__all__ = ["CLASSES", "HierarchicalSampler", "PatchAugment", "PatchDraw", "RefineAugment",
           "RefineBatchSource", "TumourPatchSource", "TumourSlide", "augment_patch",
           "augment_refine", "build_tumour_slide", "candidates_from_fractions",
           "patch_fractions"]
