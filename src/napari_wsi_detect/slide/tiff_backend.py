"""tifffile backend (OME-TIFF, generic pyramidal or plain TIFF, our phantoms) and a
small-image backend (PNG, JPEG, ... via Pillow).

Tiles are read with `os.pread`, which has no shared file position, so reader threads
need no lock around I/O; decoding runs in imagecodecs without the GIL. Decoded tiles
go through a small LRU cache (bounded in bytes).
"""

from __future__ import annotations

import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..errors import SlideOpenError, SlideReadError
from ._cache import TileCache
from .base import Slide, composite_on_white
from .levels import Level
from .sniff import UnsupportedSlideError, fail, file_size, tiff_truncation

_TILE_CACHE_BYTES = 64 * 2**20
# A single strip/tile bigger than this would make every small read decode it whole.
_MAX_SEGMENT_BYTES = 256 * 2**20
# Small images are held in memory whole; beyond this they should be pyramidal TIFFs.
_MAX_PLAIN_IMAGE_PIXELS = 200_000_000
# Plausible microscope pixel sizes; outside this a resolution tag is a scanner/office
# default (72 or 300 dpi give 353 or 85 µm/px) and says nothing about the specimen.
_MPP_RANGE = (0.01, 20.0)
_ASSOCIATED_KEYS = ("label", "macro", "thumbnail", "overview")
# Sanity bound on what a file may declare: uncompressed pixel bytes per byte of file.
# JPEG slides store 20-300x, zstd/WebP on blank glass tiles up to ~8000x; a header
# claiming more than this describes pixels the file cannot hold (damaged or hostile), and
# reading it would take hours. Only checked for levels above _SANITY_MIN_RAW_BYTES.
_MAX_DECLARED_RATIO = 100_000
_SANITY_MIN_RAW_BYTES = 2**30
# TIFF's own limits: 32-bit dimensions; anything larger is a damaged header.
_MAX_SIDE = 2**31 - 1


def plausible_mpp(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp):
        return None
    return mpp if _MPP_RANGE[0] < mpp < _MPP_RANGE[1] else None


def mpp_from_resolution(x_resolution: float | None, unit: int | None) -> float | None:
    """µm/px from TIFF XResolution (pixels per unit) and ResolutionUnit (2 inch, 3 cm).
    Unit NONE (1) means the numbers have no physical meaning: ignore them."""
    if not x_resolution or x_resolution <= 0 or unit is None:
        return None
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(int(unit))
    if per_unit_um is None:
        return None
    return plausible_mpp(per_unit_um / x_resolution)


