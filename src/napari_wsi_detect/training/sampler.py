"""Where training patches come from: candidate centres precomputed from masks.

For each slide we compute once, in the main process, the cells of its tissue mask that
are tissue, split into tumour and normal by the rasterised annotation
(`SlideCandidates`). Drawing a patch is then pure arithmetic (`PatchSampler.draw`):
pick a class with the configured probability (METHODS §1 (5): "classes drawn with set
probabilities", e.g. 0.5 / 0.5), a slide uniformly among those that have that class (so one
huge slide does not drown the others), a cell uniformly, and a point uniformly inside the
cell. The label is then decided exactly: tumour iff the patch centre lies inside a tumour
polygon (shapely point-in-polygon), so the raster only steers sampling, never labels.

Hard negatives (stage 2) are a third class, `hard`: exact level-0 points where the
stage-1 model fired on normal tissue (`hard_negatives.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EmptyTissueError, WsiDetectError
from .truth import TumourTruth

CLASSES = ("normal", "tumour", "hard")
DEFAULT_CLASS_PROBS = {"normal": 0.5, "tumour": 0.5}


@dataclass
class SlideCandidates:
    """Candidate patch centres of one slide.

    `tumour` / `normal` are flat indices into a `grid_shape` grid of `cell` level-0 px
    cells (int64: 8 bytes per tissue cell, bounded for any slide); `hard` holds exact
    level-0 (x, y) points.
    """

    path: str
    mpp: float | None
    size: tuple[int, int]  # level-0 (width, height)
    cell: float
    grid_shape: tuple[int, int]
    truth: TumourTruth
    tumour: np.ndarray
    normal: np.ndarray
    hard: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))

    def count(self, kind: str) -> int:
        return int(len(getattr(self, kind)))

    def cell_centres(self, flat: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) centres of cells given by flat index: (n, 2) float64."""
        rows, cols = np.divmod(np.asarray(flat, np.int64), self.grid_shape[1])
        return np.stack([(cols + 0.5) * self.cell, (rows + 0.5) * self.cell], axis=1)


def candidates_from_masks(path: str, mpp: float | None, size: tuple[int, int],
                          tissue: np.ndarray, downsample: float, truth: TumourTruth
                          ) -> SlideCandidates:
    """Split the tissue cells of a (h, w) tissue mask at `downsample` into tumour and
    normal candidate cells."""
    tissue = np.asarray(tissue, bool)
    tumour_cells = truth.raster(downsample, tissue.shape) if not truth.is_empty else None
    if tumour_cells is None:
        tumour_flat = np.zeros(0, np.int64)
        normal_flat = np.flatnonzero(tissue)
    else:
        tumour_flat = np.flatnonzero(tissue & tumour_cells)
        if tumour_flat.size == 0:
            # A pale or tiny lesion Otsu missed: the pathologist's outline says it is
            # tissue, so trust the outline rather than lose the slide's only tumour.
            tumour_flat = np.flatnonzero(tumour_cells)
        normal_flat = np.flatnonzero(tissue & ~tumour_cells)
    return SlideCandidates(
        path=str(path), mpp=mpp, size=(int(size[0]), int(size[1])), cell=float(downsample),
        grid_shape=tissue.shape, truth=truth,
        tumour=tumour_flat.astype(np.int64), normal=normal_flat.astype(np.int64),
    )


def build_candidates(slide_path: str | Path, truth: TumourTruth) -> SlideCandidates:
    """Open a slide, compute its tissue mask and split it into candidate cells."""
    from ..slide import open_slide
    from ..slide.tissue import compute_tissue_mask

    with open_slide(slide_path) as slide:
        tissue = compute_tissue_mask(slide)
        cands = candidates_from_masks(
            str(slide_path), slide.mpp, slide.dimensions, tissue.mask,
            float(tissue.downsample), truth,
        )
    if cands.count("normal") + cands.count("tumour") == 0:
        raise EmptyTissueError(
            f"{slide_path}: the tissue mask found no tissue, so no training patch can be "
            "drawn from it; check the slide or leave it out"
        )
    return cands


