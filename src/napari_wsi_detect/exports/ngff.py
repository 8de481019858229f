"""OME-Zarr (NGFF 0.4) copy of a run's maps and masks: ``DIR/maps.ome.zarr``.

Why 0.4 (zarr v2 on disk): it is what QuPath/Bio-Formats and TIAToolbox read today, and
napari-ome-zarr and ome-zarr-py read it as well as 0.5; a 0.5 (zarr v3) copy would
lock the first two out. The writer is the OME reference implementation (ome-zarr-py);
our own resumable store (heatmap.zarr, zarr v3) stays as it is.

Layout::

    maps.ome.zarr/            the heatmap: a multiscale float32 image (y, x) in µm
      0/ 1/ ...               levels halved by NaN-aware block means (NaN = not computed)
      labels/<mask>/          NGFF labels (uint8/16/32, 0 = background): the run's masks,
                              e.g. metastases, tumour, mitoses-hotspot (exports/run_view.py)
      <map>/                  each extra map of the store (e.g. refined, tissue) as its
                              own multiscale image (open it by its path)

Coordinates. Each level's ``coordinateTransformations`` are a scale and a translation
in micrometres, chosen so that the maps sit on the slide shown with scale = mpp and no
translation (our reader's slide layer, or the slide's level 0 in any viewer that puts
pixel centres at index × scale, as napari, napari-ome-zarr and NGFF 0.6 (RFC-5) do):
map cell (r, c) is centred over the centre of the level-0 block it owns
(engine/plan.py: scale ``S·d·mpp``, translation ``(S·d − 1)/2·mpp``); a level-k pixel
covers 2^k × 2^k cells, so its translation adds ``(2^k − 1)/2`` cells.

Atomic: written under ``.maps.ome.zarr.<token>.writing`` and swapped in by one rename
(renameat2 exchange where available), so a reader sees the old copy or the new one. The
root's ``napari_wsi_detect`` attribute names the heatmap store id it was made from;
`is_current` compares it with the run's summary (a copy a kill left from the previous
run is stale, and `wsi-detect export ngff DIR` rewrites it).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WsiDetectError
from .run_view import LabelMask, MapImage, RunView

NGFF_NAME = "maps.ome.zarr"
NGFF_VERSION = "0.4"
ATTR_KEY = "napari_wsi_detect"
WRITING_SUFFIX = ".writing"
MIN_LEVEL_SIDE = 64  # stop halving when the longest side would drop below this
CHUNK = 512
AXES = [{"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}]


# -- pyramid -----------------------------------------------------------------------------------
def _halve_mean(a: np.ndarray) -> np.ndarray:
    """2×2 block means ignoring NaN (an all-NaN block stays NaN)."""
    h, w = a.shape
    if h % 2 or w % 2:  # pad odd sides with NaN (a copy only then)
        p = np.full((h + h % 2, w + w % 2), np.nan, np.float32)
        p[:h, :w] = a
    else:
        p = np.asarray(a, np.float32)
    blocks = p.reshape(p.shape[0] // 2, 2, p.shape[1] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


def _halve_nearest(a: np.ndarray) -> np.ndarray:
    # Labels are never averaged: a level-k pixel takes its block's top-left value.
    return np.ascontiguousarray(a[::2, ::2])


def n_levels(shape: tuple[int, int]) -> int:
    longest, n = max(shape), 1
    while longest // 2 >= MIN_LEVEL_SIDE:
        longest, n = (longest + 1) // 2, n + 1
    return n


def pyramid(values: np.ndarray, labels: bool = False, levels: int | None = None
            ) -> list[np.ndarray]:
    out = [values]
    for _ in range((levels or n_levels(values.shape)) - 1):
        out.append(_halve_nearest(out[-1]) if labels else _halve_mean(out[-1]))
    return out


def level_transforms(geometry: Any, levels: int) -> list[list[dict[str, Any]]]:
    """Per level: [scale, translation] in µm (y, x); see the module docstring."""
    cell_um = geometry.napari_scale()[0]
    t0 = geometry.napari_translate()[0]
    out = []
    for k in range(levels):
        f = 2 ** k
        t = t0 + (f - 1) / 2 * cell_um
        out.append([{"type": "scale", "scale": [cell_um * f, cell_um * f]},
                    {"type": "translation", "translation": [t, t]}])
    return out


# -- writing -----------------------------------------------------------------------------------
def _storage(levels: list[np.ndarray]) -> list[dict[str, Any]]:
    return [{"chunks": tuple(min(CHUNK, s) for s in lv.shape)} for lv in levels]


def _writer() -> Any:
    """ome_zarr.writer, imported without the DeprecationWarning its own default
    arguments raise at import time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr import writer
    return writer