_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _ome_metadata(xml: str) -> tuple[float | None, float | None]:
    """(mpp, objective magnification) from OME-XML, first image."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    mpp = power = None
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp is None and el.get("PhysicalSizeX"):
            scale = _OME_UNITS_UM.get(el.get("PhysicalSizeXUnit", "µm"))
            try:
                if scale is not None:
                    mpp = plausible_mpp(float(el.get("PhysicalSizeX", "")) * scale)
            except ValueError:
                pass
        elif tag == "Objective" and power is None and el.get("NominalMagnification"):
            try:
                power = float(el.get("NominalMagnification", "")) or None
            except ValueError:
                pass
    return mpp, power


def _to_rgb_converter(page: tifffile.TiffPage) -> Any:
    """A function turning a decoded (h, w, samples) segment into RGB uint8, or raise
    SlideOpenError for pixel types a brightfield viewer cannot show."""
    photometric = int(page.photometric)
    spp = int(page.samplesperpixel)
    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    if dtype is None or dtype.kind not in "ub" or dtype.itemsize > 2:
        raise UnsupportedSlideError(
            f"pixel type {dtype} is not supported: only 8- or 16-bit brightfield images "
            "(a float or 32-bit TIFF is a measurement or fluorescence image, not a scan)"
        )
    shift = 8 if dtype.itemsize == 2 else 0
    has_alpha = bool(page.extrasamples) and int(page.extrasamples[0]) in (1, 2)
    colormap = page.colormap

    def to8(a: np.ndarray) -> np.ndarray:
        if a.dtype == bool:
            return a.astype(np.uint8) * 255
        return (a >> shift).astype(np.uint8) if shift else a.astype(np.uint8, copy=False)

    if photometric in (0, 1):  # MINISWHITE, MINISBLACK
        invert = photometric == 0

        def gray(a: np.ndarray) -> np.ndarray:
            g = to8(a[..., 0])
            if invert:
                g = 255 - g
            rgb = np.repeat(g[..., None], 3, axis=2)
            if spp >= 2 and has_alpha:
                return composite_on_white(np.dstack([rgb, to8(a[..., 1])]))
            return rgb

        return gray
    if photometric == 3 and colormap is not None:  # PALETTE
        lut = (np.asarray(colormap).T >> 8).astype(np.uint8)
        return lambda a: lut[a[..., 0]]
    if photometric in (2, 6) and spp >= 3:  # RGB; YCbCr JPEG decodes to RGB
        if spp >= 4 and has_alpha:
            return lambda a: composite_on_white(to8(a[..., :4]))
        return lambda a: np.ascontiguousarray(to8(a[..., :3]))
    raise UnsupportedSlideError(
        f"photometric interpretation {page.photometric!r} with {spp} samples is not "
        "supported: only RGB, grayscale and palette brightfield images"
    )


def is_greyscale_page(page: tifffile.TiffPage) -> bool:
    """True for MINISWHITE/MINISBLACK pages and palettes whose entries are all grey."""
    photometric = int(page.photometric)
    if photometric in (0, 1):
        return True
    if photometric == 3 and page.colormap is not None:
        cmap = np.asarray(page.colormap)
        return bool(cmap.ndim == 2 and cmap.shape[0] >= 3
                    and (cmap[0] == cmap[1]).all() and (cmap[1] == cmap[2]).all())
    return False


def _check_declared_size(page: tifffile.TiffPage) -> None:
    """UnsupportedSlideError when the page's declared geometry cannot be real: a zero or
    absurd width/height/tile size, or fewer tile/strip offsets than the size needs."""
    h, w = int(page.imagelength), int(page.imagewidth)
    if h <= 0 or w <= 0:
        raise UnsupportedSlideError(
            f"the TIFF declares a {w} x {h} px image (ImageWidth x ImageLength): an image "
            "without pixels; the header is damaged"
        )
    if h > _MAX_SIDE or w > _MAX_SIDE:
        raise UnsupportedSlideError(
            f"the TIFF declares a {w} x {h} px image, beyond TIFF's limits; the header is "
            "damaged"
        )
    tiles_declared = "TileWidth" in page.tags or "TileLength" in page.tags
    if page.is_tiled or tiles_declared:
        th, tw = int(page.tilelength), int(page.tilewidth)
        if th <= 0 or tw <= 0:
            raise UnsupportedSlideError(
                f"the TIFF declares {tw} x {th} px tiles (TileWidth x TileLength); the "
                "header is damaged"
            )
        seg_h, seg_w = th, tw
    else:
        seg_h, seg_w = min(max(int(page.rowsperstrip or h), 1), h), w
    planes = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
    needed = (-(-h // seg_h)) * (-(-w // seg_w)) * max(planes, 1)
    n_offsets = len(page.dataoffsets)
    if n_offsets < needed or len(page.databytecounts) < needed:
        raise UnsupportedSlideError(
            f"the TIFF declares a {w} x {h} px image in {needed} "
            f"{'tiles' if page.is_tiled else 'strips'} but stores {n_offsets} data "
            "offsets; the header is damaged or the file is not a complete slide"
        )


def implausible_size(page: tifffile.TiffPage, file_bytes: int) -> str | None:
    """Why `page`'s declared size cannot be stored in a file of `file_bytes`, or None."""
    raw = (int(page.imagelength) * int(page.imagewidth) * int(page.samplesperpixel)
           * max(int(page.bitspersample or 8), 1) // 8)
    if raw > _SANITY_MIN_RAW_BYTES and raw > _MAX_DECLARED_RATIO * max(file_bytes, 1):
        return (
            f"the TIFF declares a {int(page.imagewidth)} x {int(page.imagelength)} px image "
            f"({_human_bytes(raw)} of pixels) but the whole file is "
            f"{_human_bytes(file_bytes)}: no compression packs that much, so the header "
            "is damaged or the file is not a real slide"
        )
    return None


def _human_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} PB"  # pragma: no cover