@dataclass(frozen=True)
class PatchSpec:
    """One patch to read: slide index, level-0 centre, exact label, the class drawn."""

    slide: int
    x: float
    y: float
    label: int
    kind: str


class PatchSampler:
    """Draws patch centres with set class probabilities from precomputed candidates."""

    def __init__(self, slides: list[SlideCandidates],
                 class_probs: dict[str, float] | None = None, jitter: bool = True) -> None:
        if not slides:
            raise WsiDetectError("no training slides were given")
        self.slides = list(slides)
        self.jitter = jitter
        probs = dict(DEFAULT_CLASS_PROBS if class_probs is None else class_probs)
        unknown = set(probs) - set(CLASSES)
        if unknown:
            raise WsiDetectError(f"unknown patch classes {sorted(unknown)}; use {CLASSES}")
        # Classes nobody has (no tumour annotated anywhere, no hard negatives mined yet)
        # drop out and the others are renormalised.
        self.available = {k: [i for i, s in enumerate(self.slides) if s.count(k) > 0]
                          for k in CLASSES}
        kept = {k: float(p) for k, p in probs.items() if p > 0 and self.available[k]}
        if not kept:
            raise WsiDetectError(
                "none of the requested patch classes has candidates on these slides "
                f"(asked for {probs}); are the tumour annotations and tissue masks right?"
            )
        total = sum(kept.values())
        self.class_probs = {k: v / total for k, v in kept.items()}
        self.missing = sorted(k for k, p in probs.items() if p > 0 and k not in kept)
        self._kinds = list(self.class_probs)
        self._p = np.array([self.class_probs[k] for k in self._kinds])

    def with_hard_negatives(self, hard: dict[int, np.ndarray],
                            class_probs: dict[str, float]) -> PatchSampler:
        """A new sampler whose slides also carry hard-negative points."""
        slides = []
        for i, s in enumerate(self.slides):
            pts = np.asarray(hard.get(i, np.zeros((0, 2))), np.float32).reshape(-1, 2)
            slides.append(SlideCandidates(
                path=s.path, mpp=s.mpp, size=s.size, cell=s.cell, grid_shape=s.grid_shape,
                truth=s.truth, tumour=s.tumour, normal=s.normal, hard=pts,
            ))
        return PatchSampler(slides, class_probs, self.jitter)

    def _point(self, rng: np.random.Generator, kind: str) -> tuple[int, float, float]:
        slides = self.available[kind]
        si = slides[int(rng.integers(len(slides)))]
        s = self.slides[si]
        pool = getattr(s, kind)
        j = int(rng.integers(len(pool)))
        if kind == "hard":
            x, y = float(pool[j, 0]), float(pool[j, 1])
            return si, x, y
        (x, y), = s.cell_centres(pool[j:j + 1])
        if self.jitter:
            # Uniform inside the cell: sampling covers tissue continuously, not on a grid.
            dx, dy = rng.uniform(-0.5, 0.5, 2) * s.cell
            xj, yj = x + dx, y + dy
            # Keep the class drawn when the jittered point crossed a tumour border (the
            # label stays exact either way; this only protects the class balance).
            if bool(s.truth.contains(xj, yj)) == (kind == "tumour"):
                x, y = xj, yj
        return si, float(x), float(y)

    def draw(self, rng: np.random.Generator, n: int) -> list[PatchSpec]:
        kinds = rng.choice(len(self._kinds), size=n, p=self._p)
        specs = []
        for k in kinds:
            kind = self._kinds[int(k)]
            si, x, y = self._point(rng, kind)
            label = int(bool(self.slides[si].truth.contains(x, y)))
            specs.append(PatchSpec(si, x, y, label, kind))
        return specs

    def summary(self) -> dict:
        return {
            "slides": len(self.slides),
            "class_probs": self.class_probs,
            "missing_classes": self.missing,
            "candidates": {k: int(sum(s.count(k) for s in self.slides)) for k in CLASSES},
        }
