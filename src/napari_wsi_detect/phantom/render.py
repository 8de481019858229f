"""Render any level-0 window of a phantom slide as H&E-like RGB.

Stain model (Beer–Lambert): per pixel a haematoxylin and an eosin concentration,
`RGB = 255·exp(−(cH·vH + cE·vE + glass))`, with the stain vectors jittered per slide.
The concentrations come from

* smooth compartment fields (`PhantomLayout.fields`) evaluated on a coarse lattice fixed
  in slide coordinates and interpolated bilinearly (two small matrix products per field);
* seamless periodic textures (collagen fibres, cytoplasm mottling, chromatin grain);
* nuclei on jittered grids fixed in slide coordinates: every cell of a grid owns at most
  one nucleus whose parameters are a hash of (cell, seed), so a nucleus crossing a tile
  border is drawn identically from both sides; all nuclei of a population are stamped at
  once into (N, S, S) windows and accumulated with `bincount` (overlapping nuclei add
  optical density, as stacked chromatin in a section does);
* mitotic figures and imposters from the layout's point lists.

`render(x0, y0, w, h)` is a pure function of the window: no state, any tile order.
"""

from __future__ import annotations

import math

import numpy as np

from .geometry import raster_polygon
from .layout import SEPTA_CLASSES, Figure, PhantomLayout, smoothstep
from .noise import PeriodicTexture, hash_uniform

FIBRE_ANGLES = (0.0, math.pi / 3, 2 * math.pi / 3)


class _Lattice:
    """A coarse lattice of nodes at multiples of `step` (slide coordinates) around a
    window, and separable bilinear interpolation from the nodes to the window's pixel
    centres (two gathers per axis; no BLAS, which thrashes on a busy machine)."""

    def __init__(self, x0: int, y0: int, w: int, h: int, step: int) -> None:
        self.step = step
        self.nx, self.kx, self.fx = self._axis(x0, w, step)
        self.ny, self.ky, self.fy = self._axis(y0, h, step)

    @staticmethod
    def _axis(start: int, n: int, step: int):
        k0 = math.floor((start + 0.5) / step)
        k1 = math.floor((start + n - 0.5) / step) + 1
        nodes = np.arange(k0, k1 + 1, dtype=np.float64) * step
        pos = (start + np.arange(n) + 0.5) / step
        left = np.floor(pos)
        return nodes, (left - k0).astype(np.intp), (pos - left).astype(np.float32)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        return np.meshgrid(self.nx, self.ny)

    def up(self, stack: np.ndarray) -> np.ndarray:
        """(K, ny, nx) node values -> (K, h, w) float32 at pixel centres."""
        a = stack.astype(np.float32, copy=False)
        fx = self.fx
        a = a[:, :, self.kx] * (1.0 - fx) + a[:, :, self.kx + 1] * fx
        fy = self.fy[:, None]
        return a[:, self.ky] * (1.0 - fy) + a[:, self.ky + 1] * fy


