"""Small synthetic training slides for tests (and for the benchmark when no phantom
writer is available): an in-memory `MemorySlide` and `write_training_slide`, a tiled TIFF
with its mpp in the resolution tags plus a QuPath-style GeoJSON tumour outline.

The picture is deliberately simple: pink "tissue" on white with a purple "tumour"
ellipse, so a tiny network can learn it in a few dozen steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..slide.base import Level, Slide

TISSUE_RGB = (230, 160, 200)
TUMOUR_RGB = (120, 60, 160)


class MemorySlide(Slide):
    """A one-level slide over an (h, w, 3) uint8 array; outside reads white."""

    def __init__(self, rgb: np.ndarray, mpp: float | None = 0.243, path: str = "<memory>"
                 ) -> None:
        super().__init__()
        self.path = Path(path)
        self.vendor = "memory"
        self.mpp = mpp
        self.objective_power = None
        self.rgb = np.ascontiguousarray(rgb[..., :3])
        self.levels = [Level(shape=self.rgb.shape[:2], downsample=1.0)]
        self.calls: list[tuple[int, int, int, int, int]] = []

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        self.calls.append((level, x, y, w, h))
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self.rgb.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self.rgb[y0:y1, x0:x1]
        return out


def synthetic_image(size: tuple[int, int], tumour: tuple[float, float, float, float] | None,
                    seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: a tissue rectangle with a textured surface and, if given, a tumour
    ellipse (cx, cy, rx, ry) in pixels."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = (xx > w * 0.08) & (xx < w * 0.92) & (yy > h * 0.08) & (yy < h * 0.92)
    noise = rng.integers(-12, 13, (h, w, 1))
    img[tissue] = np.clip(np.array(TISSUE_RGB) + noise[tissue], 0, 255)
    if tumour is not None:
        cx, cy, rx, ry = tumour
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        img[inside] = np.clip(np.array(TUMOUR_RGB) + noise[inside], 0, 255)
    return img


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, n: int = 64) -> list:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = [[float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))] for a in t]
    return ring + [ring[0]]


def write_training_slide(path: str | Path, size: tuple[int, int] = (1536, 1024),
                         tumour: tuple[float, float, float, float] | None = (600, 500, 260, 200),
                         mpp: float = 0.243, seed: int = 0) -> tuple[Path, Path | None]:
    """Write `path` (tiled TIFF with resolution tags) and, with a tumour,
    `<stem>.geojson` (QuPath FeatureCollection, class "Tumor"). Returns both paths."""
    import tifffile

    path = Path(path)
    img = synthetic_image(size, tumour, seed)
    res = 1e4 / mpp  # pixels per cm
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(res, res), resolutionunit="CENTIMETER")
    if tumour is None:
        return path, None
    gj = path.with_suffix(".geojson")
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": "0b9d1a5e-0000-4000-8000-000000000001",
        "geometry": {"type": "Polygon", "coordinates": [ellipse_polygon(*tumour)]},
        "properties": {"objectType": "annotation",
                       "classification": {"name": "Tumor", "color": [200, 0, 0]}},
    }]}))
    return path, gj
