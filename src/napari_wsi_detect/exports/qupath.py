"""A QuPath-ready overlay of a run: a pyramidal OME-TIFF of the heatmap, colour-mapped
with transparency, beside the run's GeoJSON (`wsi-detect export qupath RUN_DIR`).

The TIFF (RGBA, 8 bit, unassociated alpha, tiled, zlib) has one pixel per map cell:
its pixel (i, j) covers the level-0 block [j·s, (j+1)·s) × [i·s, (i+1)·s) of the slide,
s = `MapGeometry.cell_size0`, so it starts at the slide's origin and its pixel size is
the slide's level-0 pixel size × s (written in the OME-XML as PhysicalSizeX/Y in µm
and in the TIFF resolution tags, pixels per cm). Reduced levels (halved, NaN-aware
means of the map, then coloured) are SubIFDs, the pyramid layout Bio-Formats and
QuPath read. Not computed and low-probability cells are transparent.

The colour ramp is the napari heatmap's (inferno with the opacity rising from 0.55 at
p = 0.2 to 0.8 at p = 1); below p = 0.1 nothing is drawn, so the overlay only marks
where the model sees something. docs/results-elsewhere.md says how to show it in QuPath.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WsiDetectError
from .run_view import RunView

# p -> opacity of the overlay (linear between the points); transparent below 0.1
ALPHA_CONTROLS = ((0.0, 0.0), (0.1, 0.0), (0.2, 0.55), (0.5, 0.65), (0.75, 0.75),
                  (1.0, 0.8))
TILE = 256


LUT_SIZE = 256
STRIP_ROWS = 1024


def _lut() -> np.ndarray:
    """(LUT_SIZE, 4) uint8 RGBA for p = i / (LUT_SIZE - 1)."""
    from matplotlib import colormaps

    q = np.linspace(0.0, 1.0, LUT_SIZE)
    rgb = colormaps["inferno"](np.maximum(q, 0.15))[:, :3]
    xs, ys = zip(*ALPHA_CONTROLS, strict=True)
    lut = np.empty((LUT_SIZE, 4), np.uint8)
    lut[:, :3] = np.round(rgb * 255)
    lut[:, 3] = np.round(np.interp(q, xs, ys) * 255)
    return lut


def colour_map(prob: np.ndarray) -> np.ndarray:
    """(rows, cols, 4) uint8 RGBA of a probability map (NaN -> fully transparent),
    through a 256-entry table, strip by strip: memory ~ 4 bytes per cell however big
    the map (a whole-slide mitosis map has ~10^8 cells)."""
    p = np.asarray(prob, np.float32)
    lut = _lut()
    out = np.empty(p.shape + (4,), np.uint8)
    for r0 in range(0, p.shape[0], STRIP_ROWS):
        strip = p[r0:r0 + STRIP_ROWS]
        finite = np.isfinite(strip)
        idx = np.rint(np.clip(np.where(finite, strip, 0.0), 0.0, 1.0) * (LUT_SIZE - 1))
        rgba = lut[idx.astype(np.uint8)]
        rgba[~finite] = 0
        out[r0:r0 + STRIP_ROWS] = rgba
    return out


def write_overlay(view: RunView, path: str | os.PathLike) -> Path:
    """Write the pyramidal OME-TIFF overlay of `view`'s heatmap at `path`, atomically."""
    import tifffile

    from .._atomic import atomic_path
    from .ngff import pyramid

    path = Path(path)
    image = view.heatmap
    g = image.geometry
    px_um = float(g.cell_um)
    levels = [colour_map(lv) for lv in pyramid(image.values)]
    opts: dict[str, Any] = {"photometric": "rgb", "extrasamples": ("UNASSALPHA",),
                            "tile": (TILE, TILE), "compression": "zlib",
                            "resolutionunit": "CENTIMETER"}
    metadata = {"axes": "YXS", "Name": image.title,
                "PhysicalSizeX": px_um, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": px_um, "PhysicalSizeYUnit": "µm"}
    big = sum(lv.nbytes for lv in levels) > 2 ** 31
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=big, ome=True) as tif:
            per_cm = 1e4 / px_um
            tif.write(levels[0], subifds=len(levels) - 1, resolution=(per_cm, per_cm),
                      metadata=metadata, **opts)
            for k, lv in enumerate(levels[1:], start=1):
                f = per_cm / 2 ** k
                tif.write(lv, subfiletype=1, resolution=(f, f), **opts)
    except OSError as exc:
        raise WsiDetectError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def default_overlay_name(view: RunView) -> str:
    return f"{view.task}-overlay.ome.tif"


def export_qupath(run_dir: str | os.PathLike, out: str | os.PathLike | None = None
                  ) -> tuple[Path, Path]:
    """`wsi-detect export qupath RUN_DIR [--out F]`: the overlay at F (default
    RUN_DIR/<task>-overlay.ome.tif) and the run's GeoJSON beside it (copied when F is
    in another folder). Returns (overlay, geojson)."""
    from .._atomic import atomic_path
    from .run_view import read_run

    run_dir = Path(run_dir)
    view = read_run(run_dir)
    target = Path(out) if out is not None else run_dir / default_overlay_name(view)
    if target.is_dir():
        target = target / default_overlay_name(view)
    overlay = write_overlay(view, target)
    results = run_dir / view.detector.results_file
    geojson = target.parent / results.name
    if geojson.resolve() != results.resolve():
        try:
            with atomic_path(geojson) as tmp:
                shutil.copyfile(results, tmp)
        except OSError as exc:
            raise WsiDetectError(f"cannot write {geojson}: {exc.strerror or exc}") from None
    return overlay, geojson


__all__ = ["colour_map", "export_qupath", "write_overlay"]
