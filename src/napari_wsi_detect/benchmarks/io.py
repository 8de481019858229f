"""`wsi-detect bench io`: slide reading, our Slide pyramid vs raw OpenSlide, side by side.

(a) open-to-first-screen: open + read the chunks that cover a screen at the level napari
    shows for the whole slide (napari's rule: the coarsest level with >= 1 data pixel per
    screen pixel); ours (Slide.pyramid, synthetic levels included) vs raw OpenSlide
    (open + read_region of the level the same rule picks among the file's own levels).
(b) tile throughput: the same random 512x512 level-0 tiles read through our pyramid
    chunks vs raw OpenSlide.read_region (+ numpy conversion), as MB/s of RGB and a ratio.
(c) memory while panning the large phantom at level 0, viewport by viewport: RSS at
    start and peak (should stay flat: bounded caches, nothing whole-level).

Ratios are measured in one run, alternating ours and raw, best of `--repeats`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path.home() / ".cache" / "napari-wsi-detect" / "bench"
_SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "slides"
_REAL = ["cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slides", nargs="*", help="slides to measure (default: the real test slides)")
    p.add_argument(
        "--phantom-size",
        nargs=2,
        type=int,
        default=(20000, 20000),
        metavar=("W", "H"),
        help="large phantom slide size in pixels (0 0 to skip)",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help=f"default {DEFAULT_CACHE}")
    p.add_argument("--tiles", type=int, default=200, help="random 512^2 tiles for (b)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the best is reported")
    p.add_argument("--screen", nargs=2, type=int, default=(1600, 1000), metavar=("W", "H"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pan", action="store_true", help="skip (c), the panning memory test")


# -- the large phantom ---------------------------------------------------------------


def bench_phantom(size: tuple[int, int], cache_dir: Path, seed: int = 0) -> Path:
    """A large pyramidal JPEG TIFF, generated once and cached: the project's phantom
    (phantom.write_phantom) when it is available and works, else a streamed
    texture pyramid written here."""
    from .._atomic import atomic_path

    cache_dir.mkdir(parents=True, exist_ok=True)
    w, h = size
    path = cache_dir / f"phantom-{w}x{h}-seed{seed}.tif"
    if path.exists():
        return path
    try:
        from ..phantom import write_phantom
    except ImportError:
        write_phantom = None
    if write_phantom is not None:
        # write_phantom lands atomically, its slide last: a crash never leaves a half
        # phantom (or a slide without its .geojson / mask sidecars) under the final name.
        try:
            write_phantom(path, seed=seed, size=(w, h), mpp=0.243)
            return path
        except Exception as exc:  # another module's bug must not stop the benchmark
            print(f"write_phantom failed ({type(exc).__name__}: {exc}); using a texture pyramid")
    path = cache_dir / f"pyramid-{w}x{h}-seed{seed}.tif"
    if not path.exists():
        with atomic_path(path) as tmp:
            write_streamed_pyramid(tmp, (w, h), seed=seed)
    return path


def _texture_tile(x0: int, y0: int, tw: int, th: int, ds: int, seed: int) -> np.ndarray:
    """Tissue-like texture (pink stroma, purple nuclei-like speckle, white outside an
    ellipse) for level pixels [x0, x0+tw) x [y0, y0+th) at downsample ds; deterministic."""
    rng = np.random.default_rng([seed, ds, x0, y0])
    yy, xx = np.mgrid[y0 : y0 + th, x0 : x0 + tw].astype(np.float32) * ds
    field = np.sin(xx / 300.0 + np.sin(yy / 500.0) * 3) + np.cos(yy / 230.0 + xx / 700.0)
    base = np.stack([225 - 20 * field, 160 - 30 * field, 200 - 15 * field], axis=-1)
    speck = rng.random((th, tw), dtype=np.float32) < 0.04
    base[speck] = (110, 60, 150)
    noise = rng.normal(0, 6, (th, tw, 1)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_streamed_pyramid(
    path: Path, size: tuple[int, int], seed: int = 0, tile: int = 512
) -> None:
    """Tiled JPEG pyramid (levels as reduced-resolution pages, so OpenSlide reads all
    levels too), written tile by tile: memory stays at one tile whatever the size."""
    import tifffile

    w, h = size
    mpp = 0.243
    levels = []
    ds = 1
    while True:
        levels.append(((-(-h // ds)), (-(-w // ds)), ds))
        if max(levels[-1][:2]) < 1024:
            break
        ds *= 2

    def tiles(lh: int, lw: int, lds: int) -> Iterator[np.ndarray]:
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                yield _texture_tile(tx, ty, tile, tile, lds, seed)

    per_cm = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, (lh, lw, lds) in enumerate(levels):
            tw.write(
                tiles(lh, lw, lds),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": 85},
                photometric="rgb",
                subfiletype=1 if i else 0,
                resolution=(per_cm / lds, per_cm / lds),
                resolutionunit="CENTIMETER",
            )


# -- measurements --------------------------------------------------------------------


def napari_level(
    downsamples: list[float], shape0: tuple[int, int], screen_hw: tuple[int, int]
) -> int:
    """The level napari shows when the whole slide is fitted to a canvas of `screen_hw`
    screen pixels: napari's compute_multiscale_level takes the coarsest level that still
    has at least one data pixel per screen pixel, i.e. downsample < 1 / zoom, where the
    fitted zoom is min(canvas / slide) with napari's ~5 % margin."""
    inv_zoom = max(shape0[0] / screen_hw[0], shape0[1] / screen_hw[1]) / 0.95
    level = 0
    for i, ds in enumerate(downsamples):
        if ds < inv_zoom:
            level = i
    return level


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def first_screen(path: Path, screen: tuple[int, int], repeats: int) -> dict:
    import openslide

    from ..slide import open_slide

    result: dict = {}

    def ours() -> None:
        with open_slide(path) as s:
            pyr = s.pyramid()
            lvl = napari_level(
                [lv.downsample for lv in s.levels], s.levels[0].shape, (screen[1], screen[0])
            )
            img = pyr[lvl].compute()
            result["ours_level"] = (lvl, img.shape[:2], s.levels[lvl].synthetic)

    def raw() -> None:
        with openslide.OpenSlide(str(path)) as o:
            w0, h0 = o.dimensions
            lvl = napari_level(list(o.level_downsamples), (h0, w0), (screen[1], screen[0]))
            w, h = o.level_dimensions[lvl]
            img = np.asarray(o.read_region((0, 0), lvl, (w, h)))
            result["raw_level"] = (lvl, img.shape[:2])

    ours(), raw()  # warm the OS file cache for both
    t_ours, t_raw = [], []
    for _ in range(repeats):
        t_ours.append(_time(ours))
        t_raw.append(_time(raw))
    result["ours_s"] = min(t_ours)
    result["raw_s"] = min(t_raw)
    return result


