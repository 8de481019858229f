"""Mitosis probability map -> mitoses (SegMitos post-processing, METHODS §2).

Gaussian smoothing of the map, ONE Otsu threshold for the whole field or slide (the
paper: a per-tile threshold costs 1.5 % F-score), 8-connected blobs above it, a blob kept
when its mean smoothed score > `min_score` (s1) and its area > `min_area_um2` (a1); each
kept blob is one detection at its centroid.

Memory stays bounded by the map itself, whatever the slide size: the map is processed in
bands of rows. Smoothing a band with a margin of the filter's reach gives exactly the
whole-map filter (same truncation, same zero boundary); the Otsu threshold comes from a
histogram accumulated band by band; blobs are labelled in each band extended by a margin
and a blob belongs to the band holding its top row, so no blob is counted twice or cut
unless it is taller than the margin (`BAND_MARGIN` cells, 0.5 mm at 2 µm cells: far beyond
any cell). Cells never computed (NaN: no tissue) count as probability 0 and stay out of
the histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

TRUNCATE = 4.0  # Gaussian reach in σ (scipy's default)
HIST_BINS = 1024  # Otsu histogram over [0, 1]: 0.001 resolution
BAND_ROWS = 512
BAND_MARGIN = 256

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Mitosis:
    """One detected mitotic figure: blob centroid in level-0 px, its mean score, its area."""

    x: float  # level-0 px
    y: float  # level-0 px
    score: float  # mean smoothed mitosis probability over the blob
    area_um2: float

    def to_dict(self) -> dict[str, float]:
        return {"x": round(self.x, 2), "y": round(self.y, 2), "score": round(self.score, 5),
                "area_um2": round(self.area_um2, 2)}


@dataclass(frozen=True)
class BlobResult:
    mitoses: list[Mitosis]
    threshold: float  # the holistic Otsu threshold on the smoothed map
    candidates: int  # blobs above the threshold before the s1 / a1 filters


def sigma_cells(sigma_um: float, cell_um: float) -> float:
    return max(0.0, float(sigma_um) / float(cell_um))


def _reach(sigma: float) -> int:
    return int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0


def _bands(rows: int, band: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, max(rows, 1), band):
        yield r0, min(rows, r0 + band)


def smoothed_band(heatmap: np.ndarray, r0: int, r1: int, sigma: float) -> np.ndarray:
    """Rows [r0, r1) of the Gaussian-smoothed map (NaN as 0, zero outside the map), equal
    to smoothing the whole map and cutting the band out."""
    m = _reach(sigma)
    a, b = max(0, r0 - m), min(heatmap.shape[0], r1 + m)
    block = np.nan_to_num(np.asarray(heatmap[a:b], dtype=np.float32), nan=0.0)
    if sigma > 0:
        block = ndi.gaussian_filter(block, sigma, mode="constant", cval=0.0,
                                    truncate=TRUNCATE)
    return block[r0 - a: r0 - a + (r1 - r0)]


def otsu_from_histogram(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold (maximum between-class variance) of a histogram; the value at
    the upper edge of the last bin of the lower class."""
    counts = np.asarray(counts, dtype=np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    total = counts.sum()
    if total <= 0:
        return 1.0
    w0 = np.cumsum(counts)
    w1 = total - w0
    s0 = np.cumsum(counts * centres)
    mu0 = np.divide(s0, w0, out=np.zeros_like(s0), where=w0 > 0)
    mu1 = np.divide(s0[-1] - s0, w1, out=np.zeros_like(s0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1.0
    k = int(np.argmax(between))
    if between[k] < 0:  # one value only: nothing lies above it
        return float(edges[-1])
    return float(edges[k + 1])


def holistic_otsu(heatmap: np.ndarray, sigma: float, band_rows: int = BAND_ROWS) -> float:
    """One Otsu threshold of the smoothed map over every computed cell, from a histogram
    accumulated band by band."""
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    counts = np.zeros(HIST_BINS, dtype=np.int64)
    for r0, r1 in _bands(heatmap.shape[0], band_rows):
        s = smoothed_band(heatmap, r0, r1, sigma)
        valid = np.isfinite(np.asarray(heatmap[r0:r1]))
        counts += np.histogram(np.clip(s[valid], 0.0, 1.0), bins=edges)[0]
    return otsu_from_histogram(counts, edges)


def find_mitoses(heatmap: np.ndarray, geometry: Any, *, min_score: float,
                 min_area_um2: float, smoothing_um: float,
                 band_rows: int = BAND_ROWS, margin: int = BAND_MARGIN) -> BlobResult:
    """Mitoses of a mitosis-probability map (`geometry`: engine.plan.MapGeometry);
    see the module docstring."""
    heatmap = np.asarray(heatmap)
    rows = heatmap.shape[0]
    cell_um = float(geometry.cell_um)
    cell_area = cell_um * cell_um
    sigma = sigma_cells(smoothing_um, cell_um)
    threshold = holistic_otsu(heatmap, sigma, band_rows)
    found: list[Mitosis] = []
    candidates = 0
    for r0, r1 in _bands(rows, band_rows):
        a, b = max(0, r0 - margin), min(rows, r1 + margin)
        s = smoothed_band(heatmap, a, b, sigma)
        labels, n = ndi.label(s > threshold, structure=_EIGHT)
        if n == 0:
            continue
        slices = ndi.find_objects(labels)
        own = [i + 1 for i, sl in enumerate(slices)
               if sl is not None and r0 <= sl[0].start + a < r1]
        if not own:
            continue
        idx = np.asarray(own)
        area = ndi.sum_labels(np.ones_like(s), labels, idx) * cell_area
        mean = ndi.mean(s, labels, idx)
        centres = ndi.center_of_mass(np.ones_like(s), labels, idx)
        candidates += len(idx)
        for (cr, cc), sc, ar in zip(centres, mean, area, strict=True):
            if sc > min_score and ar > min_area_um2:
                x, y = geometry.cell_to_level0(cr + a, cc)
                found.append(Mitosis(float(x), float(y), float(sc), float(ar)))
    found.sort(key=lambda m: (m.y, m.x))
    return BlobResult(found, threshold, candidates)


def max_score(mitoses: list[Mitosis]) -> float:
    """The highest blob score (NaN when nothing was found)."""
    return max((m.score for m in mitoses), default=math.nan)


__all__ = ["BlobResult", "Mitosis", "find_mitoses", "holistic_otsu", "max_score",
           "otsu_from_histogram", "smoothed_band"]
