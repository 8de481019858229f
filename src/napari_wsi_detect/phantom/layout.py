"""The global plan of a phantom lymph-node slide: everything decided once per seed.

A `PhantomLayout` holds the few objects that need a global view (tissue outline, stain,
metastasis polygons, mitosis and imposter positions) and answers point queries about
tissue compartments (`fields`). The renderer calls the same functions, so the ground
truth is the geometry that drew the pixels. Lengths are chosen in micrometres and
converted through `mpp`, so a phantom at 0.5 mpp is the same tissue, scanned coarser.

Compartments, outside in: glass | perinodal fat (thin septa) | capsule (dense collagen)
| cortex with lymphoid follicles (dark mantle, paler germinal centre) | paracortex with
fibrous trabeculae | medulla with pale sinuses | hilar fat islands. Metastases are
star-shaped smooth polygons placed in tissue; Camelyon16 size classes by major axis
(placement of lesions and figures: `phantom.placement`; primary tumours:
`phantom.primary`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .geometry import points_in_polygon
from .noise import fbm, hash_uniform, value_noise

# Camelyon16 size classes by major axis (µm); targets sit inside with a margin.
MACRO_MIN_UM = 2000.0
ITC_MAX_UM = 200.0
SIZE_TARGETS_UM = {"macro": (2300.0, 3200.0), "micro": (260.0, 1700.0), "itc": (45.0, 160.0)}
# Lesions split into nests by desmoplastic septa (primary tumours: see `phantom.primary`).
SEPTA_CLASSES = ("macro", "primary")

# Reference stain vectors (optical density per unit concentration, R, G, B), Macenko's.
H_REF = np.array([0.5626, 0.7201, 0.4062])
E_REF = np.array([0.2159, 0.8012, 0.5581])


def size_class(major_um: float) -> str:
    if major_um > MACRO_MIN_UM:
        return "macro"
    if major_um >= ITC_MAX_UM:
        return "micro"
    return "itc"


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class Blob:
    """One tissue piece: a smooth star-shaped outline around (cx, cy) (level-0 px)."""

    cx: float
    cy: float
    radius: float  # px
    angle: float
    aspect: float  # x stretch of the outline before rotation
    amps: np.ndarray  # harmonic amplitudes of the outline, k = 2..
    phases: np.ndarray
    fat_amps: np.ndarray  # perinodal fat band thickness harmonics, k = 1..
    fat_phases: np.ndarray
    fat_mean: float  # fraction of radius

    def polar(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(depth px from outline, perinodal fat band px, polar angle) at points."""
        dx = x - self.cx
        dy = y - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (dx * c + dy * s) / self.aspect
        v = -dx * s + dy * c
        rho = np.hypot(u, v)
        theta = np.arctan2(v, u)
        k = np.arange(2, 2 + len(self.amps))
        r = 1.0 + (self.amps[:, None] * np.cos(k[:, None] * theta.ravel()[None, :] + self.phases[:, None])).sum(0)
        r = r.reshape(theta.shape) * self.radius
        kf = np.arange(1, 1 + len(self.fat_amps))
        band = self.fat_mean + (
            self.fat_amps[:, None] * np.cos(kf[:, None] * theta.ravel()[None, :] + self.fat_phases[:, None])
        ).sum(0)
        band = np.clip(band.reshape(theta.shape), 0.0, None) * self.radius
        # radial gap scaled by the aspect: close to the true distance for smooth outlines
        depth = (r - rho) * min(self.aspect, 1.0)
        return depth, band, theta + self.angle


@dataclass
class Lesion:
    label: int  # 1.. (value in the level-5 mask)
    size_class: str
    polygon: np.ndarray  # (N, 2) level-0 px (x, y), open ring
    area_um2: float
    major_axis_um: float
    holes: list[np.ndarray] = field(default_factory=list)  # open rings of stroma inside

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        x0, y0 = self.polygon.min(0)
        x1, y1 = self.polygon.max(0)
        return float(x0), float(y0), float(x1), float(y1)


@dataclass
class Figure:
    """A mitotic figure or an imposter drawn at one point."""

    x: float
    y: float
    kind: str
    angle: float
    scale: float
    lesion: int  # 0 outside tumour