def _write_image(group: Any, image: MapImage, fmt: Any) -> None:
    write_multiscale = _writer().write_multiscale
    levels = pyramid(np.asarray(image.values, np.float32))
    omero = {"name": image.title, "version": NGFF_VERSION, "rdefs": {"model": "greyscale"},
             "channels": [{"label": image.title, "color": "FFFFFF", "active": True,
                           "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0}}]}
    with warnings.catch_warnings():
        # ome-zarr deprecates coordinate_transformations for `scale`, which cannot
        # express the translation the alignment needs.
        warnings.simplefilter("ignore", DeprecationWarning)
        write_multiscale(levels, group, fmt=fmt, axes=AXES,
                         coordinate_transformations=level_transforms(image.geometry,
                                                                     len(levels)),
                         storage_options=_storage(levels), name=image.title, omero=omero)


def _colour(value: int) -> list[int]:
    # A fixed bright palette: label k's colour does not depend on the viewer.
    palette = [(255, 64, 64), (64, 160, 255), (255, 200, 0), (0, 200, 120),
               (200, 80, 255), (255, 128, 0), (0, 220, 220), (255, 80, 180)]
    r, g, b = palette[(value - 1) % len(palette)]
    return [r, g, b, 255]


def _write_mask(group: Any, mask: LabelMask, fmt: Any) -> None:
    write_multiscale_labels = _writer().write_multiscale_labels
    levels = pyramid(np.asarray(mask.labels), labels=True)
    values = sorted({int(p["label-value"]) for p in mask.properties} |
                    {int(v) for v in np.unique(mask.labels) if v})
    meta: dict[str, Any] = {"colors": [{"label-value": v, "rgba": _colour(v)} for v in values],
                            "source": {"image": "../../"}}
    if mask.properties:
        meta["properties"] = mask.properties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        write_multiscale_labels(levels, group, mask.name, fmt=fmt, axes=AXES,
                                coordinate_transformations=level_transforms(mask.geometry,
                                                                            len(levels)),
                                storage_options=_storage(levels), label_metadata=meta)


def _provenance(view: RunView) -> dict[str, Any]:
    from .. import __version__

    return {
        "task": view.task,
        "store_id": view.store_id,
        "slide": {k: view.slide.get(k) for k in ("path", "width", "height", "mpp")},
        "images": {im.name: {"title": im.title, "geometry": im.geometry.to_dict()}
                   for im in view.images},
        "labels": {m.name: {"title": m.title, "geometry": m.geometry.to_dict()}
                   for m in view.masks},
        "convention": "pixel centres at index*scale+translation; slide level 0 at "
                      "scale mpp, translation 0",
        "package_version": __version__,
    }


def _write_tree(view: RunView, path: Path) -> None:
    import zarr
    from ome_zarr.format import FormatV04

    fmt = FormatV04()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    _write_image(root, view.heatmap, fmt)
    for mask in view.masks:
        _write_mask(root, mask, fmt)
    for image in view.images[1:]:
        _write_image(root.create_group(image.name), image, fmt)
    root.attrs[ATTR_KEY] = json.loads(json.dumps(_provenance(view)))


def _tree_modes(path: Path) -> None:
    """The modes an ordinary write gives (mkdtemp-like folders would be 0700)."""
    from .._atomic import _umask

    umask = _umask()
    for p in [path, *path.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def write_ngff(view: RunView, path: str | os.PathLike) -> Path:
    """Write `view` as NGFF 0.4 at `path` (replaced atomically, see module docstring)."""
    from ..detectors.outdir import _exchange

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*{WRITING_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{WRITING_SUFFIX}")
    try:
        _write_tree(view, tmp)
        _tree_modes(tmp)
        if path.exists() and _exchange(tmp, path):
            shutil.rmtree(tmp)
        else:
            if path.exists():
                aside = path.with_name(f".{path.name}.old{WRITING_SUFFIX}")
                os.rename(path, aside)
                os.rename(tmp, path)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(tmp, path)
    except OSError as exc:
        raise WsiDetectError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_ngff(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """`wsi-detect export ngff RUN_DIR`: write RUN_DIR/maps.ome.zarr (or `out`)."""
    from .run_view import read_run

    run_dir = Path(run_dir)
    view = read_run(run_dir)
    return write_ngff(view, Path(out) if out is not None else run_dir / NGFF_NAME)


def ngff_store_id(path: str | os.PathLike) -> str | None:
    """The heatmap store id an NGFF copy was written from (None when unknown)."""
    try:
        meta = json.loads((Path(path) / ".zattrs").read_text(encoding="utf-8"))
        return meta[ATTR_KEY].get("store_id")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_current(run_dir: str | os.PathLike) -> bool:
    """True when RUN_DIR/maps.ome.zarr was written from the run's current heatmap."""
    from ..detectors.result import read_summary

    run_dir = Path(run_dir)
    if not (run_dir / NGFF_NAME).is_dir():
        return False
    want = (read_summary(run_dir).get("outputs") or {}).get("heatmap.zarr", {}).get("id")
    return want is not None and ngff_store_id(run_dir / NGFF_NAME) == want


__all__ = ["NGFF_NAME", "NGFF_VERSION", "export_ngff", "is_current", "level_transforms",
           "ngff_store_id", "pyramid", "write_ngff"]
