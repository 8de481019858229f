"""Stream a tiled, pyramidal JPEG TIFF from a tile renderer in bounded memory.

Level 0 is rendered tile by tile in row-major order and handed to tifffile as JPEG bytes.
Every rendered tile is also averaged 2×2 into a one-tile-row accumulator of level 1; a
completed level-1 row is cut into tiles, JPEG-encoded into a scratch file beside the
output and averaged into level 2's accumulator, and so on. So one pass over level 0
builds the whole pyramid, holding one tile row per level in memory (about
`tile · width · 3 · 1/2 · 2` bytes in all, ~150 MB for a 100k-pixel-wide slide with
512 px tiles); the lower levels are then copied from the scratch file as pre-encoded
tiles.

Layout (read by both OpenSlide's generic-tiff driver and tifffile as one series with
levels): one IFD per level in the main chain, level 0 first, lower levels with
NewSubfileType = reduced resolution, each with XResolution/YResolution in pixels per
centimetre (ResolutionUnit CENTIMETER) so readers derive the µm per pixel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

TileRenderer = Callable[[int, int, int, int], np.ndarray]
Progress = Callable[[int, int], None]


def level_sizes(width: int, height: int, min_side: int = 1024) -> list[tuple[int, int]]:
    """(w, h) per level, halving until the largest side is below `min_side`."""
    sizes = [(width, height)]
    while max(sizes[-1]) >= min_side:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def _half(tile: np.ndarray) -> np.ndarray:
    """2×2 box average with rounding (uint8 -> uint8)."""
    t = tile.astype(np.uint16)
    s = t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


class _PyramidBuilder:
    def __init__(self, sizes: list[tuple[int, int]], tile: int, quality: int, scratch) -> None:
        self.sizes = sizes
        self.tile = tile
        self.quality = quality
        self.scratch = scratch
        self.ntiles = [((w + tile - 1) // tile, (h + tile - 1) // tile) for w, h in sizes]
        # one tile row per level >= 1, white where no data falls
        self.acc = [None] + [np.full((tile, nx * tile, 3), 255, np.uint8) for nx, _ in self.ntiles[1:]]
        self.index: list[list[tuple[int, int]]] = [[] for _ in sizes]  # (offset, length)

    def encode(self, tile: np.ndarray) -> bytes:
        return imagecodecs.jpeg_encode(tile, level=self.quality, subsampling="420")

    def push(self, level: int, ty: int, tx: int, tile: np.ndarray) -> None:
        """Tile (ty, tx) of `level` is final: store it (levels >= 1) and feed the next."""
        if level >= 1:
            data = self.encode(tile)
            offset = self.scratch.tell()
            self.scratch.write(data)
            self.index[level].append((offset, len(data)))
        if level + 1 < len(self.sizes):
            h = self.tile // 2
            r0 = (ty % 2) * h
            self.acc[level + 1][r0 : r0 + h, tx * h : tx * h + h] = _half(tile)

    def row_done(self, level: int, ty: int) -> None:
        nxt = level + 1
        if nxt >= len(self.sizes):
            return
        if ty % 2 == 1 or ty == self.ntiles[level][1] - 1:
            row = self.acc[nxt]
            t = self.tile
            for tx in range(self.ntiles[nxt][0]):
                self.push(nxt, ty // 2, tx, row[:, tx * t : (tx + 1) * t].copy())
            row[:] = 255
            self.row_done(nxt, ty // 2)


def write_pyramid_tiff(
    path: Path,
    width: int,
    height: int,
    render: TileRenderer,
    *,
    mpp: float,
    tile: int = 512,
    quality: int = 90,
    description: str = "",
    progress: Progress | None = None,
) -> list[tuple[int, int]]:
    """Write `path` (which should be a temporary name: the caller renames it) and return
    the level sizes. `render(x, y, w, h)` returns (h, w, 3) uint8 level-0 pixels."""
    if tile % 16:
        raise ValueError("tile size must be a multiple of 16")
    sizes = level_sizes(width, height)
    scratch_path = path.with_name(path.name + ".levels")
    total = ((width + tile - 1) // tile) * ((height + tile - 1) // tile)
    try:
        with open(scratch_path, "w+b") as scratch, tifffile.TiffWriter(path, bigtiff=True) as tw:
            builder = _PyramidBuilder(sizes, tile, quality, scratch)

            def level0() -> Iterator[bytes]:
                nx, ny = builder.ntiles[0]
                done = 0
                for ty in range(ny):
                    for tx in range(nx):
                        pixels = render(tx * tile, ty * tile, tile, tile)
                        builder.push(0, ty, tx, pixels)
                        if tx == nx - 1:
                            # before the last yield: tifffile stops pulling after the
                            # last tile, so code after it would never run
                            builder.row_done(0, ty)
                        done += 1
                        if progress is not None:
                            progress(done, total)
                        yield builder.encode(pixels)

            def stored(level: int) -> Iterator[bytes]:
                for offset, length in builder.index[level]:
                    scratch.seek(offset)
                    yield scratch.read(length)

            common = dict(
                dtype=np.uint8, photometric="rgb", tile=(tile, tile), compression="jpeg",
                subsampling=(2, 2), resolutionunit="CENTIMETER", metadata=None,
            )
            for level, (w, h) in enumerate(sizes):
                px_per_cm = 1e4 / (mpp * (width / w))
                tw.write(
                    level0() if level == 0 else stored(level),
                    shape=(h, w, 3),
                    resolution=(px_per_cm, 1e4 / (mpp * (height / h))),
                    subfiletype=0 if level == 0 else 1,
                    description=description if level == 0 else None,
                    software="napari-wsi-detect" if level == 0 else None,
                    **common,
                )
                if level == 0:
                    scratch.seek(0, os.SEEK_END)
    finally:
        scratch_path.unlink(missing_ok=True)
    return sizes
