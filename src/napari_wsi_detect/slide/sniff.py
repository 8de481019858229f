"""Why a file is not a slide: checks run before any backend, so a pathologist gets
"file is empty" or "looks like a PNG image named .svs" rather than a library traceback."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SlideOpenError

SUPPORTED = (
    "Supported: Aperio .svs, Hamamatsu .ndpi/.vms/.vmu, MIRAX .mrxs, Leica .scn, "
    "Ventana .bif, Sakura .svslide and tiled TIFF (read with OpenSlide); OME-TIFF and "
    "pyramidal or plain TIFF (read with tifffile); PNG and JPEG images."
)

# Extensions that promise a whole-slide file: a plain image behind one is a mistake.
SLIDE_EXTENSIONS = {".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide"}

_MAGIC = [
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "gzip"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
]


class UnsupportedSlideError(SlideOpenError):
    """The file was read and what it holds is definitely not supported (a pixel type,
    colour model, size or layout no backend here shows). `open_slide` does not hand such
    a file to another backend: OpenSlide would open it and fail later, tile by tile,
    with libtiff's message instead of this one."""


def fail(path: Path, what: str, cls: type[SlideOpenError] = SlideOpenError) -> SlideOpenError:
    return cls(f"cannot open {path}: {what}. {SUPPORTED}")


def check_file(path: Path) -> bytes:
    """Raise SlideOpenError for a missing, directory, empty or unreadable path; return
    the first bytes of the file for `sniff`."""
    if not path.exists():
        raise fail(path, "file not found (check the path and that the drive is mounted)")
    if path.is_dir():
        raise fail(
            path,
            "this is a directory, not a slide file (for MIRAX give the .mrxs file beside "
            "the folder; DICOM folders are not supported)",
        )
    try:
        size = path.stat().st_size
        if size == 0:
            raise fail(path, "file is empty (0 bytes); the copy or download is incomplete")
        with open(path, "rb") as fh:
            return fh.read(512)
    except PermissionError as exc:
        raise fail(path, f"permission denied ({exc.strerror})") from exc
    except OSError as exc:
        if isinstance(exc, SlideOpenError):
            raise
        raise fail(path, f"the file cannot be read ({exc.strerror or exc})") from exc


def sniff(head: bytes) -> str:
    """A short name of the file type from its first bytes: 'TIFF', 'PNG', ..., 'DICOM',
    'text' or 'unknown'."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    sample = head[:512]
    if sample and all(b in b"\t\n\r" or 32 <= b < 127 or b >= 128 for b in sample):
        try:
            sample.decode("utf-8")
            return "text"
        except UnicodeDecodeError:
            pass
    return "unknown"


def not_a_slide(path: Path, kind: str, head: bytes) -> SlideOpenError:
    suffix = path.suffix.lower() or "(no extension)"
    if kind == "text":
        first = head.decode("utf-8", "replace").strip().splitlines()
        start = (first[0][:40] + "...") if first else ""
        return fail(path, f"not a slide: it is a text file named {suffix} (starts {start!r})")
    if kind == "unknown":
        return fail(path, f"not a slide: unrecognised file contents for a {suffix} file")
    noun = _NOUNS.get(kind, f"{kind} image")
    article = "an" if noun[0] in "AEIOU" else "a"
    return fail(path, f"not a slide: looks like {article} {noun} named {suffix}")


_NOUNS = {
    "PDF": "PDF document",
    "ZIP": "ZIP archive (unpack it first)",
    "gzip": "gzip archive (unpack it first)",
    "DICOM": "DICOM file (DICOM whole-slide images are not supported)",
}


def file_size(path: Path) -> int:
    return os.stat(path).st_size


def tiff_truncation(path: Path) -> str | None:
    """Walk the TIFF directory chain; return why the file is truncated, or None.

    tifffile only logs a directory that points past the end of the file and carries on
    with the pages before it, so an incomplete copy would otherwise open as a smaller
    slide (or fail later, tile by tile).
    """
    import struct

    size = file_size(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
        if len(head) < 8:
            return f"the file is only {size} bytes, shorter than a TIFF header"
        order = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        if big:
            offset = struct.unpack(order + "Q", head[8:16])[0]
            count_fmt, count_size, entry_size, next_fmt, next_size = "Q", 8, 20, "Q", 8
        else:
            offset = struct.unpack(order + "I", head[4:8])[0]
            count_fmt, count_size, entry_size, next_fmt, next_size = "H", 2, 12, "I", 4
        seen: set[int] = set()
        while offset and offset not in seen and len(seen) < 100_000:
            seen.add(offset)
            if offset + count_size > size:
                return (
                    f"truncated TIFF: the file is {size} bytes but directory {len(seen)} "
                    f"starts at byte {offset}; the copy is incomplete"
                )
            fh.seek(offset)
            (count,) = struct.unpack(order + count_fmt, fh.read(count_size))
            end = offset + count_size + count * entry_size + next_size
            if end > size:
                return (
                    f"truncated TIFF: the file is {size} bytes but directory {len(seen)} "
                    f"runs to byte {end}; the copy is incomplete"
                )
            fh.seek(offset + count_size + count * entry_size)
            (offset,) = struct.unpack(order + next_fmt, fh.read(next_size))
    return None
