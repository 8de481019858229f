"""Lazy dask pyramids of a `Slide`, one `read_region` call per chunk.

napari's multiscale image layer takes a list of arrays, largest first, and only asks
for the chunks on screen; each chunk here reads exactly its own region, so opening a
slide of any size is instant and memory stays bounded by the chunks in view.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from .levels import SYNTHETIC_TILE, Level, round_half_up

if TYPE_CHECKING:  # pragma: no cover
    from .base import Slide

DEFAULT_CHUNK = 512
HUGE_CHUNK = 1024
# Above this many 512-px chunks a level gets 1024-px chunks, keeping dask graphs small.
_HUGE_LEVEL_CHUNKS = 16384
_MAX_NATIVE_CHUNK = 2048
_token = itertools.count()


def chunk_size(level: Level) -> int:
    """Square chunk edge for `level`: the native tile when it is square, at least 256 px
    and the downsample is an integer (reads then never straddle tiles), else 512, or 1024
    for huge levels."""
    # A non-integer downsample (TCGA level 1: 2.0005) makes OpenSlide's level-0 origins
    # land between pixels, so every chunk also decodes its neighbours' tiles: there a
    # bigger chunk halves the waste (measured 2x slower with 256-px chunks).
    integer_ds = abs(level.downsample - round(level.downsample)) < 1e-9
    if level.tile is not None and not level.synthetic and integer_ds:
        th, tw = level.tile
        if th == tw and 256 <= th <= _MAX_NATIVE_CHUNK:
            return int(th)
    h, w = level.shape
    if level.synthetic:
        return SYNTHETIC_TILE  # the synthetic tile grid, so each chunk is one cached tile
    if -(-h // DEFAULT_CHUNK) * -(-w // DEFAULT_CHUNK) > _HUGE_LEVEL_CHUNKS:
        return HUGE_CHUNK
    return DEFAULT_CHUNK


class LevelArray:
    """Array-like view of one level: `arr[y0:y1, x0:x1]` becomes one read_region call.

    dask.array.from_array slices it chunk by chunk (and fuses later slicing into the
    same call), so napari reads only what it shows.
    """

    def __init__(self, slide: Slide, level: int) -> None:
        self.slide = slide
        self.level = level
        h, w = slide.levels[level].shape
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: object) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        spatial: list[slice] = []
        post: list[object] = []
        for k, n in zip(key[:2], self.shape[:2], strict=True):
            if isinstance(k, slice):
                r = range(*k.indices(n))
                if len(r) == 0:
                    spatial.append(slice(0, 0))
                    post.append(slice(None))
                    continue
                lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
                stop = r[-1] - lo + (1 if r.step > 0 else -1)
                spatial.append(slice(lo, hi))
                post.append(slice(r[0] - lo, stop if stop >= 0 else None, r.step))
            else:
                i = int(k)  # type: ignore[call-overload]
                i = i + n if i < 0 else i
                if not 0 <= i < n:
                    raise IndexError(f"index {k} out of range for axis of size {n}")
                spatial.append(slice(i, i + 1))
                post.append(0)
        ys, xs = spatial
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if h <= 0 or w <= 0:
            region = np.full((max(h, 0), max(w, 0), 3), 255, np.uint8)
        else:
            ds = self.slide.levels[self.level].downsample
            region = self.slide.read_region(
                self.level, round_half_up(xs.start * ds), round_half_up(ys.start * ds), w, h
            )
        return region[(post[0], post[1], key[2])]


def build_pyramid(slide: Slide) -> list[da.Array]:
    """One dask array per level of `slide` (native and synthetic), largest first."""
    token = next(_token)
    meta = np.empty((0, 0, 3), np.uint8)
    arrays = []
    for i, level in enumerate(slide.levels):
        c = chunk_size(level)
        arrays.append(
            da.from_array(
                LevelArray(slide, i),
                chunks=(c, c, 3),
                name=f"wsi-{slide.path.name}-{id(slide):x}-{token}-level{i}",
                asarray=False,
                fancy=False,
                lock=False,  # backends are thread-safe themselves
                meta=meta,
                inline_array=True,
            )
        )
    return arrays
