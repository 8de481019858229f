"""Reading training patches at the model's resolution, and making batches of them.

A model is trained at one mpp (0.243 µm/px for Camelyon16 level 0). A slide scanned at
another mpp is resampled: `d = model_mpp / slide_mpp` level-0 pixels per model pixel
(docs/architecture.md), so a patch of `size` model pixels covers `size·d` level-0 pixels.
We read that region from the coarsest level whose downsample is ≤ d (never upsampling
more than necessary) and resize it to `size × size`. When the slide already is at the
model's mpp the read is direct, with no resampling at all.

`PatchBatchSource` is what the prefetching producers run: it owns the sampler, opens its
own slide handles (one set per process) and turns a step number into a batch,
deterministically: batch `k` is the same whatever process makes it and whenever.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..engine.plan import snap_downsample
from .augment import AugmentConfig, augment, context_size, crop_centre
from .sampler import PatchSampler

PATCH = 244  # the network's receptive field: one training patch = one output cell


def effective_mpp(slide: object, model_mpp: float) -> float:
    """The slide's mpp, or the model's (with a warning) when the file does not say."""
    mpp = getattr(slide, "mpp", None)
    if not mpp or not math.isfinite(mpp) or mpp <= 0:
        warnings.warn(
            f"{getattr(slide, 'path', 'slide')}: no pixel size (mpp) in the file; assuming the "
            f"model's {model_mpp} µm/px. Patches will be at the wrong scale if that is wrong.",
            stacklevel=2,
        )
        return float(model_mpp)
    return float(mpp)


def read_patch(slide: object, cx: float, cy: float, size: int, model_mpp: float,
               slide_mpp: float | None = None) -> np.ndarray:
    """The (size, size, 3) uint8 RGB patch of `size` model pixels centred on level-0 point
    (cx, cy), resampled from the slide's mpp to `model_mpp`.

    Pixel i of the patch has its centre at level-0 `c − size·d/2 + (i + 0.5)·d`.
    """
    mpp = slide_mpp if slide_mpp else effective_mpp(slide, model_mpp)
    # The same level-0-per-model-pixel ratio the engine uses at inference (snapped to a
    # whole ratio within 5 %), so training patches have the scale the model will see.
    d = snap_downsample(model_mpp / mpp)
    side0 = size * d  # level-0 pixels covered
    x0 = cx - side0 / 2.0
    y0 = cy - side0 / 2.0
    level = slide.best_level_for_downsample(d)
    ds = float(slide.levels[level].downsample)
    scale = d / ds  # level pixels per model pixel
    if abs(scale - 1.0) * size < 0.5:
        # Same resolution (up to half a pixel over the whole patch): a plain read.
        return np.ascontiguousarray(
            slide.read_region(level, int(round(x0)), int(round(y0)), size, size)[..., :3]
        )
    xi = math.floor(x0)
    yi = math.floor(y0)
    # Sub-pixel offset of the patch in the level read, and the read's size (+1 for the
    # interpolation support on the far edge).
    bx = (x0 - xi) / ds
    by = (y0 - yi) / ds
    wl = int(math.ceil(bx + size * scale)) + 1
    hl = int(math.ceil(by + size * scale)) + 1
    region = slide.read_region(level, xi, yi, wl, hl)[..., :3]
    img = Image.fromarray(np.ascontiguousarray(region))
    # PIL's resize is antialiased when shrinking and takes a float box: exact geometry.
    out = img.resize((size, size), Image.Resampling.BILINEAR,
                     box=(bx, by, bx + size * scale, by + size * scale))
    return np.asarray(out, dtype=np.uint8)


@dataclass
class PatchBatchSource:
    """Makes batch `step` = `batch_size` augmented patches + labels, deterministically.

    Picklable (only paths, arrays and configs): each prefetching producer process gets a
    copy and calls `open()` there, so every process has its own slide handles.
    """

    sampler: PatchSampler
    batch_size: int
    seed: int
    model_mpp: float = 0.243
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    size: int = PATCH
    _slides: dict = field(default_factory=dict, init=False, repr=False)

    def open(self) -> None:
        self._slides = {}

    def _slide(self, index: int) -> object:
        slide = self._slides.get(index)
        if slide is None:
            from ..slide import open_slide

            slide = open_slide(self.sampler.slides[index].path)
            self._slides[index] = slide
        return slide

    def close(self) -> None:
        for slide in self._slides.values():
            try:
                slide.close()
            except Exception:  # noqa: BLE001 - closing is best effort at shutdown
                pass
        self._slides = {}

    def read_one(self, slide_index: int, x: float, y: float,
                 rng: np.random.Generator | None) -> np.ndarray:
        slide = self._slide(slide_index)
        mpp = self.sampler.slides[slide_index].mpp or None
        if self.augment is None or rng is None:
            return read_patch(slide, x, y, self.size, self.model_mpp, mpp)
        big = read_patch(slide, x, y, context_size(self.augment, self.size),
                         self.model_mpp, mpp)
        return augment(big, rng, self.augment, self.size)

    def make_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(images (B, size, size, 3) uint8, labels (B,) int64) for training step `step`."""
        rng = np.random.default_rng([self.seed, int(step)])
        specs = self.sampler.draw(rng, self.batch_size)
        images = np.empty((len(specs), self.size, self.size, 3), np.uint8)
        labels = np.empty(len(specs), np.int64)
        for i, spec in enumerate(specs):
            images[i] = self.read_one(spec.slide, spec.x, spec.y, rng)
            labels[i] = spec.label
        return images, labels


def read_fixed_set(source: PatchBatchSource, n: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`n` unaugmented patches drawn with their own seed: a held-out validation set."""
    rng = np.random.default_rng([seed, 7_777_777])
    specs = source.sampler.draw(rng, n)
    images = np.empty((len(specs), source.size, source.size, 3), np.uint8)
    labels = np.empty(len(specs), np.int64)
    source.open()
    try:
        for i, spec in enumerate(specs):
            images[i] = source.read_one(spec.slide, spec.x, spec.y, None)
            labels[i] = spec.label
    finally:
        source.close()
    return images, labels


__all__ = ["PATCH", "PatchBatchSource", "crop_centre", "effective_mpp", "read_fixed_set",
           "read_patch"]
