"""On-the-fly patch augmentation (METHODS §1 (5): shift, rotation, flip, scale, colour).

Everything is numpy + PIL (no torch), so producer processes stay light, and every random
number comes from the `numpy.random.Generator` passed in, drawn in a fixed order, so a
patch is a pure function of (input, seed).

Geometry is one resampling: the producer reads a context patch somewhat larger than the
output (`context_size`), and a single affine map (small rotation · scale · centre shift)
takes it to `out × out`, so the corners never show padding. 90° rotations and flips are
exact array operations on the result.

Colour: H&E stain jitter in optical-density space (Tellez et al. style: each stain's
concentration scaled by 1 ± σ and shifted by ± b, with the Ruifrok–Johnston matrix or one
estimated per patch by Macenko's method), then brightness, contrast, saturation and hue.

Scanner/stain shift (all off by default, so older models' configs reproduce their patches
exactly): a log-uniform stain strength per stain (`stain_strength_min/max`, e.g. 0.6–1.5,
wider than the ± σ above), a rotation of the H and E optical-density vectors
(`stain_rotate_deg`: another lab's dyes), then after the colour jitter a defocus blur
(`blur_sigma`), a camera gamma (`gamma`) and a JPEG re-encode (`jpeg_quality_min`,
`jpeg_prob`). Their random numbers are drawn only when they are switched on, after the old
ones, so a config without them draws the same stream as before.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

# One Macenko estimate and one H&E basis for training and inference (stain.py).
from ..stain import RUIFROK_HED, macenko_stain_matrix

# RGB → YIQ; a hue shift is a rotation of the (I, Q) chroma plane.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.596, -0.274, -0.322],
                     [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass
class AugmentConfig:
    """Augmentation strengths (0 switches one off)."""

    max_shift: float = 8.0  # px: patch centre jitter
    rotate90: bool = True  # random multiple of 90°
    max_angle: float = 15.0  # degrees: extra arbitrary rotation in ±max_angle
    flip: bool = True  # horizontal / vertical flips
    scale: float = 0.10  # zoom in [1 − s, 1 + s]
    brightness: float = 0.10  # × [1 − b, 1 + b]
    contrast: float = 0.10
    saturation: float = 0.10
    hue: float = 0.02  # fraction of a full hue turn
    stain_sigma: float = 0.05  # H and E concentrations × [1 − σ, 1 + σ]
    stain_bias: float = 0.05  # ... + [−b, b] (optical density units)
    stain_matrix: str = "ruifrok"  # or "macenko" (estimated per patch)
    # Scanner / stain shift (1.0 / 0 = off; see the module docstring).
    stain_strength_min: float = 1.0  # H and E each × log-uniform [min, max]
    stain_strength_max: float = 1.0
    stain_rotate_deg: float = 0.0  # H and E OD vectors each turned by up to this
    blur_sigma: float = 0.0  # Gaussian defocus, σ uniform in [0, blur_sigma] px
    gamma: float = 0.0  # output^(exp(±gamma))
    jpeg_quality_min: int = 0  # 0 = never; else quality uniform in [min, 95] ...
    jpeg_prob: float = 0.5  # ... for this share of the patches

    @property
    def shift_on(self) -> bool:
        """Whether any scanner/stain-shift augmentation is switched on."""
        return bool(self.stain_strength_min != 1.0 or self.stain_strength_max != 1.0
                    or self.stain_rotate_deg or self.blur_sigma or self.gamma
                    or self.jpeg_quality_min)

    def to_dict(self) -> dict:
        return asdict(self)


def context_size(cfg: AugmentConfig, out: int) -> int:
    """Side of the context patch to read so that shift + rotation + zoom-out never sample
    outside it."""
    theta = math.radians(min(abs(cfg.max_angle), 45.0))
    spread = math.cos(theta) + math.sin(theta)  # bounding box of a rotated square
    zoom_out = 1.0 / max(1.0 - abs(cfg.scale), 0.5)
    side = out * spread * zoom_out + 2 * abs(cfg.max_shift) + 4
    return int(math.ceil(side / 2.0)) * 2


def crop_centre(img: np.ndarray, out: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - out) // 2, (w - out) // 2
    return img[top:top + out, left:left + out]


def _geometric(img: np.ndarray, out: int, angle_deg: float, zoom: float,
               shift: tuple[float, float]) -> np.ndarray:
    """Output pixel (u, v) samples input at centre_in + R(θ)·((u, v) − centre_out)/zoom."""
    h, w = img.shape[:2]
    if angle_deg == 0 and zoom == 1 and shift == (0.0, 0.0):
        return np.ascontiguousarray(crop_centre(img, out))
    t = math.radians(angle_deg)
    c, s = math.cos(t) / zoom, math.sin(t) / zoom
    cx_in, cy_in = w / 2.0 + shift[0], h / 2.0 + shift[1]  # continuous-coordinate centres
    co = out / 2.0
    # PIL: input (x, y) = (a·X + b·Y + c0, d·X + e·Y + f0) for output (X, Y), continuous
    # coordinates with pixel centres at +0.5 on both sides.
    data = (c, -s, cx_in - c * co + s * co, s, c, cy_in - s * co - c * co)
    res = Image.fromarray(img).transform((out, out), Image.Transform.AFFINE, data,
                                         resample=Image.Resampling.BILINEAR)
    return np.asarray(res)


def stain_jitter(img: np.ndarray, alpha: np.ndarray, bias: np.ndarray,
                 matrix: np.ndarray = RUIFROK_HED, target: np.ndarray | None = None
                 ) -> np.ndarray:
    """Scale and shift the H and E concentrations of a float RGB image in [0, 255]
    (unmixed with `matrix`, remixed with `target`, default the same: other dyes)."""
    od = -np.log((img.reshape(-1, 3) + 1.0) / 256.0)
    conc = od @ np.linalg.pinv(matrix)
    conc[:, :2] = conc[:, :2] * alpha + bias
    od2 = conc @ (matrix if target is None else target)
    return (256.0 * np.exp(-od2) - 1.0).reshape(img.shape)


def rotate_stain_vectors(matrix: np.ndarray, angles_deg: np.ndarray,
                         axes_turn: np.ndarray) -> np.ndarray:
    """Turn the H and E rows of an OD stain matrix by `angles_deg[i]` each, towards a
    direction `axes_turn[i]` (in turns, 0–1) in the plane perpendicular to the row;
    rows stay unit length and non-negative (clipped: OD absorbs, it never emits)."""
    out = matrix.astype(np.float64).copy()
    for i in range(2):
        v = out[i] / np.linalg.norm(out[i])
        # Two unit vectors perpendicular to v; the turn direction mixes them.
        a = np.cross(v, [1.0, 0.0, 0.0] if abs(v[0]) < 0.9 else [0.0, 1.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(v, a)
        phi = 2 * math.pi * float(axes_turn[i])
        d = math.cos(phi) * a + math.sin(phi) * b
        t = math.radians(float(angles_deg[i]))
        w = np.clip(math.cos(t) * v + math.sin(t) * d, 1e-3, None)
        out[i] = w / np.linalg.norm(w)
    return out


def scanner_shift(img: np.ndarray, blur: float, gamma: float, jpeg: int) -> np.ndarray:
    """Defocus blur (σ px), gamma and a JPEG re-encode (quality; 0 = none) of a float RGB
    image in [0, 255]: what another scanner's optics, camera and compression do."""
    u8 = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    pil = Image.fromarray(u8)
    if blur > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=blur))
    if jpeg:
        buf = io.BytesIO()
        # Gamma before compression, as a camera applies it; LUT on uint8 is exact enough.
        if gamma != 1.0:
            pil = pil.point(_gamma_lut(gamma) * 3)
        pil.save(buf, format="JPEG", quality=int(jpeg))
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB")).astype(np.float32)
    if gamma != 1.0:
        pil = pil.point(_gamma_lut(gamma) * 3)
    return np.asarray(pil).astype(np.float32)


