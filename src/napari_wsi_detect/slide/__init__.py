"""Open whole-slide images: `open_slide(path) -> Slide`.

Backend choice: OpenSlide's own format detection first (vendor formats: Aperio,
Hamamatsu, MIRAX, Leica, Ventana, Sakura, Philips...); TIFFs that OpenSlide only knows
as "generic-tiff", OME-TIFFs and other TIFFs go to the tifffile backend, which reads
SubIFD pyramids, OME metadata and resolution tags (OpenSlide is the fallback when
tifffile cannot); PNG/JPEG images go to Pillow. Files that are none of these raise
`SlideOpenError` saying what the file looks like and what is supported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..errors import SlideOpenError
from .base import Slide
from .levels import Level
from .sniff import (
    SLIDE_EXTENSIONS,
    SUPPORTED,
    UnsupportedSlideError,
    check_file,
    fail,
    not_a_slide,
)
from .sniff import sniff as _sniff  # not `sniff`: that name is the submodule

__all__ = ["open_slide", "Slide", "Level", "SlideOpenError", "SUPPORTED"]

Backend = Literal["openslide", "tifffile", "image"]
_PLAIN_IMAGE_KINDS = {"PNG", "JPEG", "GIF", "BMP"}


def open_slide(path: str | os.PathLike[str], backend: Backend | None = None) -> Slide:
    """Open a whole-slide image or a plain image as a `Slide`.

    `backend` forces one reader ("openslide", "tifffile" or "image"); by default the
    file's contents decide (see the module docstring). Raises `SlideOpenError` with a
    message saying what is wrong when the file cannot be opened.
    """
    p = Path(path).expanduser()
    head = check_file(p)
    kind = _sniff(head)

    if backend == "openslide":
        from .openslide_backend import OpenSlideSlide

        return OpenSlideSlide(p)
    if backend == "tifffile":
        from .tiff_backend import TiffSlide

        return TiffSlide(p)
    if backend == "image":
        from .tiff_backend import ImageSlide

        return ImageSlide(p, kind)
    if backend is not None:
        raise ValueError(f"unknown backend {backend!r}")

    from .openslide_backend import OpenSlideSlide, detect_format

    fmt = detect_format(p)
    if fmt is not None and fmt != "generic-tiff":
        if kind == "TIFF":
            _check_tiff_complete(p)
        return OpenSlideSlide(p, fmt)
    if kind == "TIFF":
        from .tiff_backend import TiffSlide

        try:
            return TiffSlide(p)
        except UnsupportedSlideError:
            # tifffile read the file and its content is not supported (float pixels,
            # zero or absurd size...): OpenSlide would open it, then fail tile by tile
            # with libtiff's message.
            raise
        except SlideOpenError:
            if fmt != "generic-tiff":
                raise
            # A tiled TIFF OpenSlide reads but tifffile cannot interpret: let OpenSlide try.
            try:
                return OpenSlideSlide(p, fmt)
            except SlideOpenError:
                pass
            raise
    if kind in _PLAIN_IMAGE_KINDS:
        if p.suffix.lower() in SLIDE_EXTENSIONS:
            raise not_a_slide(p, kind, head)
        from .tiff_backend import ImageSlide

        return ImageSlide(p, kind)
    raise not_a_slide(p, kind, head)


def _check_tiff_complete(path: Path) -> None:
    """OpenSlide opens a truncated SVS happily and fails tile by tile later; catch the
    common case (an incomplete copy) at open time with tifffile's cheap header scan."""
    import tifffile

    from .sniff import file_size, tiff_truncation
    from .tiff_backend import implausible_size

    why = tiff_truncation(path)
    if why:
        raise fail(path, why)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            size = file_size(path)
            for page in tif.pages:
                why = implausible_size(page, size)
                if why:
                    raise fail(path, why, UnsupportedSlideError)
                ends = [
                    int(o) + int(c)
                    for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)
                ]
                if ends and max(ends) > size:
                    raise fail(
                        path,
                        f"truncated TIFF: the file is {size} bytes but its image data runs "
                        f"to {max(ends)} bytes; the copy is incomplete",
                    )
    except SlideOpenError:
        raise
    except Exception as exc:
        raise fail(path, f"damaged or truncated TIFF ({type(exc).__name__}: {exc})") from exc


# Keep the message list importable for the CLI and docs.
SUPPORTED_FORMATS = SUPPORTED