class _PageReader:
    """Rectangles of one TIFF page (tiled or striped), decoded segment by segment."""

    def __init__(self, owner: TiffSlide, key: int, page: tifffile.TiffPage) -> None:
        self.owner = owner
        self.key = key
        self.page = page
        _check_declared_size(page)
        self.h, self.w = int(page.imagelength), int(page.imagewidth)
        if page.is_tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            rps = int(page.rowsperstrip or self.h)
            self.seg_h, self.seg_w = min(max(rps, 1), self.h), self.w
        self.rows = -(-self.h // self.seg_h)
        self.cols = -(-self.w // self.seg_w)
        self.nseg = self.rows * self.cols
        self.separate = int(page.planarconfig) == 2 and int(page.samplesperpixel) > 1
        self.planes = int(page.samplesperpixel) if self.separate else 1
        self.offsets = page.dataoffsets
        self.counts = page.databytecounts
        self.decode = page.decode
        self.decodeargs: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
        if int(page.compression) in {6, 7, 34892, 33007}:
            self.decodeargs["jpegtables"] = page.jpegtables
            self.decodeargs["jpegheader"] = page.jpegheader
        self.convert = _to_rgb_converter(page)
        seg_bytes = (
            self.seg_h * self.seg_w * int(page.samplesperpixel) * np.dtype(page.dtype).itemsize
        )
        if seg_bytes > _MAX_SEGMENT_BYTES:
            raise SlideOpenError(
                f"the image is stored as one {self.seg_w}x{self.seg_h} block, too large to "
                "read piece by piece; convert it to a tiled pyramidal TIFF (e.g. "
                "`vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg`)"
            )
        self.seg_bytes = seg_bytes

    def _decode_one(self, index: int) -> np.ndarray | None:
        offset, count = int(self.offsets[index]), int(self.counts[index])
        if count == 0:
            return None  # sparse file: a tile that was never written
        data = self.owner._pread(offset, count)
        if len(data) != count:
            raise SlideReadError(
                f"{self.owner.path.name}: tile {index} is cut off (file is truncated)"
            )
        try:
            seg, _, _ = self.decode(data, index, **self.decodeargs)
        except Exception as exc:  # codec errors come in many types
            raise SlideReadError(
                f"{self.owner.path.name}: tile {index} of level {self.key} is corrupt "
                f"and cannot be decoded ({type(exc).__name__}: {exc})"
            ) from exc
        return None if seg is None else seg[0]  # drop the depth axis

    def segment(self, r: int, c: int) -> np.ndarray:
        """RGB uint8 of segment (r, c), cropped to the image."""
        key = (self.key, r, c)
        cache = self.owner._tile_cache
        cached = cache.get(key)
        if cached is not None:
            return cached
        sh = min(self.seg_h, self.h - r * self.seg_h)
        sw = min(self.seg_w, self.w - c * self.seg_w)
        index = r * self.cols + c
        if self.separate:
            planes = [self._decode_one(p * self.nseg + index) for p in range(self.planes)]
            if any(p is None for p in planes):
                raw = None
            else:
                raw = np.concatenate([p[:sh, :sw] for p in planes], axis=-1)  # type: ignore[index]
        else:
            raw = self._decode_one(index)
        if raw is None:
            rgb = np.full((sh, sw, 3), 255, np.uint8)
        else:
            rgb = self.convert(raw[:sh, :sw])
        cache.put(key, rgb)
        return rgb

    def read(self, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        x0, x1 = max(lx, 0), min(lx + w, self.w)
        y0, y1 = max(ly, 0), min(ly + h, self.h)
        if x0 >= x1 or y0 >= y1:
            return out
        sh, sw = self.seg_h, self.seg_w
        for r in range(y0 // sh, (y1 - 1) // sh + 1):
            for c in range(x0 // sw, (x1 - 1) // sw + 1):
                seg = self.segment(r, c)
                ix0, iy0 = max(x0, c * sw), max(y0, r * sh)
                ix1, iy1 = min(x1, c * sw + seg.shape[1]), min(y1, r * sh + seg.shape[0])
                out[iy0 - ly : iy1 - ly, ix0 - lx : ix1 - lx] = seg[
                    iy0 - r * sh : iy1 - r * sh, ix0 - c * sw : ix1 - c * sw
                ]
        return out


class TiffSlide(Slide):
    """Pyramidal (SubIFD or page-sequence levels) or plain TIFF, including OME-TIFF."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._tile_cache = TileCache(_TILE_CACHE_BYTES)
        self._io_lock = threading.Lock()
        why = tiff_truncation(self.path)
        if why:
            raise fail(self.path, why)
        try:
            self._tif = tifffile.TiffFile(str(path))
        except Exception as exc:  # tifffile raises many types on damaged headers
            raise fail(
                self.path, f"damaged or truncated TIFF ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            self._init_from_tiff()
        except BaseException:
            self._tif.close()
            raise
        self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def _init_from_tiff(self) -> None:
        tif = self._tif
        try:
            first = tif.pages.first
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types
            raise fail(self.path, f"damaged TIFF ({type(exc).__name__}: {exc})") from exc
        h0, w0 = int(getattr(first, "imagelength", 0)), int(getattr(first, "imagewidth", 0))
        if h0 <= 0 or w0 <= 0:
            raise fail(
                self.path,
                f"the TIFF declares a {w0} x {h0} px image (ImageWidth x ImageLength): an "
                "image without pixels; the header is damaged",
                UnsupportedSlideError,
            )
        try:
            all_series = tif.series
        except Exception as exc:  # noqa: BLE001 - e.g. ZeroDivisionError on odd pages
            raise fail(
                self.path,
                f"damaged TIFF: its image directories cannot be interpreted "
                f"({type(exc).__name__}: {exc})",
            ) from exc
        if not all_series:
            raise fail(self.path, "the TIFF holds no image")
        series = max(
            (s for s in tif.series if not _is_associated(s)),
            key=lambda s: s.levels[0].keyframe.imagewidth * s.levels[0].keyframe.imagelength,
            default=tif.series[0],
        )
        self._series = series
        size = file_size(self.path)
        readers: list[_PageReader] = []
        levels: list[Level] = []
        for i, lvl in enumerate(series.levels):
            page = lvl.keyframe
            if len(lvl.pages) > 1 or int(getattr(page, "imagedepth", 1)) > 1:
                if i == 0:
                    raise fail(
                        self.path,
                        f"a multi-plane image ({len(lvl.pages)} planes, axes {series.axes}); "
                        "only single-plane RGB or grayscale brightfield images are supported",
                        UnsupportedSlideError,
                    )
                break
            try:
                _check_declared_size(page)
            except SlideOpenError as exc:
                if i == 0:
                    raise fail(self.path, str(exc), type(exc)) from exc
                break  # a damaged reduced level: keep the good ones above it
            end = max(
                (
                    int(o) + int(c)
                    for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)
                ),
                default=0,
            )
            if end > size:
                raise fail(
                    self.path,
                    f"truncated TIFF: the file is {size} bytes but its image data runs to "
                    f"{end} bytes; the copy is incomplete",
                )
            why = implausible_size(page, size)
            if why:
                raise fail(self.path, why, UnsupportedSlideError)
            try:
                reader = _PageReader(self, i, page)
            except Exception as exc:  # noqa: BLE001 - tifffile raises many types
                if i > 0:
                    break  # an unreadable reduced level: keep the levels above it
                if isinstance(exc, SlideOpenError):
                    raise fail(self.path, str(exc), type(exc)) from exc
                raise fail(
                    self.path,
                    f"damaged TIFF: its image directory cannot be interpreted "
                    f"({type(exc).__name__}: {exc})",
                ) from exc
            readers.append(reader)
        self._readers = readers
        h0, w0 = readers[0].h, readers[0].w
        for r in readers:
            ds = (w0 / r.w + h0 / r.h) / 2.0
            tile = (r.seg_h, r.seg_w) if r.page.is_tiled else None
            levels.append(Level((r.h, r.w), ds, tile=tile))
        # Keep levels strictly decreasing (a few writers add odd extra pages).
        keep = [0] + [i for i in range(1, len(levels)) if levels[i].width < levels[i - 1].width]
        self._readers = [readers[i] for i in keep]
        self._set_levels([levels[i] for i in keep])

        page0 = readers[0].page
        self.colour = "greyscale" if is_greyscale_page(page0) else "rgb"
        self.vendor = "ome-tiff" if tif.is_ome else "tiff"
        self.mpp, self.objective_power = self._metadata(page0)
        self.properties = {
            "tifffile.series": series.name or series.kind,
            "tifffile.axes": series.axes,
            "tiff.compression": str(page0.compression),
            "tiff.photometric": str(page0.photometric),
        }
        self._associated = {}
        for s in tif.series:
            if s is series:
                continue
            name = _associated_name(s)
            if name and name not in self._associated:
                self._associated[name] = s

    def _metadata(self, page0: tifffile.TiffPage) -> tuple[float | None, float | None]:
        mpp = power = None
        if self._tif.is_ome and self._tif.ome_metadata:
            mpp, power = _ome_metadata(self._tif.ome_metadata)
        desc = page0.description or ""
        if mpp is None:  # Aperio-style description (an SVS read without OpenSlide)
            m = re.search(r"\bMPP\s*=\s*([0-9.]+)", desc)
            if m:
                mpp = plausible_mpp(float(m.group(1)))
        if power is None:
            m = re.search(r"\bAppMag\s*=\s*([0-9.]+)", desc)
            power = float(m.group(1)) if m else None
        if mpp is None:
            tags = page0.tags
            xres = tags.get("XResolution")
            unit = tags.get("ResolutionUnit")
            xr = None
            if xres is not None:
                num, den = xres.value
                xr = num / den if den else None
            unit_value = int(unit.value) if unit is not None else 2  # TIFF default: inch
            mpp = mpp_from_resolution(xr, unit_value)
            if mpp is None and xr and page0.is_imagej and unit_value == 1:
                ij_unit = str((self._tif.imagej_metadata or {}).get("unit", "")).lower()
                if ij_unit in ("micron", "um", "µm", "\\u00b5m"):
                    mpp = plausible_mpp(1.0 / xr)
        return mpp, power

    def _pread(self, offset: int, count: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd, count, offset)
        with self._io_lock:  # pragma: no cover - Windows
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, count)

    def segment_shape(self, level: int) -> tuple[int, int]:
        if level < len(self._readers):
            r = self._readers[level]
            return (r.seg_h, r.seg_w)
        return super().segment_shape(level)

    def _read_native(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._closed:
            raise SlideReadError(f"{self.path.name} is closed")
        ds = self.levels[level].downsample
        lx = int(math.floor(x / ds + 0.5))
        ly = int(math.floor(y / ds + 0.5))
        try:
            return self._readers[level].read(lx, ly, w, h)
        except OSError as exc:
            raise SlideReadError(f"could not read {self.path.name}: {exc}") from exc

    @property
    def associated_names(self) -> list[str]:
        return sorted(self._associated)

    def associated_image(self, name: str) -> np.ndarray:
        series = self._associated.get(name)
        if series is None:
            return super().associated_image(name)
        page = series.levels[-1].keyframe
        if page.imagewidth * page.imagelength > _MAX_PLAIN_IMAGE_PIXELS:
            raise SlideReadError(f"the {name} image of {self.path.name} is too large to load")
        try:
            with self._io_lock:  # tifffile's own reads share one file position
                arr = page.asarray()
            return _to_rgb_converter(page)(arr.reshape(page.imagelength, page.imagewidth, -1))
        except SlideOpenError as exc:
            raise SlideReadError(f"the {name} image of {self.path.name}: {exc}") from exc
        except Exception as exc:
            raise SlideReadError(
                f"could not read the {name} image of {self.path.name}: {exc}"
            ) from exc

    def _close_backend(self) -> None:
        self._tile_cache.clear()
        self._tif.close()
        os.close(self._fd)


def _associated_name(series: tifffile.TiffPageSeries) -> str | None:
    name = (series.name or "").lower()
    for key in _ASSOCIATED_KEYS:
        if key in name:
            return key
    return None


def _is_associated(series: tifffile.TiffPageSeries) -> bool:
    return _associated_name(series) is not None


class ImageSlide(Slide):
    """A plain image (PNG, JPEG, ...) held in memory: high-power fields, tiles."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__()
        from PIL import Image

        self.path = Path(path)
        try:
            with Image.open(path) as img:
                if img.width * img.height > _MAX_PLAIN_IMAGE_PIXELS:
                    raise fail(
                        self.path,
                        f"a {img.width}x{img.height} {kind} is too large to hold in memory; "
                        "convert it to a tiled pyramidal TIFF",
                    )
                dpi = img.info.get("dpi")
                grey = img.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L")
                rgba = np.asarray(img.convert("RGBA"))
        except SlideOpenError:
            raise
        except Image.DecompressionBombError as exc:
            raise fail(
                self.path,
                f"this {kind} is too large to hold in memory; convert it to a tiled pyramidal TIFF",
            ) from exc
        except Exception as exc:
            raise fail(self.path, f"damaged or truncated {kind} image ({exc})") from exc
        self._rgb = composite_on_white(rgba)
        self._rgb.flags.writeable = False
        self.colour = "greyscale" if grey else "rgb"
        self.vendor = f"image ({kind})"
        self.objective_power = None
        self.mpp = None
        if dpi and dpi[0]:
            self.mpp = plausible_mpp(25400.0 / float(dpi[0]))
        h, w = self._rgb.shape[:2]
        self._set_levels([Level((h, w), 1.0)])

    def _read_native(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self._rgb.shape[:2]
        x0, x1, y0, y1 = max(x, 0), min(x + w, W), max(y, 0), min(y + h, H)
        if x0 < x1 and y0 < y1:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._rgb[y0:y1, x0:x1]
        return out
