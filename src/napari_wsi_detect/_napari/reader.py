"""npe2 reader: drag a slide onto napari, get a multiscale RGB layer in µm.

Which files are ours. napari picks a reader by filename pattern only, so the manifest
lists the vendor extensions and the TIFF ones; this module then looks inside the file
and returns `None` for anything that is not a whole-slide image, so a 16-bit
fluorescence TIFF, a z-stack or a photo is left to napari's builtins with its dtype and
shape intact (our layers are always 8-bit RGB). A file is a slide when

* its extension is a vendor one (`VENDOR_SUFFIXES`): always claimed, so a broken .svs
  gets our "cannot open ... (why)" error rather than a generic one; or
* it is a TIFF that OpenSlide recognises as a vendor format (Philips, Ventana, an Aperio
  file renamed .tif ...); or
* it is an 8-bit RGB(A) 2-D TIFF (no z, time or channel axis) that is tiled, pyramidal
  or at least `MIN_PLAIN_SLIDE_SIDE` px on a side.

Opening is cheap (metadata + a lazy dask pyramid); nothing is computed until napari asks
for the tiles it shows. A claimed file that cannot be opened raises `SlideOpenError`,
which napari reports as a notification without adding a layer.

The "Choose reader" dialog. napari shows it whenever two installed readers match a file
name and the user has saved no preference (`settings.plugins.extension2reader`);
napari's builtins match *.svs, *.ndpi, *.scn, *.bif and every TIFF. A plugin cannot
rank itself above them in the manifest, and npe2 runs no plugin code at start-up. So the
first time this reader runs, `prefer_for_vendor_slides` saves napari-wsi-detect as the
reader of the vendor extensions that only the builtins also claim, unless the user has
already chosen one (see docs/slides.md, "Opening slides in napari"). TIFFs keep napari's
dialog: most TIFFs are not slides.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_wsi_detect._napari.layers import LayerData, slide_layer_data

PLUGIN_NAME = "napari-wsi-detect"
# Keep both in sync with the `filename_patterns` of the reader in napari.yaml.
VENDOR_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff", ".ptif", ".ptiff")
SLIDE_SUFFIXES = VENDOR_SUFFIXES + TIFF_SUFFIXES
# A single-level, untiled 8-bit RGB TIFF this big is a slide export, not a photo.
MIN_PLAIN_SLIDE_SIDE = 10_000
# Set to 1 to keep napari-wsi-detect out of napari's reader preferences.
NO_PREFERENCE_ENV = "NAPARI_WSI_DETECT_NO_READER_PREFERENCE"

PathLike = str | os.PathLike[str]

_preference_checked = False


def is_slide_path(path: PathLike) -> bool:
    """True when `path` is a whole-slide image this reader should open (see module
    docstring); reads at most the TIFF header."""
    p = Path(path)
    name = p.name.lower()
    if not name.endswith(SLIDE_SUFFIXES) or p.is_dir():
        return False
    if name.endswith(VENDOR_SUFFIXES):
        return True
    return is_slide_tiff(p)


def is_slide_tiff(path: Path) -> bool:
    """A TIFF OpenSlide knows as a vendor format, or an 8-bit RGB(A) 2-D TIFF that is
    tiled, pyramidal or large. False for anything else, unreadable files included."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if head not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return False
    from napari_wsi_detect.slide.openslide_backend import detect_format

    fmt = detect_format(path)
    if fmt is not None and fmt != "generic-tiff":
        return True
    import numpy as np
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages.first
            rgb = (
                page.dtype == np.uint8
                and int(page.samplesperpixel) in (3, 4)
                and int(page.photometric) in (2, 6)  # RGB, YCbCr (JPEG)
            )
            if not rgb:
                return False
            series = tif.series[0]
            if len(series.shape) != 3 or series.axes[-1] != "S":  # z/t/channel stacks
                return False
            pyramidal = len(series.levels) > 1 or bool(page.subifds)
            return bool(page.is_tiled or pyramidal or max(page.shape[:2]) >= MIN_PLAIN_SLIDE_SIDE)
    except Exception:  # not a TIFF tifffile can parse: not ours to explain
        return False


def napari_get_reader(path: PathLike | Sequence[PathLike]) -> Callable[..., list[LayerData]] | None:
    """Return `read_slides` when every path is a whole-slide image, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(is_slide_path(p) for p in paths):
        return None
    _prefer_once()
    return read_slides


def read_slides(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """One image layer per slide; raises SlideOpenError for an unreadable file."""
    from napari_wsi_detect.slide import open_slide

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    # The Slide stays open: the layer's dask arrays read from it while it is shown.
    return [slide_layer_data(open_slide(p)) for p in paths]


# --- napari reader preference ------------------------------------------------------------------
def prefer_for_vendor_slides(settings=None) -> list[str]:
    """Save napari-wsi-detect as napari's reader for each vendor pattern ("*.svs" ...)
    that the user has no preference for and that no other third-party reader claims
    (napari's builtins are the only competitor we settle). Returns the patterns added.

    Never overwrites a preference; does nothing when $NAPARI_WSI_DETECT_NO_READER_PREFERENCE
    is set or napari is not importable. Remove an entry in Preferences > Plugins."""
    if os.environ.get(NO_PREFERENCE_ENV, "").strip() not in ("", "0"):
        return []
    try:
        from npe2 import PluginManager

        if settings is None:
            from napari.settings import get_settings

            settings = get_settings()
    except Exception:  # no napari: nothing to configure
        return []
    pm = PluginManager.instance()
    if PLUGIN_NAME not in {mf.name for mf in pm.iter_manifests()}:
        pm.discover()  # outside napari's start-up (a script): find the installed readers
    current = dict(settings.plugins.extension2reader)
    added = []
    for suffix in VENDOR_SUFFIXES:
        pattern = f"*{suffix}"
        if pattern in current:
            continue
        claimants = {r.plugin_name for r in pm.iter_compatible_readers([f"slide{suffix}"])}
        if claimants == {PLUGIN_NAME, "napari"}:  # napari would ask; settle it
            added.append(pattern)
    if added:
        settings.plugins.extension2reader = {**current, **dict.fromkeys(added, PLUGIN_NAME)}
    return added


def _prefer_once() -> None:
    global _preference_checked
    if _preference_checked:
        return
    _preference_checked = True
    try:
        prefer_for_vendor_slides()
    except Exception:  # a settings problem must never stop a slide from opening
        pass
