"""Named extra maps beside a heatmap store's `prob`: what a detector's `finish` makes.

H2G-Net's refinement runs once per run after the last tile and produces a second,
finer map of the whole slide (the U-Net's tumour probability). It is stored in the same
zarr group as the stage-1 map, as a float32 array named after it (e.g. ``refined``) with
its own `MapGeometry` in the array's attributes, so it travels with the run folder,
reloads with it, and post-processing (sliders) reads it without running any network.

A detector that makes extra maps lists their names in `extra_maps`; the result passes
them to its `postprocess` as ``maps={name: MapLayer}`` (detectors/result.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import WsiDetectError
from .plan import MapGeometry

ATTR_KEY = "napari_wsi_detect_map"
RESERVED = ("prob", "computed")


@dataclass(frozen=True)
class MapLayer:
    """A whole-slide map: values (rows, cols) float32 and the geometry of its cells."""

    values: np.ndarray
    geometry: MapGeometry


def _group(store: Any) -> Any:
    return store.group if hasattr(store, "group") else store


def write_map(store: Any, name: str, values: np.ndarray, geometry: MapGeometry) -> None:
    """Store `values` (must have `geometry.shape`) as map `name`, replacing an older one."""
    if name in RESERVED or not name.isidentifier():
        raise WsiDetectError(f"{name!r} cannot name an extra map (reserved or not a name)")
    values = np.asarray(values, dtype=np.float32)
    if values.shape != geometry.shape:
        raise WsiDetectError(f"map {name!r} has shape {values.shape}, its geometry "
                             f"{geometry.shape}")
    group = _group(store)
    rows, cols = values.shape
    arr = group.create_array(name, shape=(rows, cols), chunks=(min(rows, 1024), min(cols, 1024)),
                             dtype="float32", fill_value=np.nan, overwrite=True)
    arr[...] = values
    arr.attrs[ATTR_KEY] = {"geometry": geometry.to_dict()}


def map_names(store: Any) -> list[str]:
    """Names of the extra maps `store` holds."""
    group = _group(store)
    return sorted(k for k in group.array_keys()
                  if k not in RESERVED and ATTR_KEY in group[k].attrs)


def read_map(store: Any, name: str) -> MapLayer:
    group = _group(store)
    try:
        arr = group[name]
        meta = dict(arr.attrs[ATTR_KEY])
    except KeyError:
        raise WsiDetectError(f"the heatmap store has no map {name!r}") from None
    return MapLayer(np.asarray(arr[...], dtype=np.float32),
                    MapGeometry.from_dict(meta["geometry"]))


def read_maps(store: Any, names: tuple[str, ...] | list[str] | None = None
              ) -> dict[str, MapLayer]:
    """The extra maps of `store` (those of `names` it holds; all when None)."""
    if store is None:
        return {}
    have = map_names(store)
    return {n: read_map(store, n) for n in have if names is None or n in names}


def copy_maps(src: Any, dst: Any) -> None:
    """Copy every extra map of store `src` into store `dst` (a store copy keeps them)."""
    for name in map_names(src):
        layer = read_map(src, name)
        write_map(dst, name, layer.values, layer.geometry)


__all__ = ["MapLayer", "copy_maps", "map_names", "read_map", "read_maps", "write_map"]