@dataclass
class Stain:
    h: np.ndarray  # OD vector of haematoxylin (unit norm)
    e: np.ndarray
    h_gain: float
    e_gain: float
    background_od: np.ndarray  # glass


@dataclass
class PhantomLayout:
    width: int
    height: int
    mpp: float
    seed: int
    stain: Stain
    blobs: list[Blob]
    lesions: list[Lesion] = field(default_factory=list)
    mitoses: list[Figure] = field(default_factory=list)
    imposters: list[Figure] = field(default_factory=list)
    # < 1: tumour stain and nuclei drawn part way towards the host tissue (fainter
    # lesions, a harder test); 1 draws exactly what the generator always drew
    lesion_contrast: float = 1.0

    def px(self, um: float) -> float:
        return um / self.mpp

    # -- tissue compartments at points -----------------------------------------------
    def fields(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Compartment weights at level-0 points (any matching shapes, float)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        um = self.mpp
        depth = np.full(x.shape, -1e9)
        band = np.zeros(x.shape)
        theta = np.zeros(x.shape)
        for blob in self.blobs:
            d, b, t = blob.polar(x, y)
            better = d > depth
            depth = np.where(better, d, depth)
            band = np.where(better, b, band)
            theta = np.where(better, t, theta)
        depth_um = depth * um
        # node core = tissue minus the perinodal fat band; capsule thickness wanders
        node_um = depth_um - band * um
        s = self.seed
        cap_um = 15.0 + 7.0 * value_noise(x, y, self.px(400.0), s + 11)
        capsule = smoothstep(-3.0, 2.0, node_um) * (1.0 - smoothstep(cap_um - 4.0, cap_um + 4.0, node_um))
        core = smoothstep(cap_um - 4.0, cap_um + 4.0, node_um)
        # hilar fat islands deep inside and perinodal fat outside the capsule
        hilum = smoothstep(0.42, 0.47, fbm(x, y, self.px(700.0), s + 12, 3)) * smoothstep(250.0, 450.0, node_um)
        fat = np.maximum(1.0 - smoothstep(-3.0, 2.0, node_um), hilum)
        # thin fibrous trabeculae: ridges of a noise field, only inside the node
        ridge = np.abs(fbm(x, y, self.px(450.0), s + 13, 2))
        trab = (1.0 - smoothstep(0.025, 0.05, ridge)) * core * (1.0 - hilum)
        # medullary sinuses: pale, cell-poor channels in the deep node
        sinus = smoothstep(0.15, 0.35, fbm(x, y, self.px(220.0), s + 14, 2)) * smoothstep(250.0, 400.0, node_um)
        gc, mantle = self._follicles(x, y, node_um)
        stroma = np.maximum(capsule, trab)
        # septa crossing perinodal fat
        septa = (1.0 - smoothstep(0.03, 0.06, np.abs(fbm(x, y, self.px(300.0), s + 15, 2)))) * (1.0 - smoothstep(-3.0, 2.0, node_um)) * smoothstep(2.0, 8.0, depth_um)
        fat_septa = septa * 0.8
        tissue = smoothstep(-1.5, 1.5, depth_um)
        lymph = np.clip(core * (1.0 - hilum) * (1.0 - trab), 0.0, 1.0)
        density = np.clip(1.0 - 0.7 * sinus - 0.4 * gc + 0.1 * mantle, 0.15, 1.0)
        # fibre direction: tangential in the capsule, wandering elsewhere
        wander = math.pi * value_noise(x, y, self.px(300.0), s + 16)
        fibre = np.where(capsule > 0.5, theta + math.pi / 2, wander)
        return {
            "tissue": tissue,
            "depth_um": depth_um,
            "node_um": node_um,
            "fat": fat * (1.0 - fat_septa),
            "stroma": np.maximum(stroma, fat_septa),
            "lymph": lymph,
            "density": density,
            "sinus": sinus,
            "gc": gc,
            "mantle": mantle,
            "fibre": fibre,
            "drift": value_noise(x, y, self.px(1500.0), s + 17),
        }

    def _follicles(self, x: np.ndarray, y: np.ndarray, node_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(germinal-centre weight, mantle weight): follicles on a jittered grid in the
        outer cortex, each kept by a per-cell coin flip."""
        spacing = self.px(420.0)
        s = self.seed + 21
        if x.size == 0:
            return np.zeros(x.shape), np.zeros(x.shape)
        gx = np.floor(x / spacing).astype(np.int64)
        gy = np.floor(y / spacing).astype(np.int64)

        def follicle(ci: np.ndarray, cj: np.ndarray):
            keep = hash_uniform(ci, cj, s, 0) < 0.7
            fx = (ci + 0.2 + 0.6 * hash_uniform(ci, cj, s, 1)) * spacing
            fy = (cj + 0.2 + 0.6 * hash_uniform(ci, cj, s, 2)) * spacing
            r = self.px(110.0 + 70.0 * hash_uniform(ci, cj, s, 3))
            return keep, fx, fy, r

        ci = np.arange(gx.min() - 1, gx.max() + 2)
        cj = np.arange(gy.min() - 1, gy.max() + 2)
        best = np.full(x.shape, np.inf)
        if ci.size * cj.size <= 64:
            # local query (a tile): test the few follicles near all points at once
            gi, gj = (a.ravel() for a in np.meshgrid(ci, cj))
            keep, fx, fy, r = follicle(gi, gj)
            for k in np.nonzero(keep)[0]:
                best = np.minimum(best, np.hypot(x - fx[k], y - fy[k]) / r[k])
        else:
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    keep, fx, fy, r = follicle(gx + dx, gy + dy)
                    best = np.minimum(best, np.where(keep, np.hypot(x - fx, y - fy) / r, np.inf))
        # follicles live in the outer cortex only
        cortex = smoothstep(30.0, 70.0, node_um) * (1.0 - smoothstep(450.0, 600.0, node_um))
        follicle = (1.0 - smoothstep(0.9, 1.05, best)) * cortex
        gc = (1.0 - smoothstep(0.5, 0.62, best)) * cortex
        return gc, np.clip(follicle - gc, 0.0, 1.0)

    def lesion_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Lesion label (0 = none) at points."""
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        out = np.zeros(x.shape, dtype=np.int32)
        for les in self.lesions:
            x0, y0, x1, y1 = les.bbox
            sel = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
            if sel.any():
                idx = np.nonzero(sel)[0]
                inside = points_in_polygon(les.polygon, x[idx], y[idx])
                for hole in les.holes:
                    inside &= ~points_in_polygon(hole, x[idx], y[idx])
                out[idx[inside]] = les.label
        return out

    @property
    def has_holes(self) -> bool:
        return any(les.holes for les in self.lesions)

    def hole_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True at points inside a stroma hole of a lesion (flattened like `lesion_at`)."""
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        out = np.zeros(x.shape, dtype=bool)
        for les in self.lesions:
            for hole in les.holes:
                x0, y0 = hole.min(0)
                x1, y1 = hole.max(0)
                sel = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
                if sel.any():
                    idx = np.nonzero(sel)[0]
                    out[idx[points_in_polygon(hole, x[idx], y[idx])]] = True
        return out

    def tumour_stroma(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Desmoplastic septa splitting large metastases into nests (weight 0..1)."""
        ridge = np.abs(fbm(x, y, self.px(260.0), self.seed + 31, 2))
        return 1.0 - smoothstep(0.03, 0.06, ridge)


# -- building a layout -----------------------------------------------------------------
def _make_stain(rng: np.random.Generator) -> Stain:
    def jitter(v: np.ndarray, amount: float) -> np.ndarray:
        out = np.clip(v + rng.normal(0.0, amount, 3), 0.02, None)
        return out / np.linalg.norm(out)

    def keep_blue_below_green(v: np.ndarray, ratio: float = 0.55) -> np.ndarray:
        # Real H&E keeps blue OD under ~0.7 x green OD (median 0.61 on the real tiles);
        # beyond it the colour reads as red marker ink, to a person and to tissue.py.
        v = v.copy()
        v[2] = min(v[2], ratio * v[1])
        return v / np.linalg.norm(v)

    return Stain(
        h=keep_blue_below_green(jitter(H_REF, 0.05)),
        e=keep_blue_below_green(jitter(E_REF, 0.05)),
        h_gain=float(rng.uniform(0.85, 1.15)),
        e_gain=float(rng.uniform(0.8, 1.2)),
        background_od=np.array([0.035, 0.04, 0.03]) + rng.uniform(0.0, 0.03, 3),
    )


def _make_blobs(rng: np.random.Generator, w_um: float, h_um: float, mpp: float) -> list[Blob]:
    two = w_um > 1.25 * h_um and rng.random() < 0.5
    pieces = [(0.30, 0.5), (0.74, 0.5)] if two else [(0.5, 0.5)]
    blobs = []
    for fx, fy in pieces:
        if two:
            radius = 0.19 * w_um
            aspect = rng.uniform(0.85, 1.1)
        else:
            radius = 0.40 * h_um
            aspect = float(np.clip(rng.uniform(1.0, 1.35) * w_um / h_um * 0.85, 0.9, 1.5))
        n = 5
        amps = rng.uniform(0.02, 0.09, n) / np.arange(1, n + 1) ** 0.6
        blobs.append(
            Blob(
                cx=(fx + rng.uniform(-0.03, 0.03)) * w_um / mpp,
                cy=(fy + rng.uniform(-0.03, 0.03)) * h_um / mpp,
                radius=radius / mpp,
                angle=float(rng.uniform(-0.3, 0.3)),
                aspect=float(aspect),
                amps=amps,
                phases=rng.uniform(0, 2 * np.pi, n),
                fat_amps=rng.uniform(0.0, 0.06, 3),
                fat_phases=rng.uniform(0, 2 * np.pi, 3),
                fat_mean=float(rng.uniform(0.0, 0.05)),
            )
        )
    return blobs


def default_lesion_counts(tissue_mm2: float) -> dict[str, int]:
    """Lesions per slide, growing with the tissue area (Camelyon-like mix)."""
    return {
        "macro": 0 if tissue_mm2 < 6.0 else (1 if tissue_mm2 < 40.0 else 2),
        "micro": int(np.clip(round(1 + tissue_mm2 / 5.0), 1, 4)),
        "itc": int(np.clip(round(2 + tissue_mm2 / 6.0), 2, 4)),
    }


def make_layout(
    width: int,
    height: int,
    mpp: float,
    seed: int,
    lesions: dict[str, int] | None,
    tumour: bool,
    mitosis_density: float,
    imposter_density: float,
    primary: int = 0,
) -> tuple[PhantomLayout, list[str]]:
    """Plan a slide. Returns the layout and notes about lesions that did not fit.

    `primary` > 0 places that many large primary-tumour regions first (see
    `phantom.primary`); metastases then default to none (explicit `lesions` still apply).
    """
    rng = np.random.default_rng([seed, 20240611])
    w_um, h_um = width * mpp, height * mpp
    layout = PhantomLayout(
        width=width, height=height, mpp=mpp, seed=seed, stain=_make_stain(rng),
        blobs=_make_blobs(rng, w_um, h_um, mpp),
    )
    from .placement import place_imposters, place_lesions, place_mitoses

    grid = _survey(layout)
    tissue_mm2 = grid["tissue_mm2"]
    notes: list[str] = []
    if tumour:
        counts = dict(default_lesion_counts(tissue_mm2))
        if primary:
            from .primary import place_primaries

            place_primaries(layout, rng, int(primary), notes, grid)
            counts = {"macro": 0, "micro": 0, "itc": 0}
        counts.update(lesions or {})
        place_lesions(layout, rng, counts, notes, grid)
        place_mitoses(layout, rng, mitosis_density)
    place_imposters(layout, rng, imposter_density, tissue_mm2, grid)
    return layout, notes


def _survey(layout: PhantomLayout, n: int = 192) -> dict:
    """Compartments on a coarse global grid: tissue area and candidate positions."""
    step = max(layout.width, layout.height) / n
    xs = np.arange(step / 2, layout.width, step)
    ys = np.arange(step / 2, layout.height, step)
    gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
    f = layout.fields(gx, gy)
    tissue = f["depth_um"] > 0
    return {
        "x": gx, "y": gy, "step": step, "f": f,
        "tissue_mm2": float(tissue.sum() * (step * layout.mpp / 1000.0) ** 2),
    }