def tile_throughput(path: Path, n_tiles: int, repeats: int, seed: int) -> dict:
    import dask
    import openslide

    from ..slide import open_slide

    with open_slide(path) as s:
        h0, w0 = s.levels[0].shape
    rng = np.random.default_rng(seed)
    ny, nx = h0 // 512, w0 // 512
    if ny == 0 or nx == 0:
        return {}
    # Distinct tiles: dask would compute a repeated tile once, flattering the pyramid.
    cells = rng.choice(ny * nx, size=min(n_tiles, ny * nx), replace=False)
    boxes = [(int(c % nx) * 512, int(c // nx) * 512) for c in cells]
    n_tiles = len(boxes)
    mb = n_tiles * 512 * 512 * 3 / 1e6

    def ours() -> None:  # napari-like: one compute for many chunks
        with open_slide(path) as s:
            level0 = s.pyramid()[0]
            views = [level0[y : y + 512, x : x + 512] for x, y in boxes]
            dask.compute(*views, scheduler="synchronous")

    def ours_each() -> None:  # one dask compute per tile: pays dask's fixed cost each time
        with open_slide(path) as s:
            level0 = s.pyramid()[0]
            for x, y in boxes:
                dask.compute(level0[y : y + 512, x : x + 512], scheduler="synchronous")

    def ours_direct() -> None:
        with open_slide(path) as s:
            for x, y in boxes:
                s.read_region(0, x, y, 512, 512)

    def raw() -> None:
        with openslide.OpenSlide(str(path)) as o:
            for x, y in boxes:
                np.asarray(o.read_region((x, y), 0, (512, 512)))

    raw()
    t: dict[str, list[float]] = {"ours": [], "each": [], "direct": [], "raw": []}
    for _ in range(repeats):
        t["ours"].append(_time(ours))
        t["raw"].append(_time(raw))
        t["direct"].append(_time(ours_direct))
        t["each"].append(_time(ours_each))
    best = {k: min(v) for k, v in t.items()}
    return {
        "tiles": n_tiles,
        "ours_mb_s": mb / best["ours"],
        "direct_mb_s": mb / best["direct"],
        "each_mb_s": mb / best["each"],
        "raw_mb_s": mb / best["raw"],
    }


def pan_memory(path: Path, screen: tuple[int, int]) -> dict:
    import psutil

    from ..slide import open_slide

    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    sw, sh = screen
    start = proc.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    views = 0
    try:
        with open_slide(path) as s:
            level0 = s.pyramid()[0]
            h0, w0 = level0.shape[:2]
            for y in range(0, h0, sh):
                xs = range(0, w0, sw) if (y // sh) % 2 == 0 else reversed(range(0, w0, sw))
                for x in xs:  # boustrophedon, like a person scanning the slide
                    level0[y : y + sh, x : x + sw].compute()
                    views += 1
            end = proc.memory_info().rss
    finally:
        stop.set()
        sampler.join()
    return {
        "views": views,
        "seconds": time.perf_counter() - t0,
        "start_mb": start / 2**20,
        "peak_mb": peak[0] / 2**20,
        "end_mb": end / 2**20,
        "level0_mb": h0 * w0 * 3 / 2**20,
    }


_BACKEND_NAMES = {"OpenSlideSlide": "OpenSlide", "TiffSlide": "tifffile", "ImageSlide": "Pillow"}


def run(args: argparse.Namespace) -> int:
    from ..slide import open_slide

    slides = [Path(p) for p in args.slides]
    if not slides:
        slides = [_SHARED / n for n in _REAL if (_SHARED / n).exists()]
    cache_dir = args.cache_dir or DEFAULT_CACHE
    phantom = None
    if args.phantom_size[0] > 0:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            cache_dir = Path(tempfile.gettempdir()) / "napari-wsi-detect-bench"
        t0 = time.perf_counter()
        phantom = bench_phantom(tuple(args.phantom_size), cache_dir, args.seed)
        print(f"phantom: {phantom} ({time.perf_counter() - t0:.1f} s to get it)")
        slides.append(phantom)
    screen = tuple(args.screen)

    print(f"\n(a) open-to-first-screen, {screen[0]}x{screen[1]} screen, best of {args.repeats}")
    print(
        f"{'slide':34} {'ours level (h x w)':28} {'ours s':>8} {'raw level':>16} {'raw s':>8} {'ours/raw':>8}"
    )
    for p in slides:
        r = first_screen(p, screen, args.repeats)
        lvl, (h, w), synth = r["ours_level"]
        rl, (rh, rw) = r["raw_level"]
        ours_desc = f"{lvl} ({h}x{w}{', synthetic' if synth else ''})"
        print(
            f"{p.name[:34]:34} {ours_desc:28} {r['ours_s']:8.3f} {f'{rl} ({rh}x{rw})':>16} "
            f"{r['raw_s']:8.3f} {r['ours_s'] / r['raw_s']:8.2f}"
        )

    print(
        f"\n(b) level-0 tile throughput, up to {args.tiles} distinct random 512x512 tiles, MB/s of RGB, best of {args.repeats}"
    )
    print(
        f"{'slide':30} {'tiles':>5} {'backend':9} {'pyramid':>8} {'per-tile':>9} {'read_region':>12} "
        f"{'raw':>7} {'pyramid/raw':>12} {'read_region/raw':>16}"
    )
    for p in slides:
        r = tile_throughput(p, args.tiles, args.repeats, args.seed)
        if not r:
            print(f"{p.name[:30]:30} (smaller than one 512 tile)")
            continue
        with open_slide(p) as s:
            backend = _BACKEND_NAMES.get(type(s).__name__, type(s).__name__)
        print(
            f"{p.name[:30]:30} {r['tiles']:5d} {backend:9} {r['ours_mb_s']:8.1f} {r['each_mb_s']:9.1f} "
            f"{r['direct_mb_s']:12.1f} {r['raw_mb_s']:7.1f} "
            f"{r['ours_mb_s'] / r['raw_mb_s']:12.2f} {r['direct_mb_s'] / r['raw_mb_s']:16.2f}"
        )
    print(
        "  pyramid = one dask compute for all tiles (as napari asks for a view); per-tile = "
        "one compute per tile;\n  raw = openslide.OpenSlide.read_region + numpy; ratio > 1 "
        "means ours is faster"
    )

    if phantom is not None and not args.no_pan:
        r = pan_memory(phantom, screen)
        print(
            f"\n(c) panning {phantom.name} at level 0, {r['views']} viewports of {screen[0]}x{screen[1]}"
        )
        print(
            f"RSS start {r['start_mb']:.0f} MB, peak {r['peak_mb']:.0f} MB "
            f"(+{r['peak_mb'] - r['start_mb']:.0f} MB), end {r['end_mb']:.0f} MB; "
            f"level 0 would be {r['level0_mb']:.0f} MB; {r['seconds']:.1f} s "
            f"({r['seconds'] / max(r['views'], 1) * 1000:.0f} ms per viewport)"
        )
    sys.stdout.flush()
    return 0


__all__ = ["add_arguments", "run", "napari_level", "bench_phantom", "write_streamed_pyramid"]
