"""Resolution levels of a slide, and the synthetic levels added below the file's own.

Kept apart from `base.Slide` so that `pyramid` (the dask view) and the backends can use
them without importing `base`, and `base` imports `pyramid` only lazily, inside
`Slide.pyramid()` (so `open_slide` does not import dask): no import circle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["SYNTHETIC_TARGET", "SYNTHETIC_TILE", "Level", "round_half_up", "synthetic_levels"]

# Add synthetic levels until the smallest level's longest side is below this, so a
# viewer showing the whole slide never needs more than ~1 Mpx.
SYNTHETIC_TARGET = 1024
# Synthetic levels are computed and cached in aligned tiles of this size (level pixels).
SYNTHETIC_TILE = 512


@dataclass(frozen=True)
class Level:
    """One resolution level: `shape` is (height, width) in pixels of that level."""

    shape: tuple[int, int]
    downsample: float
    synthetic: bool = False  # True when we computed it (the file lacks it)
    tile: tuple[int, int] | None = field(default=None, compare=False)  # native (h, w)

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]


def round_half_up(v: float) -> int:
    """Python's round() is banker's rounding; coordinates want the usual rule."""
    return int(math.floor(v + 0.5))


def synthetic_levels(native: list[Level], target: int = SYNTHETIC_TARGET) -> list[Level]:
    """The 2x levels to add below the smallest native level (possibly none)."""
    out: list[Level] = []
    last = native[-1]
    while max(last.shape) >= target:
        h, w = last.shape
        last = Level(((h + 1) // 2, (w + 1) // 2), last.downsample * 2.0, synthetic=True)
        out.append(last)
    return out