class PhantomRenderer:
    def __init__(self, layout: PhantomLayout) -> None:
        self.layout = layout
        lay = layout
        s = lay.seed
        um = 1.0 / lay.mpp  # px per µm

        def tex(k: int, period: int, along: float, across: float | None = None, angle: float = 0.0):
            return PeriodicTexture(s * 1000 + k, period, along * um, None if across is None else across * um, angle)

        self.grain = tex(1, 512, 0.22)  # chromatin granules
        self.clump = tex(2, 512, 0.6)  # coarser chromatin clumps, ragged mitoses
        self.mottle = tex(3, 512, 1.6)  # cytoplasm / background texture
        self.glass = tex(4, 256, 0.6)
        self.fibres = [tex(5 + i, 512, 6.0, 0.9, a) for i, a in enumerate(FIBRE_ANGLES)]
        self.field_step = max(1, round(2.0 * um))  # coarse compartment lattice: 2 µm
        self.fat_step = max(1, round(0.5 * um))  # fat-cell membrane lattice: 0.5 µm
        # per-figure shape parameters, fixed by (seed, index) so any tile sees the same
        self.figures = [(f, self._figure_params(f, i, 0)) for i, f in enumerate(lay.mitoses)]
        self.figures += [(f, self._figure_params(f, i, 1)) for i, f in enumerate(lay.imposters)]
        self.figure_xy = np.array([(f.x, f.y) for f, _ in self.figures]).reshape(-1, 2)

    # -- public -------------------------------------------------------------------
    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the level-0 window with top-left pixel (x0, y0)."""
        ch, ce, _ = self.concentrations(x0, y0, w, h)
        return self._to_rgb(ch, ce, x0, y0, w, h)

    def concentrations(self, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray, bool]:
        lay = self.layout
        um = 1.0 / lay.mpp
        ch = np.zeros((h, w), np.float32)
        ce = np.zeros((h, w), np.float32)
        # compartments on the coarse lattice, folded into a few coefficient fields
        lat = _Lattice(x0, y0, w, h, self.field_step)
        gx, gy = lat.grid()
        f = lay.fields(gx, gy)
        if f["depth_um"].max() < -2.0 and not self._figures_near(x0, y0, w, h, 25.0 * um):
            return ch, ce, False
        lymph, stroma, fat, sinus = f["lymph"], f["stroma"], f["fat"], f["sinus"]
        base = np.stack([
            f["depth_um"],
            lymph * (0.16 - 0.07 * sinus) + stroma * 0.6 + fat * 0.015,  # eosin
            lymph * (0.17 - 0.09 * sinus) + stroma * 0.04,  # haematoxylin
            0.05 * lymph + 0.05 * stroma,  # eosin mottling
            1.0 + 0.08 * f["drift"],
        ])
        depth, e0, h0, em, drift = lat.up(base)
        mott = self.mottle.sample(x0, y0, w, h)
        tissue = smoothstep(-1.2, 1.2, depth + 0.8 * mott).astype(np.float32)
        ce += e0 + em * mott
        ch += h0
        # collagen fibres oriented along the local fibre direction
        if stroma.max() > 0.01:
            wts = [np.cos(f["fibre"] - a) ** 6 for a in FIBRE_ANGLES]
            norm = sum(wts) + 1e-6
            coef = lat.up(np.stack([0.16 * stroma * wt / norm for wt in wts]))
            for t, cf in zip(self.fibres, coef, strict=True):
                ce += cf * t.sample(x0, y0, w, h)
        # fat: empty adipocytes with thin eosinophilic membranes
        if fat.max() > 0.01:
            memb = self._fat_membranes(x0, y0, w, h)
            fw = lat.up(fat[None])[0]
            ce += fw * 0.7 * memb
            ch += fw * 0.06 * memb
        # tumour replaces the host tissue inside the lesion polygons
        tum = self._tumour_mask(x0, y0, w, h)
        if tum is not None:
            tcyto_e = 0.30 + 0.04 * mott
            tcyto_h = 0.15 + 0.015 * mott
            strands = self._tumour_strands(lat)
            if strands is not None:
                fib = self.fibres[0].sample(x0, y0, w, h)
                tcyto_e = tcyto_e * (1 - strands) + strands * (0.6 + 0.2 * fib)
                tcyto_h = tcyto_h * (1 - strands) + strands * 0.05
            if lay.lesion_contrast != 1.0:  # fainter lesions: towards the host's stain
                tcyto_e = ce + lay.lesion_contrast * (tcyto_e - ce)
                tcyto_h = ch + lay.lesion_contrast * (tcyto_h - ch)
            ce = np.where(tum, tcyto_e, ce)
            ch = np.where(tum, tcyto_h, ch)
        # stroma islands inside primary tumours (the annotation's holes): collagen
        holes = self._hole_mask(x0, y0, w, h) if lay.has_holes else None
        if holes is not None:
            fib = self.fibres[1].sample(x0, y0, w, h)
            ce = np.where(holes, 0.55 + 0.2 * fib + 0.04 * mott, ce)
            ch = np.where(holes, 0.045, ch)
        self._stamp_nuclei(ch, ce, x0, y0, w, h)
        self._draw_figures(ch, ce, x0, y0, w, h)
        ch *= tissue
        ce *= tissue * drift
        return ch, ce, True

    # -- compartments ---------------------------------------------------------------
    def _fat_membranes(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Membrane weight: distance to the nearest Voronoi edge of a jittered grid of
        adipocyte centres (computed on a 0.5 µm lattice, interpolated)."""
        lay = self.layout
        lat = _Lattice(x0, y0, w, h, self.fat_step)
        nx, ny = lat.nx, lat.ny
        spacing = lay.px(72.0)
        s = lay.seed + 41
        ix = np.floor(nx / spacing).astype(np.int64)
        iy = np.floor(ny / spacing).astype(np.int64)
        cx0, cy0 = ix.min() - 1, iy.min() - 1
        ci = np.arange(cx0, ix.max() + 2)
        cj = np.arange(cy0, iy.max() + 2)
        gi, gj = np.meshgrid(ci, cj)
        sx = (gi + 0.5 + 0.9 * (hash_uniform(gi, gj, s, 0) - 0.5)) * spacing
        sy = (gj + 0.5 + 0.9 * (hash_uniform(gi, gj, s, 1) - 0.5)) * spacing
        d1 = np.full((ny.size, nx.size), np.inf)
        d2 = np.full((ny.size, nx.size), np.inf)
        for dy in (-1, 0, 1):
            rows = iy - cy0 + dy
            for dx in (-1, 0, 1):
                cols = ix - cx0 + dx
                px = sx[np.ix_(rows, cols)]
                py = sy[np.ix_(rows, cols)]
                d = (nx[None, :] - px) ** 2 + (ny[:, None] - py) ** 2
                d2 = np.minimum(d2, np.maximum(d1, d))
                d1 = np.minimum(d1, d)
        edge_um = (d2 - d1) / (2.0 * spacing) * lay.mpp  # ≈ distance to the shared wall
        memb = np.exp(-((edge_um / 0.55) ** 2))
        return lat.up(memb[None])[0]

    def _tumour_mask(self, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
        mask = None
        for les in self.layout.lesions:
            bx0, by0, bx1, by1 = les.bbox
            if bx1 < x0 or by1 < y0 or bx0 > x0 + w or by0 > y0 + h:
                continue
            m = raster_polygon(les.polygon, x0, y0, w, h)
            for hole in les.holes:
                m &= ~raster_polygon(hole, x0, y0, w, h)
            mask = m if mask is None else (mask | m)
        return mask

    def _hole_mask(self, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
        mask = None
        for les in self.layout.lesions:
            for hole in les.holes:
                hx0, hy0 = hole.min(0)
                hx1, hy1 = hole.max(0)
                if hx1 < x0 or hy1 < y0 or hx0 > x0 + w or hy0 > y0 + h:
                    continue
                m = raster_polygon(hole, x0, y0, w, h)
                mask = m if mask is None else (mask | m)
        return mask

    def _tumour_strands(self, lat: _Lattice) -> np.ndarray | None:
        lay = self.layout
        macro = [les.label for les in lay.lesions if les.size_class in SEPTA_CLASSES]
        if not macro:
            return None
        gx, gy = lat.grid()
        lab = lay.lesion_at(gx, gy).reshape(gx.shape)
        inside = np.isin(lab, macro)
        if not inside.any():
            return None
        st = lay.tumour_stroma(gx, gy) * inside
        return lat.up(st[None])[0]

    # -- nuclei -------------------------------------------------------------------
    def _grid(self, spacing: float, jitter: float, x0: int, y0: int, w: int, h: int, reach: float, s: int):
        """Centres of a jittered grid whose nuclei can touch the window."""
        i0 = math.floor((x0 - reach) / spacing) - 1
        i1 = math.floor((x0 + w + reach) / spacing) + 1
        j0 = math.floor((y0 - reach) / spacing) - 1
        j1 = math.floor((y0 + h + reach) / spacing) + 1
        gi, gj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1))
        gi, gj = gi.ravel(), gj.ravel()
        cx = (gi + 0.5 + jitter * (hash_uniform(gi, gj, s, 0) - 0.5)) * spacing
        cy = (gj + 0.5 + jitter * (hash_uniform(gi, gj, s, 1) - 0.5)) * spacing
        keep = (cx > x0 - reach) & (cx < x0 + w + reach) & (cy > y0 - reach) & (cy < y0 + h + reach)
        return gi[keep], gj[keep], cx[keep], cy[keep]

    def _suppressed(self, cx: np.ndarray, cy: np.ndarray, radius: float) -> np.ndarray:
        """Grid nuclei that would sit on a mitosis or imposter (those replace them)."""
        if len(self.figure_xy) == 0 or cx.size == 0:
            return np.zeros(cx.shape, bool)
        near = np.zeros(cx.shape, bool)
        fx, fy = self.figure_xy[:, 0], self.figure_xy[:, 1]
        sel = (fx > cx.min() - radius) & (fx < cx.max() + radius) & (fy > cy.min() - radius) & (fy < cy.max() + radius)
        for x, y in zip(fx[sel], fy[sel], strict=True):
            near |= (cx - x) ** 2 + (cy - y) ** 2 < radius**2
        return near

    def _stamp_nuclei(self, ch, ce, x0, y0, w, h) -> None:
        lay = self.layout
        um = 1.0 / lay.mpp
        s = lay.seed
        # lymphocytes, germinal-centre cells and histiocytes share one dense grid
        gi, gj, cx, cy = self._grid(7.2 * um, 0.7, x0, y0, w, h, 7.0 * um, s + 51)
        if cx.size:
            f = lay.fields(cx, cy)
            u = [hash_uniform(gi, gj, s + 51, k) for k in range(2, 14)]
            p = f["lymph"] * f["density"] * (f["depth_um"] > 3) * (f["fat"] < 0.3)
            keep = (u[0] < p) & (lay.lesion_at(cx, cy) == 0) & ~self._suppressed(cx, cy, 6.5 * um)
            if lay.has_holes:
                keep &= ~lay.hole_at(cx, cy)
            n = int(keep.sum())
            if n:
                u = [a[keep] for a in u]
                gc = f["gc"][keep]
                big = u[1] < 0.7 * gc  # centroblasts in germinal centres
                histio = ~big & (u[1] > 1.0 - (0.025 + 0.08 * f["sinus"][keep]))
                a = np.where(big, 4.1 + 1.0 * u[2], np.where(histio, 5.2 + 1.2 * u[2], 2.95 + 0.6 * u[2]))
                b = a * np.where(histio, 0.62 + 0.15 * u[3], 0.86 + 0.12 * u[3])
                c = np.where(big, 1.35, np.where(histio, 0.8, 1.75 + 0.35 * u[4]))
                self._stamp(
                    ch, ce, x0, y0, w, h, cx[keep], cy[keep], a * um, b * um, u[5] * np.pi, c,
                    e2=0.05 * u[6], e3=np.where(histio, 0.1, 0.04) * u[7], phase=u[8] * 6.3,
                    base=np.where(big | histio, 0.55, 0.9), rim=np.where(big | histio, 0.55, 0.2),
                    grain=np.where(big, 0.4, 0.4),
                    nucleoli=np.where(big, 1 + (u[9] < 0.5), 0), nuc_r=0.55 * um, nuc_h=0.9,
                    u_n=(u[10], u[11]),
                )
        # spindle cells of collagenous stroma and tumour septa
        gi, gj, cx, cy = self._grid(20.0 * um, 0.8, x0, y0, w, h, 10.0 * um, s + 52)
        if cx.size:
            f = lay.fields(cx, cy)
            u = [hash_uniform(gi, gj, s + 52, k) for k in range(2, 10)]
            lab = lay.lesion_at(cx, cy)
            strand = lay.tumour_stroma(cx, cy) * np.isin(lab, [les.label for les in lay.lesions if les.size_class in SEPTA_CLASSES])
            p = np.where(lab > 0, strand, f["stroma"]) * 0.45 * (f["depth_um"] > 3)
            if lay.has_holes:
                p = np.where(lay.hole_at(cx, cy), 0.5, p)
            keep = (u[0] < p) & ~self._suppressed(cx, cy, 6.0 * um)
            if keep.any():
                u = [a[keep] for a in u]
                ang = f["fibre"][keep] + 0.25 * (u[1] - 0.5)
                self._stamp(
                    ch, ce, x0, y0, w, h, cx[keep], cy[keep], (4.5 + 2.5 * u[2]) * um,
                    (0.8 + 0.45 * u[3]) * um, ang, 1.3 + 0.4 * u[4], e2=0.06 * u[5], e3=0.0 * u[5],
                    phase=u[5], base=0.9, rim=0.1, grain=0.2, nucleoli=0, nuc_r=1.0, nuc_h=0.0,
                    u_n=(u[6], u[7]),
                )
        # tumour cells: large pleomorphic vesicular nuclei with nucleoli
        if lay.lesions:
            gi, gj, cx, cy = self._grid(16.0 * um, 0.55, x0, y0, w, h, 13.0 * um, s + 53)
            lab = lay.lesion_at(cx, cy) if cx.size else np.zeros(0)
            if (lab > 0).any():
                sel = lab > 0
                gi, gj, cx, cy, lab = gi[sel], gj[sel], cx[sel], cy[sel], lab[sel]
                macro = [les.label for les in lay.lesions if les.size_class in SEPTA_CLASSES]
                strand = lay.tumour_stroma(cx, cy) * np.isin(lab, macro)
                keep = (strand < 0.5) & ~self._suppressed(cx, cy, 10.0 * um)
                u = [hash_uniform(gi[keep], gj[keep], s + 53, k) for k in range(2, 16)]
                if keep.any():
                    a = 4.8 + 3.4 * u[0] ** 1.3
                    hyper = u[1] < 0.12
                    dark = np.where(hyper, 1.7, 1.1 + 0.35 * u[4])
                    if lay.lesion_contrast != 1.0:
                        dark = dark * lay.lesion_contrast
                    self._stamp(
                        ch, ce, x0, y0, w, h, cx[keep], cy[keep], a * um, a * (0.66 + 0.28 * u[2]) * um,
                        u[3] * np.pi, dark,
                        e2=0.04 + 0.08 * u[5], e3=0.03 + 0.07 * u[6], phase=u[7] * 6.3,
                        base=np.where(hyper, 0.8, 0.58), rim=0.42, grain=0.65,
                        nucleoli=1 + (u[8] < 0.4), nuc_r=(0.65 + 0.45 * u[9]) * um, nuc_h=1.25,
                        u_n=(u[10], u[11]), nuc_e=0.9,
                    )

    def _stamp(
        self, ch, ce, x0, y0, w, h, cx, cy, a, b, angle, c, *, e2, e3, phase, base, rim, grain,
        nucleoli, nuc_r, nuc_h, u_n, nuc_e=0.4,
    ) -> None:
        """Draw N elliptic nuclei with harmonic outline wobble, a chromatin rim, granular
        chromatin and up to two nucleoli. The (N, S, S) windows are only used to find the
        covered pixels; everything else runs on those pixels alone."""
        n = cx.size
        um = np.float32(1.0 / self.layout.mpp)

        def per(v):
            return np.broadcast_to(np.asarray(v, np.float32), (n,)).copy()

        a, b, angle, c = per(a), per(b), per(angle), per(c)
        e2, e3, phase = per(e2), per(e3), per(phase)
        base, rim, grain, nucleoli, nuc_r = per(base), per(rim), per(grain), per(nucleoli), per(nuc_r)
        edge_w = 0.32 * um
        reach = int(math.ceil(float((a * (1 + e2 + e3)).max()) + edge_w + 2))
        off = np.arange(-reach, reach + 1)
        icx = np.floor(cx).astype(np.int64)
        icy = np.floor(cy).astype(np.int64)
        dx = (icx + 0.5 - cx).astype(np.float32)[:, None] + off[None, :].astype(np.float32)
        dy = (icy + 0.5 - cy).astype(np.float32)[:, None] + off[None, :].astype(np.float32)
        ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
        uu = (dx * ca / a[:, None])[:, None, :] + (dy * sa / a[:, None])[:, :, None]
        vv = (-dx * sa / b[:, None])[:, None, :] + (dy * ca / b[:, None])[:, :, None]
        q2 = uu * uu + vv * vv
        lim = ((1 + e2 + e3) + edge_w / b) ** 2
        colok = ((icx[:, None] + off) >= x0) & ((icx[:, None] + off) < x0 + w)
        rowok = ((icy[:, None] + off) >= y0) & ((icy[:, None] + off) < y0 + h)
        cand = (q2 < lim[:, None, None]) & colok[:, None, :] & rowok[:, :, None]
        ni, ri, ci = np.nonzero(cand)
        if ni.size == 0:
            return
        uu, vv = uu[ni, ri, ci], vv[ni, ri, ci]
        q = np.sqrt(uu * uu + vv * vv) + np.float32(1e-6)
        cs, sn = uu / q, vv / q
        ph = phase[ni]
        wobble = 1.0 + e2[ni] * ((cs * cs - sn * sn) * np.cos(2 * ph) + 2 * cs * sn * np.sin(2 * ph))
        wobble += e3[ni] * (cs * (4 * cs * cs - 3) * np.cos(3 * ph + 1) + sn * (3 - 4 * sn * sn) * np.sin(3 * ph + 1))
        bn = b[ni]
        edge = (1.0 - q / wobble) * bn  # ≈ px inside the membrane
        m = np.clip(edge / edge_w + 0.5, 0.0, 1.0)
        gpx = icx[ni] + off[ci]
        gpy = icy[ni] + off[ri]
        gr = 0.6 * self.grain.at(gpx, gpy) + 0.4 * self.clump.at(gpx, gpy)
        ring = np.exp(-((np.maximum(edge, 0.0) / (0.55 * um)) ** 2))
        val = c[ni] * m * np.clip(base[ni] + rim[ni] * ring + 0.5 * grain[ni] * gr, 0.05, None)
        flat = (gpy - y0) * w + (gpx - x0)
        if float(nucleoli.max()) > 0:
            eval_ = np.zeros_like(val)
            an = a[ni]
            for k in range(2):
                r_off = 0.45 * (0.3 + 0.7 * np.sqrt(per(u_n[k])))
                th = per(u_n[1 - k]) * 6.283 + k * 2.4
                ddx = uu * an - (r_off * np.cos(th) * a)[ni]
                ddy = vv * bn - (r_off * np.sin(th) * b)[ni]
                blob = np.exp(-(ddx**2 + ddy**2) / nuc_r[ni] ** 2) * m * (nucleoli[ni] > k)
                val += nuc_h * blob
                eval_ += nuc_e * blob
            ce += np.bincount(flat, weights=eval_, minlength=w * h).reshape(h, w).astype(np.float32)
        ch += np.bincount(flat, weights=val, minlength=w * h).reshape(h, w).astype(np.float32)
        # a nucleus displaces the cytoplasm's eosin
        cov = np.bincount(flat, weights=m, minlength=w * h).reshape(h, w)
        ce *= (1.0 - 0.55 * np.minimum(cov, 1.0)).astype(np.float32)

    # -- mitoses and imposters --------------------------------------------------------
    def _figure_params(self, fig: Figure, index: int, family: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.layout.seed, 7 + family, index])
        return {
            "gap": rng.uniform(4.5, 7.0),
            "len": rng.uniform(8.5, 12.0),
            "wid": rng.uniform(1.2, 1.7),
            "bend": rng.uniform(0.02, 0.06),
            "frag": rng.uniform(-2.2, 2.2, (6, 2)),
            "frag_r": rng.uniform(1.1, 2.1, 6),
            "nfrag": rng.integers(1, 4),
            "halo": rng.uniform(4.5, 6.0),
            "nclump": rng.integers(4, 7),
        }

    def _figures_near(self, x0: int, y0: int, w: int, h: int, margin: float) -> bool:
        if len(self.figure_xy) == 0:
            return False
        fx, fy = self.figure_xy[:, 0], self.figure_xy[:, 1]
        return bool(((fx > x0 - margin) & (fx < x0 + w + margin) & (fy > y0 - margin) & (fy < y0 + h + margin)).any())

    def _draw_figures(self, ch, ce, x0, y0, w, h) -> None:
        if len(self.figure_xy) == 0:
            return
        um = 1.0 / self.layout.mpp
        reach = 16.0 * um
        fx, fy = self.figure_xy[:, 0], self.figure_xy[:, 1]
        idx = np.nonzero((fx > x0 - reach) & (fx < x0 + w + reach) & (fy > y0 - reach) & (fy < y0 + h + reach))[0]
        for i in idx:
            fig, prm = self.figures[i]
            r = int(reach)
            xa, xb = max(x0, int(fig.x) - r), min(x0 + w, int(fig.x) + r)
            ya, yb = max(y0, int(fig.y) - r), min(y0 + h, int(fig.y) + r)
            if xa >= xb or ya >= yb:
                continue
            xs = np.arange(xa, xb) + 0.5
            ys = np.arange(ya, yb) + 0.5
            dx = (xs[None, :] - fig.x) / um / fig.scale  # µm, figure frame
            dy = (ys[:, None] - fig.y) / um / fig.scale
            ca, sa = math.cos(fig.angle), math.sin(fig.angle)
            u = dx * ca + dy * sa
            v = -dx * sa + dy * ca
            rho = np.hypot(u, v)
            gx, gy = np.meshgrid(np.arange(xa, xb), np.arange(ya, yb))
            rag = self.clump.at(gx, gy) * 0.5 + self.grain.at(gx, gy) * 0.5
            dh, de, clear = self._figure_shape(fig.kind, prm, u, v, rho, rag)
            sl = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
            ch[sl] = ch[sl] * (1 - clear) + dh
            ce[sl] = ce[sl] * (1 - 0.55 * clear) + de

    @staticmethod
    def _soft(d: np.ndarray, width: float = 0.4) -> np.ndarray:
        """0..1 coverage from a signed distance in µm (positive inside)."""
        return np.clip(d / width + 0.5, 0.0, 1.0)

    def _figure_shape(self, kind: str, p: dict, u, v, rho, rag):
        soft = self._soft
        zero = np.zeros_like(u)
        if kind in ("metaphase", "anaphase", "telophase", "prometaphase"):
            clear = 0.6 * (1.0 - smoothstep(6.0, 9.0, rho))  # clear cytoplasm around it
            if kind == "metaphase":
                half = p["len"] / 2
                env = np.sqrt(np.clip(1 - (v / half) ** 2, 0, 1)) ** 0.5
                d = p["wid"] * env - np.abs(u) + 0.7 * rag * env - 2.0 * np.maximum(np.abs(v) - half, 0)
                dh = 3.0 * soft(d)
            elif kind == "anaphase":
                half = p["len"] / 2 * 0.85
                env = np.sqrt(np.clip(1 - (v / half) ** 2, 0, 1)) ** 0.5
                arm = np.abs(u) - p["gap"] / 2 + p["bend"] * v**2
                d = 0.8 * p["wid"] * env - np.abs(arm) + 0.6 * rag * env - 2.0 * np.maximum(np.abs(v) - half, 0)
                dh = 2.9 * soft(d)
            elif kind == "telophase":
                g = p["gap"] / 2 + 2.5
                d1 = 1.0 - np.hypot((np.abs(u) - g) / 2.0, v / 3.6)
                dh = 3.0 * soft(2.0 * d1 + 0.6 * rag)
            else:  # prometaphase: clumped, spiky chromatin ball
                d = 4.2 - rho + 1.6 * rag
                dh = 2.9 * soft(d) * (0.75 + 0.35 * np.clip(rag + 0.5, 0, 1.5))
            return dh, 0.12 * clear, clear
        if kind == "apoptotic":
            r_halo = p["halo"] * 0.75
            halo = soft(r_halo - rho + 0.5 * rag, 0.6)
            gapr = 0.6 * (soft(r_halo + 1.0 - rho, 0.6) - halo)  # retraction space
            dh = zero.copy()
            for k in range(int(p["nfrag"])):
                fu, fv = p["frag"][k]
                dh += 3.2 * soft(p["frag_r"][k] - np.hypot(u - fu, v - fv), 0.2)
            clear = np.clip(halo + gapr, 0, 1)
            return dh, 0.75 * halo, clear
        if kind == "pyknotic":
            r = 2.0 + 0.6 * p["frag_r"][0] / 2.1
            halo = soft(4.0 - rho + 0.5 * rag, 0.6)
            return 3.0 * soft(r - rho, 0.3), 0.55 * halo, 0.8 * halo
        # lymph-clump: a tight knot of dark small nuclei
        dh = zero.copy()
        for k in range(int(p["nclump"])):
            fu, fv = p["frag"][k] * 1.8
            dh += 2.3 * soft(2.8 - np.hypot(u - fu, v - fv), 0.3)
        clear = soft(7.5 - rho, 1.0) * 0.8
        return dh, 0.1 * clear, clear

    # -- colour ---------------------------------------------------------------------
    def _to_rgb(self, ch, ce, x0, y0, w, h) -> np.ndarray:
        st = self.layout.stain
        noise = self.glass.sample(x0, y0, w, h) * np.float32(0.012)
        hv = (st.h * st.h_gain).astype(np.float32)
        ev = (st.e * st.e_gain).astype(np.float32)
        bg = st.background_od.astype(np.float32)
        out = np.empty((h, w, 3), np.uint8)
        od = np.empty((h, w), np.float32)
        for k in range(3):
            np.multiply(ch, hv[k], out=od)
            od += ce * ev[k]
            od += noise
            od += bg[k]
            np.maximum(od, 0.0, out=od)
            np.negative(od, out=od)
            np.exp(od, out=od)
            od *= 255.0
            od += 0.5
            out[..., k] = od  # values in [0.5, 255.5): truncation rounds
        return out
