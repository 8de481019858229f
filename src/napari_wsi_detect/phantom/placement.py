"""Where the phantom's lesions and figures go: metastasis polygons placed in tissue by
Camelyon16 size class, mitotic figures inside tumour, imposters inside tumour and in
lymphoid tissue (never in a primary tumour's stroma holes). Called by
`layout.make_layout` with the per-seed generator, in a fixed order (the default phantom
is a function of that order: do not reorder the draws).
"""

from __future__ import annotations

import math

import numpy as np

from .geometry import max_feret, points_in_polygon, polygon_area
from .layout import SEPTA_CLASSES, SIZE_TARGETS_UM, Figure, Lesion, PhantomLayout, size_class


def _lesion_polygon(rng: np.random.Generator, cx: float, cy: float, major_px: float) -> np.ndarray:
    """A smooth star-shaped outline scaled so its major axis is `major_px`."""
    n = int(np.clip(math.ceil(math.pi * major_px / 40.0), 24, 720))
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 7)
    r = 1.0 + (rng.uniform(0.0, 0.16, 5)[:, None] / k[:, None] * np.cos(k[:, None] * t + rng.uniform(0, 6.3, 5)[:, None])).sum(0)
    elong = rng.uniform(0.55, 0.95)
    a = rng.uniform(0, np.pi)
    u, v = r * np.cos(t), r * np.sin(t) * elong
    pts = np.stack([u * np.cos(a) - v * np.sin(a), u * np.sin(a) + v * np.cos(a)], 1)
    # scale on a subsample (cheap); the exact major axis is measured once accepted
    pts *= major_px / max_feret(pts[:: max(1, n // 96)])
    return pts + np.array([cx, cy])


def place_lesions(layout: PhantomLayout, rng: np.random.Generator, counts: dict[str, int],
                   notes: list[str], grid: dict) -> None:
    placed = [lesion_disc(les) for les in layout.lesions]  # centre and radius (px) of each lesion
    gx, gy, f, step = grid["x"], grid["y"], grid["f"], grid["step"]
    label = len(layout.lesions) + 1
    for cls in ("macro", "micro", "itc"):
        lo, hi = SIZE_TARGETS_UM[cls]
        for i in range(int(counts.get(cls, 0))):
            ok = False
            for attempt in range(80):
                # shrink the target when the tissue is small, never below the class floor
                shrink = 1.0 - min(attempt / 50.0, 1.0)
                major_um = lo + (hi - lo) * rng.random() * shrink
                rad = layout.px(major_um) / 2
                # candidate centres deep enough in tissue, off other lesions
                cand = (f["depth_um"] >= 0.45 * major_um + 20.0) & (f["node_um"] >= 40.0)
                if cls != "macro":
                    cand &= f["fat"] < 0.5  # small deposits sit in lymphoid tissue
                for px, py, pr in placed:
                    cand &= np.hypot(gx - px, gy - py) > rad + pr + layout.px(80.0)
                idx = np.nonzero(cand)[0]
                if idx.size == 0:
                    continue
                k = idx[rng.integers(idx.size)]
                cx = gx[k] + rng.uniform(-0.5, 0.5) * step
                cy = gy[k] + rng.uniform(-0.5, 0.5) * step
                poly = _lesion_polygon(rng, cx, cy, layout.px(major_um))
                if any(math.hypot(cx - px, cy - py) < rad + pr + layout.px(80.0) for px, py, pr in placed):
                    continue
                fp = layout.fields(poly[:, 0], poly[:, 1])
                fc = layout.fields(np.array([cx]), np.array([cy]))
                if fp["depth_um"].min() < 20.0 or fc["node_um"][0] < 40.0:
                    continue
                if cls != "macro" and fc["fat"][0] > 0.5:
                    continue
                major = max_feret(poly) * layout.mpp
                if size_class(major) != cls or not lo * 0.9 <= major <= hi * 1.1:
                    continue
                layout.lesions.append(
                    Lesion(label=label, size_class=cls, polygon=poly,
                           area_um2=polygon_area(poly) * layout.mpp**2, major_axis_um=major)
                )
                placed.append((cx, cy, rad))
                label += 1
                ok = True
                break
            if not ok:
                notes.append(f"no room for {cls} metastasis #{i + 1} on this slide (tissue too small)")


def lesion_disc(les: Lesion) -> tuple[float, float, float]:
    """(cx, cy, radius) px of a disc around a lesion's bounding box (spacing checks)."""
    x0, y0, x1, y1 = les.bbox
    return (x0 + x1) / 2, (y0 + y1) / 2, math.hypot(x1 - x0, y1 - y0) / 2


def _sample_in_lesion(layout: PhantomLayout, rng: np.random.Generator, les: Lesion, n: int,
                      taken: list[tuple[float, float]], min_sep: float, margin: float) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = les.bbox
    out: list[tuple[float, float]] = []
    ring = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    for _ in range(n * 40):
        if len(out) >= n:
            break
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        px = np.concatenate([[x], x + margin * np.cos(ring)])
        py = np.concatenate([[y], y + margin * np.sin(ring)])
        if not points_in_polygon(les.polygon, px, py).all():
            continue
        if any(points_in_polygon(hole, px, py).any() for hole in les.holes):
            continue
        if les.size_class in SEPTA_CLASSES and layout.tumour_stroma(np.array([x]), np.array([y]))[0] > 0.1:
            continue
        if any((x - a) ** 2 + (y - b) ** 2 < min_sep**2 for a, b in taken + out):
            continue
        out.append((x, y))
    return out


MITOSIS_KINDS = ("metaphase", "anaphase", "telophase", "prometaphase")
IMPOSTER_KINDS = ("apoptotic", "pyknotic", "lymph-clump")


def place_mitoses(layout: PhantomLayout, rng: np.random.Generator, density: float) -> None:
    taken: list[tuple[float, float]] = []
    for les in layout.lesions:
        area_mm2 = les.area_um2 / 1e6
        n = int(rng.poisson(density * area_mm2))
        if les.size_class != "itc":
            n = max(n, 1)
        elif rng.random() < 0.3:
            n = max(n, 1)
        pts = _sample_in_lesion(layout, rng, les, n, taken, layout.px(30.0), layout.px(9.0))
        for x, y in pts:
            layout.mitoses.append(
                Figure(x, y, str(rng.choice(MITOSIS_KINDS, p=[0.45, 0.2, 0.15, 0.2])),
                       float(rng.uniform(0, np.pi)), float(rng.uniform(0.85, 1.2)), les.label)
            )
        taken.extend(pts)


def place_imposters(layout: PhantomLayout, rng: np.random.Generator, density: float, tissue_mm2: float, grid: dict) -> None:
    taken = [(m.x, m.y) for m in layout.mitoses]
    # apoptotic bodies inside tumour (the classic mitosis look-alike) ...
    for les in layout.lesions:
        n = int(rng.poisson(0.4 * density * les.area_um2 / 1e6))
        pts = _sample_in_lesion(layout, rng, les, n, taken, layout.px(30.0), layout.px(8.0))
        for x, y in pts:
            kind = "apoptotic" if rng.random() < 0.7 else "pyknotic"
            layout.imposters.append(Figure(x, y, kind, float(rng.uniform(0, np.pi)), float(rng.uniform(0.8, 1.2)), les.label))
        taken.extend(pts)
    # ... and dark look-alikes in the lymphoid tissue elsewhere
    n = max(2, int(rng.poisson(density * 0.25 * tissue_mm2)))
    f, step = grid["f"], grid["step"]
    cand = np.nonzero((f["depth_um"] > 60) & (f["lymph"] > 0.9) & (f["sinus"] < 0.5))[0]
    found = 0
    for _ in range(n * 20):
        if found >= n or cand.size == 0:
            break
        k = cand[rng.integers(cand.size)]
        x = float(grid["x"][k] + rng.uniform(-0.5, 0.5) * step)
        y = float(grid["y"][k] + rng.uniform(-0.5, 0.5) * step)
        fp = layout.fields(np.array([x]), np.array([y]))
        if fp["depth_um"][0] < 40 or fp["lymph"][0] < 0.8 or fp["sinus"][0] > 0.5:
            continue
        if layout.lesion_at(np.array([x]), np.array([y]))[0] or _near_lesion(layout, x, y, layout.px(25.0)):
            continue
        if layout.has_holes and _near_hole(layout, x, y, layout.px(25.0)):
            continue  # stroma islands in a primary tumour hold no lymphocytes
        if any((x - a) ** 2 + (y - b) ** 2 < layout.px(30.0) ** 2 for a, b in taken):
            continue
        kind = str(rng.choice(IMPOSTER_KINDS, p=[0.35, 0.25, 0.4]))
        layout.imposters.append(Figure(x, y, kind, float(rng.uniform(0, np.pi)), float(rng.uniform(0.8, 1.2)), 0))
        taken.append((x, y))
        found += 1


def _near_lesion(layout: PhantomLayout, x: float, y: float, r: float) -> bool:
    ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    return bool(layout.lesion_at(x + r * np.cos(ring), y + r * np.sin(ring)).any())


def _near_hole(layout: PhantomLayout, x: float, y: float, r: float) -> bool:
    ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    return bool(layout.hole_at(np.r_[x, x + r * np.cos(ring)], np.r_[y, y + r * np.sin(ring)]).any())
