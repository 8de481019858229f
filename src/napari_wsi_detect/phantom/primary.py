"""Primary-tumour-like regions for phantom slides (tumour segmentation truth).

A metastasis in `layout` is a smooth star-shaped nodule; a primary carcinoma seen on a
section is one or a few large (several mm), lobulated, irregular invasive regions with
ragged borders, finger-like protrusions and islands of stroma inside, which the
pathologist's annotation leaves out as holes. A segmentation model that only ever saw
round nodules would be tested on the easy case, so these regions are built from

* a polar outline with low harmonics (lobes), a falling spectrum of higher harmonics
  (ragged invasive front, down to ~40 µm wavelength) and a few narrow bumps (invasive
  fingers), then bent by a smooth displacement field (so the region is not star-shaped);
* 2–8 holes: smooth blobs of stroma kept away from the border and from each other.

Everything is in micrometres through `mpp`; shapely checks validity (a bent outline
that crosses itself is rejected and drawn again). The region is a `layout.Lesion` with
`size_class = "primary"` and `holes`, rendered like a macro-metastasis (nests split by
desmoplastic septa) with its holes drawn as collagenous stroma.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import Polygon

from .geometry import max_feret
from .noise import value_noise

PRIMARY_CLASS = "primary"
# Target share of the tissue the primary regions cover together, and their floor.
AREA_FRACTION = (0.18, 0.5)
MIN_MAJOR_UM = 300.0  # small test slides still get one (smaller) region


def primary_outline(rng: np.random.Generator, cx: float, cy: float, radius_px: float,
                    mpp: float, seed: int) -> np.ndarray:
    """(N, 2) open ring (level-0 px) of one lobulated, ragged region around (cx, cy)."""
    radius_um = radius_px * mpp
    # vertices every ~5 µm of circumference: the level-5 truth (7.8 µm) sees every wiggle
    n = int(np.clip(math.ceil(2 * math.pi * radius_um / 5.0), 256, 6000))
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    r = np.ones(n)
    k = np.arange(2, 8)
    lobes = rng.uniform(0.08, 0.28, k.size) / k**0.9
    r += (lobes[:, None] * np.cos(k[:, None] * t + rng.uniform(0, 2 * np.pi, k.size)[:, None])).sum(0)
    # ragged front: harmonics up to a ~40 µm wavelength, amplitude falling as k^-1.5
    k_max = int(np.clip(2 * math.pi * radius_um / 40.0, 12, 400))
    k = np.arange(8, k_max + 1)
    amp = k.astype(np.float64) ** -1.5
    amp *= rng.uniform(0.025, 0.045) / math.sqrt((amp**2).sum() / 2)  # rms of the ragged part
    phases = rng.uniform(0, 2 * np.pi, k.size)
    for lo in range(0, k.size, 64):  # bounded (64, n) temporaries
        kk = k[lo : lo + 64]
        r += (amp[lo : lo + 64, None] * np.cos(kk[:, None] * t + phases[lo : lo + 64, None])).sum(0)
    # invasive tongues: rounded bumps pushing out of the front
    for _ in range(int(rng.integers(2, 6))):
        centre = rng.uniform(0, 2 * np.pi)
        width = rng.uniform(0.05, 0.14)
        d = np.angle(np.exp(1j * (t - centre)))
        r += rng.uniform(0.08, 0.2) * np.exp(-((d / width) ** 2))
    r = np.maximum(r, 0.35)
    elong = rng.uniform(0.7, 1.0)
    a = rng.uniform(0, np.pi)
    u, v = r * np.cos(t) * radius_px, r * np.sin(t) * radius_px * elong
    x = cx + u * math.cos(a) - v * math.sin(a)
    y = cy + u * math.sin(a) + v * math.cos(a)
    # smooth bend (not star-shaped any more); amplitude well under the wavelength / 2π
    # keeps the displacement's gradient < 1, so the ring rarely crosses itself
    wave = radius_px * rng.uniform(0.7, 1.2)
    bend = 0.13 * wave
    wx = bend * value_noise(x, y, wave, seed + 901)
    wy = bend * value_noise(x, y, wave, seed + 902)
    return np.stack([x + wx, y + wy], 1)


def _blob(rng: np.random.Generator, cx: float, cy: float, radius_px: float) -> np.ndarray:
    n = int(np.clip(math.ceil(2 * math.pi * radius_px / 12.0), 32, 720))
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    k = np.arange(2, 6)
    r = 1.0 + (rng.uniform(0.0, 0.18, k.size)[:, None] / k[:, None]
               * np.cos(k[:, None] * t + rng.uniform(0, 2 * np.pi, k.size)[:, None])).sum(0)
    elong = rng.uniform(0.5, 1.0)
    a = rng.uniform(0, np.pi)
    u, v = r * np.cos(t) * radius_px, r * np.sin(t) * radius_px * elong
    return np.stack([cx + u * math.cos(a) - v * math.sin(a), cy + u * math.sin(a) + v * math.cos(a)], 1)


def primary_holes(rng: np.random.Generator, outline: np.ndarray, mpp: float) -> list[np.ndarray]:
    """Stroma islands inside `outline`: 2–8 blobs, each ≥ 60 µm from the border and
    from the others (so the annotation is a valid polygon with inner rings)."""
    outer = Polygon(outline)
    area_um2 = outer.area * mpp**2
    radius_um = math.sqrt(area_um2 / math.pi)
    margin = 60.0 / mpp
    inner = outer.buffer(-margin)
    holes: list[np.ndarray] = []
    shapes: list[Polygon] = []
    want = int(np.clip(rng.integers(2, 9) * math.sqrt(area_um2 / 4e6), 2, 8))
    x0, y0, x1, y1 = inner.bounds if not inner.is_empty else (0, 0, 0, 0)
    for _ in range(want * 30):
        if len(holes) >= want or inner.is_empty:
            break
        r_px = rng.uniform(0.08, 0.3) * radius_um / mpp
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        ring = _blob(rng, cx, cy, r_px)
        hole = Polygon(ring)
        if not hole.is_valid or not inner.contains(hole):
            continue
        if any(hole.distance(s) < margin for s in shapes):
            continue
        holes.append(ring)
        shapes.append(hole)
    return holes


def valid_region(outline: np.ndarray, holes: list[np.ndarray]) -> bool:
    return bool(Polygon(outline, holes).is_valid)


def region_area_px(outline: np.ndarray, holes: list[np.ndarray]) -> float:
    return float(Polygon(outline, holes).area)


def region_major_axis_px(outline: np.ndarray) -> float:
    """Longest vertex distance, on the convex hull (thousands of ragged vertices)."""
    hull = np.asarray(shapely.convex_hull(shapely.MultiPoint(outline)).exterior.coords)
    return max_feret(hull)


def place_primaries(layout, rng: np.random.Generator, n: int, notes: list[str], grid: dict) -> None:
    """Add `n` primary regions to `layout.lesions` (labels from 1), covering together
    about AREA_FRACTION of the tissue, inside the tissue outline and apart."""
    from .layout import Lesion
    from .placement import lesion_disc

    gx, gy, f, step = grid["x"], grid["y"], grid["f"], grid["step"]
    mpp = layout.mpp
    tissue_um2 = grid["tissue_mm2"] * 1e6
    share = rng.uniform(*AREA_FRACTION) * tissue_um2 / n
    gap = 150.0 / mpp
    for i in range(n):
        placed = [lesion_disc(les) for les in layout.lesions]
        ok = False
        for attempt in range(60):
            radius_um = math.sqrt(share * (1.0 - min(attempt / 40.0, 0.75)) / math.pi)
            if 2 * radius_um < MIN_MAJOR_UM:
                break
            rad = radius_um / mpp
            cand = (f["depth_um"] >= 0.9 * radius_um + 30.0) & (f["node_um"] >= 40.0)
            for px, py, pr in placed:
                cand &= np.hypot(gx - px, gy - py) > 1.4 * rad + pr + gap
            idx = np.nonzero(cand)[0]
            if idx.size == 0:
                continue
            k = idx[rng.integers(idx.size)]
            cx = gx[k] + rng.uniform(-0.5, 0.5) * step
            cy = gy[k] + rng.uniform(-0.5, 0.5) * step
            outline = primary_outline(rng, cx, cy, rad, mpp, layout.seed + 97 * (i + 1))
            if not Polygon(outline).is_valid:
                continue
            if layout.fields(outline[:, 0], outline[:, 1])["depth_um"].min() < 15.0:
                continue
            x0, y0 = outline.min(0)
            x1, y1 = outline.max(0)
            if any(x0 - gap < px + pr and px - pr < x1 + gap and y0 - gap < py + pr and py - pr < y1 + gap
                   for px, py, pr in placed):
                continue
            holes = primary_holes(rng, outline, mpp)
            if not valid_region(outline, holes):
                continue
            layout.lesions.append(Lesion(
                label=len(layout.lesions) + 1, size_class=PRIMARY_CLASS, polygon=outline,
                area_um2=region_area_px(outline, holes) * mpp**2,
                major_axis_um=region_major_axis_px(outline) * mpp, holes=holes,
            ))
            ok = True
            break
        if not ok:
            notes.append(f"no room for primary tumour #{i + 1} on this slide (tissue too small)")
