"""Deterministic, position-addressed randomness for the phantom slides.

Every random quantity of a phantom is a pure function of (seed, global position), so a
tile rendered on its own is bit-identical to the same pixels rendered as part of any other
window: there is no state carried from one tile to the next. Three tools do this:

* `hash_uniform(i, j, seed, channel)`: a counter-based hash of integer lattice cells to
  uniform floats (the per-cell "dice" of jittered grids: nuclei, fat cells, follicles);
* `value_noise(x, y, spacing, seed)`: smooth noise in [-1, 1] with features about
  `spacing` pixels wide, evaluable at any point set (tissue compartments, stain drift);
* `PeriodicTexture`: small seamless FFT-filtered noise images sampled at global pixel
  coordinates modulo their period (chromatin grain, collagen fibres, glass noise), far
  cheaper per pixel than hashing.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)


def _mix32(h: np.ndarray) -> np.ndarray:
    """lowbias32 integer finaliser (Wellons); `h` uint64 holding 32-bit values."""
    h = h & _MASK32
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & _MASK32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & _MASK32
    h ^= h >> np.uint64(16)
    return h


def hash_u32(i: np.ndarray, j: np.ndarray, seed: int, channel: int = 0) -> np.ndarray:
    """32-bit hash of integer cells (i, j) for one seed and one independent channel."""
    i = np.asarray(i, dtype=np.int64).astype(np.uint64) & _MASK32
    j = np.asarray(j, dtype=np.int64).astype(np.uint64) & _MASK32
    key = np.uint64((seed * 0x9E3779B1 + channel * 0x85EBCA77) & 0xFFFFFFFF)
    h = _mix32(i ^ key)
    h = _mix32(h ^ ((j * np.uint64(0xC2B2AE3D)) & _MASK32))
    return _mix32(h + np.uint64(channel * 0x27D4EB2F & 0xFFFFFFFF))


def hash_uniform(i: np.ndarray, j: np.ndarray, seed: int, channel: int = 0) -> np.ndarray:
    """Uniform floats in [0, 1) addressed by lattice cell, seed and channel."""
    return hash_u32(i, j, seed, channel).astype(np.float64) * (1.0 / 4294967296.0)


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def value_noise(x: np.ndarray, y: np.ndarray, spacing: float, seed: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] at points (x, y) (any matching shapes)."""
    gx = np.asarray(x, dtype=np.float64) / spacing
    gy = np.asarray(y, dtype=np.float64) / spacing
    fx0 = np.floor(gx)
    fy0 = np.floor(gy)
    fx = _fade(gx - fx0)
    fy = _fade(gy - fy0)
    ix = fx0.astype(np.int64)
    iy = fy0.astype(np.int64)
    if ix.size == 0:
        return np.zeros(ix.shape)
    i0, j0 = int(ix.min()), int(iy.min())
    ni, nj = int(ix.max()) - i0 + 2, int(iy.max()) - j0 + 2
    if ni * nj <= 4 * ix.size + 64:
        # points are local (a tile): hash the few lattice cells once, then gather
        gi, gj = np.meshgrid(np.arange(i0, i0 + ni), np.arange(j0, j0 + nj))
        lat = hash_uniform(gi, gj, seed)
        ri, rj = ix - i0, iy - j0
        v00, v10 = lat[rj, ri], lat[rj, ri + 1]
        v01, v11 = lat[rj + 1, ri], lat[rj + 1, ri + 1]
    else:
        v00 = hash_uniform(ix, iy, seed)
        v10 = hash_uniform(ix + 1, iy, seed)
        v01 = hash_uniform(ix, iy + 1, seed)
        v11 = hash_uniform(ix + 1, iy + 1, seed)
    top = v00 + (v10 - v00) * fx
    bottom = v01 + (v11 - v01) * fx
    return (top + (bottom - top) * fy) * 2.0 - 1.0


def fbm(x: np.ndarray, y: np.ndarray, spacing: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise (roughly in [-1, 1]): large shapes with ragged detail."""
    total = np.zeros(np.broadcast(x, y).shape)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        total += amp * value_noise(x, y, spacing / 2**k, seed + 101 * k)
        norm += amp
        amp *= 0.5
    return total / norm


@lru_cache(maxsize=64)
def _texture(seed: int, period: int, along: float, across: float, angle: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((period, period))
    f = np.fft.fftfreq(period)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    fu = fx * c + fy * s  # frequency along the fibre direction
    fv = -fx * s + fy * c
    gain = np.exp(-2.0 * np.pi**2 * ((fu * along) ** 2 + (fv * across) ** 2))
    tex = np.fft.ifft2(np.fft.fft2(white) * gain).real
    tex -= tex.mean()
    tex /= tex.std() + 1e-12
    tex = tex.astype(np.float32)
    tex.flags.writeable = False  # shared between renderers through the cache
    return tex


class PeriodicTexture:
    """A seamless (P, P) noise image, zero mean and unit variance, sampled by global
    pixel coordinates modulo P. Anisotropic textures (collagen) have `along` > `across`
    (Gaussian correlation lengths in pixels) and orientation `angle` (radians, x axis)."""

    def __init__(
        self,
        seed: int,
        period: int,
        along: float,
        across: float | None = None,
        angle: float = 0.0,
    ) -> None:
        across = along if across is None else across
        self.period = period
        self.data = _texture(int(seed), int(period), float(along), float(across), float(angle))

    def sample(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """(h, w) values for the level-0 window whose top-left pixel is (x0, y0)."""
        p = self.period
        rows = np.arange(y0, y0 + h) % p
        cols = np.arange(x0, x0 + w) % p
        return self.data[rows][:, cols]

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Values at integer pixel positions (any matching shapes)."""
        p = self.period
        return self.data[np.asarray(y, np.int64) % p, np.asarray(x, np.int64) % p]
