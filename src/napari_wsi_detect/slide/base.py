"""The `Slide` interface every backend implements.

Coordinate convention (used everywhere in the package): level-0 pixels, origin at the
top-left corner of the top-left pixel, x to the right (columns), y down (rows). Arrays
are (rows, cols, 3) = (y, x, rgb) uint8.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Level:
    """One resolution level: `shape` is (height, width) in pixels of that level."""

    shape: tuple[int, int]
    downsample: float
    synthetic: bool = False  # True when we computed it (the file lacks it)

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]


@dataclass
class SlideInfo:
    path: Path
    vendor: str
    mpp: float | None
    objective_power: float | None
    associated: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)


class Slide:
    """An opened whole-slide image.

    Subclasses implement `_read_native(level_index, x, y, w, h)` for native levels; this
    base class adds synthetic levels, compositing, bounds handling and pyramids.
    """

    path: Path
    levels: list[Level]
    mpp: float | None
    objective_power: float | None
    vendor: str

    def __init__(self) -> None:
        self._lock = threading.RLock()

    # -- to implement -----------------------------------------------------------
    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Return the (h, w, 3) RGB uint8 region whose top-left is (x, y) *in level-0
        pixels*, with w, h in pixels *of `level`*. Outside the slide reads as white."""
        raise NotImplementedError

    def associated_image(self, name: str) -> np.ndarray:
        raise NotImplementedError

    @property
    def associated_names(self) -> list[str]:
        return []

    def close(self) -> None:  # pragma: no cover - backends override
        pass

    # -- shared -----------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0, OpenSlide's order."""
        h, w = self.levels[0].shape
        return (w, h)

    def best_level_for_downsample(self, downsample: float) -> int:
        best = 0
        for i, lv in enumerate(self.levels):
            if lv.downsample <= downsample * 1.0001:
                best = i
        return best

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