def _gamma_lut(gamma: float) -> list[int]:
    return [int(round(255.0 * (i / 255.0) ** gamma)) for i in range(256)]


def colour_jitter(img: np.ndarray, brightness: float, contrast: float, saturation: float,
                  hue: float) -> np.ndarray:
    """Brightness, contrast, saturation factors and a hue turn on float RGB in [0, 255]."""
    x = img * brightness
    mean = float((x @ _LUMA).mean())
    x = (x - mean) * contrast + mean
    grey = (x @ _LUMA)[..., None]
    x = (x - grey) * saturation + grey
    if hue:
        t = 2 * math.pi * hue
        rot = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
        x = x @ (_YIQ2RGB @ rot @ _RGB2YIQ).T
    return x


def augment(context: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
            out: int) -> np.ndarray:
    """Augment a (S, S, 3) uint8 context patch (S ≥ `context_size(cfg, out)`) into an
    (out, out, 3) uint8 patch. Deterministic given the generator's state."""
    # Draw every parameter first, always in the same order, whatever is switched off.
    k90 = int(rng.integers(4))
    flip_h, flip_v = (rng.random(2) < 0.5).tolist()
    angle = float(rng.uniform(-1, 1)) * cfg.max_angle
    zoom = 1.0 + float(rng.uniform(-1, 1)) * cfg.scale
    shift = tuple(float(v) for v in rng.uniform(-1, 1, 2) * cfg.max_shift)
    s_alpha = 1.0 + rng.uniform(-1, 1, 2) * cfg.stain_sigma
    s_bias = rng.uniform(-1, 1, 2) * cfg.stain_bias
    b, c, s = 1.0 + rng.uniform(-1, 1, 3) * np.array(
        [cfg.brightness, cfg.contrast, cfg.saturation])
    h = float(rng.uniform(-1, 1)) * cfg.hue
    if cfg.shift_on:  # drawn only when on: older configs keep their random stream
        lo, hi = math.log(cfg.stain_strength_min), math.log(cfg.stain_strength_max)
        s_alpha = s_alpha * np.exp(rng.uniform(lo, hi, 2))
        rot_deg = rng.uniform(0, 1, 2) * cfg.stain_rotate_deg
        rot_dir = rng.random(2)
        blur = float(rng.uniform(0, 1)) * cfg.blur_sigma
        gam = math.exp(float(rng.uniform(-1, 1)) * cfg.gamma)
        jpeg = (int(rng.integers(cfg.jpeg_quality_min, 96))
                if cfg.jpeg_quality_min and rng.random() < cfg.jpeg_prob else 0)

    img = _geometric(np.ascontiguousarray(context[..., :3]), out, angle, zoom, shift)
    if cfg.rotate90 and k90:
        img = np.rot90(img, k90)
    if cfg.flip and flip_h:
        img = img[:, ::-1]
    if cfg.flip and flip_v:
        img = img[::-1]
    x = img.astype(np.float32)
    if cfg.stain_sigma or cfg.stain_bias or cfg.shift_on:
        matrix = RUIFROK_HED
        if cfg.stain_matrix == "macenko":
            est = macenko_stain_matrix(img)
            matrix = est if est is not None else RUIFROK_HED
        target = (rotate_stain_vectors(matrix, rot_deg, rot_dir)
                  if cfg.shift_on and cfg.stain_rotate_deg else matrix)
        x = stain_jitter(x, s_alpha, s_bias, matrix, target)
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
        x = colour_jitter(x, float(b), float(c), float(s), h)
    if cfg.shift_on and (blur > 0.05 or gam != 1.0 or jpeg):
        x = scanner_shift(x, blur, gam, jpeg)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
