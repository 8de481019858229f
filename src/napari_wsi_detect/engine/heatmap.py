"""Chunked zarr (v3) store of a whole-slide map: resumable and crash-safe.

Layout of ``heatmap.zarr`` (a zarr v3 group):

* ``prob``: float32 (rows, cols), chunks T x T (one chunk per ROI block, since ROIs start
  at multiples of T), fill NaN = not computed (no tissue, outside the region, or pending).
* ``computed``: uint8 (ceil(rows/T), ceil(cols/T)), 1 where the ROI block (i, j) =
  cells [i*T, (i+1)*T) x [j*T, (j+1)*T) has been computed, 0 otherwise.
* group attributes ``napari_wsi_detect``: ``format`` (1), ``geometry``
  (MapGeometry.to_dict()), ``roi_cells`` (T), ``model`` (name), ``params`` (everything
  that changes the numbers: model fingerprint, alpha, normalisation...), ``complete``.

Crash safety. zarr's LocalStore writes every chunk to a temporary file and renames it,
so a chunk is either old or new, never torn. A tile's ``prob`` chunk is written first and
only then its ``computed`` flag: a crash between the two leaves an unmarked chunk that a
resume recomputes. A run writes into ``DIR/heatmap.zarr.partial``; when every planned ROI
is computed, ``finalise()`` renames it to ``DIR/heatmap.zarr`` (an existing result there
is first renamed aside to ``heatmap.zarr.old`` and deleted after). A resume reopens
``heatmap.zarr.partial`` (or a finished ``heatmap.zarr``, which it moves back to .partial)
and skips the computed blocks; a store made with another geometry, ROI size, model or
parameters is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import WsiDetectError
from .plan import ROI, MapGeometry

ATTR_KEY = "napari_wsi_detect"
FORMAT = 1
FINAL_NAME = "heatmap.zarr"
PARTIAL_SUFFIX = ".partial"


class HeatmapStoreError(WsiDetectError):
    """A heatmap store is missing, corrupt, or belongs to another run."""


def _canonical(obj: Any) -> Any:
    """JSON round trip so tuples/lists and ints/floats compare the way they are stored."""
    return json.loads(json.dumps(obj, sort_keys=True))


class HeatmapStore:
    """A whole-slide map in a zarr group (on disk, or in memory when path is None)."""

    def __init__(self, group: zarr.Group, path: Path | None = None) -> None:
        self.group = group
        self.path = path
        try:
            meta = dict(group.attrs[ATTR_KEY])
            self.geometry = MapGeometry.from_dict(meta["geometry"])
            self.roi_cells = int(meta["roi_cells"])
            self.prob = group["prob"]
            self.computed = group["computed"]
        except (KeyError, TypeError, ValueError) as exc:
            raise HeatmapStoreError(
                f"{path or 'store'} is not a napari-wsi-detect heatmap ({exc})"
            ) from exc
        self.model_name: str = meta.get("model", "")
        self.params: dict[str, Any] = meta.get("params", {})

    # -- creation ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path | None,
        geometry: MapGeometry,
        roi_cells: int,
        model_name: str,
        params: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> HeatmapStore:
        """Open a store for a run: resume a matching one at `path`, create a new one when
        absent (or `overwrite`), refuse a mismatching one. `path` None = in memory."""
        meta = _canonical(
            {
                "format": FORMAT,
                "geometry": geometry.to_dict(),
                "roi_cells": int(roi_cells),
                "model": model_name,
                "params": params or {},
                "complete": False,
            }
        )
        if path is not None:
            path = Path(path)
            if path.exists() and overwrite:
                shutil.rmtree(path)
            if path.exists():
                store = cls.open(path, mode="r+")
                store._check_matches(meta)
                return store
            store_like: Any = zarr.storage.LocalStore(str(path))
        else:
            store_like = zarr.storage.MemoryStore()
        group = zarr.open_group(store=store_like, mode="w")
        rows, cols = geometry.shape
        t = int(roi_cells)
        group.create_array(
            "prob", shape=(rows, cols), chunks=(min(t, rows), min(t, cols)),
            dtype="float32", fill_value=np.nan,
        )
        br, bc = math.ceil(rows / t), math.ceil(cols / t)
        group.create_array(
            "computed", shape=(br, bc), chunks=(min(br, 256), min(bc, 256)),
            dtype="uint8", fill_value=0,
        )
        group.attrs[ATTR_KEY] = meta
        return cls(group, path)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> HeatmapStore:
        path = Path(path)
        if not path.is_dir():
            raise HeatmapStoreError(f"no heatmap store at {path}")
        try:
            group = zarr.open_group(store=str(path), mode=mode)
        except Exception as exc:  # zarr raises several types for a non-zarr folder
            raise HeatmapStoreError(f"{path} is not a readable zarr heatmap ({exc})") from exc
        return cls(group, path)

    def _check_matches(self, want: dict[str, Any]) -> None:
        have = _canonical(dict(self.group.attrs[ATTR_KEY]))
        for key in ("format", "geometry", "roi_cells", "model", "params"):
            if have.get(key) != want.get(key):
                raise HeatmapStoreError(
                    f"the heatmap at {self.path} was made with a different {key} "
                    f"({have.get(key)!r} vs {want.get(key)!r}); choose another output "
                    "folder or overwrite it (--overwrite / overwrite=True)"
                )

    # -- state ---------------------------------------------------------------------------
    def _block(self, roi: ROI) -> tuple[int, int]:
        return (roi.r0 // self.roi_cells, roi.c0 // self.roi_cells)

    def computed_blocks(self) -> np.ndarray:
        return np.asarray(self.computed[...]).astype(bool)

    def pending(self, rois: list[ROI]) -> list[ROI]:
        """The ROIs of `rois` not yet computed in this store."""
        done = self.computed_blocks()
        return [r for r in rois if not done[self._block(r)]]

    def is_computed(self, roi: ROI) -> bool:
        return bool(self.computed[self._block(roi)])

    def write_tile(self, r0: int, c0: int, probs: np.ndarray) -> None:
        """Store a ROI's (rows, cols) block, then mark it computed (in that order)."""
        t = self.roi_cells
        if r0 % t or c0 % t:
            raise HeatmapStoreError(f"tile at ({r0}, {c0}) is not on the {t}-cell ROI grid")
        n, m = probs.shape
        self.prob[r0 : r0 + n, c0 : c0 + m] = probs.astype(np.float32, copy=False)
        self.computed[r0 // t, c0 // t] = 1

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs[ATTR_KEY].get("complete", False))

    def mark_complete(self) -> None:
        meta = dict(self.group.attrs[ATTR_KEY])
        meta["complete"] = True
        self.group.attrs[ATTR_KEY] = meta

    def to_numpy(self) -> np.ndarray:
        """The whole map as float32 (NaN = not computed); small: 1/(S*d)^2 of level 0."""
        return np.asarray(self.prob[...], dtype=np.float32)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs[ATTR_KEY])

    def copy_to(self, path: str | Path) -> HeatmapStore:
        """Write this store (e.g. an in-memory one) to a new folder `path`, atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + PARTIAL_SUFFIX)
        if tmp.exists():
            shutil.rmtree(tmp)
        meta = self.attrs
        out = HeatmapStore.create(
            tmp, self.geometry, self.roi_cells, meta.get("model", ""), meta.get("params", {})
        )
        out.prob[...] = self.prob[...]
        out.computed[...] = self.computed[...]
        if meta.get("complete"):
            out.mark_complete()
        return out.finalise(path)

    def finalise(self, final: str | Path | None = None) -> HeatmapStore:
        """Mark complete and rename DIR/heatmap.zarr.partial -> DIR/heatmap.zarr (or to
        `final`); returns the store reopened read-only at its final path."""
        self.mark_complete()
        if self.path is None:
            return self
        src = self.path
        dst = Path(final) if final is not None else _final_path(src)
        if src == dst:
            return HeatmapStore.open(dst)
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if dst.exists():
            dst.rename(old)
        src.rename(dst)
        if old.exists():
            shutil.rmtree(old)
        return HeatmapStore.open(dst)


def _final_path(partial: Path) -> Path:
    name = partial.name
    if name.endswith(PARTIAL_SUFFIX):
        name = name[: -len(PARTIAL_SUFFIX)]
    return partial.with_name(name)


def open_run_store(
    out_dir: str | Path,
    geometry: MapGeometry,
    roi_cells: int,
    model_name: str,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> HeatmapStore:
    """The store a run in `out_dir` writes to: `out_dir/heatmap.zarr.partial`, resumed if
    present; a finished matching `heatmap.zarr` is moved back to .partial to be extended."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / FINAL_NAME
    partial = out_dir / (FINAL_NAME + PARTIAL_SUFFIX)
    if overwrite:
        for p in (partial, final):
            if p.exists():
                shutil.rmtree(p)
    if not partial.exists() and final.exists():
        HeatmapStore.open(final)._check_matches(
            _canonical({"format": FORMAT, "geometry": geometry.to_dict(),
                        "roi_cells": int(roi_cells), "model": model_name,
                        "params": params or {}})
        )
        final.rename(partial)
    return HeatmapStore.create(partial, geometry, roi_cells, model_name, params)


def open_heatmap(path: str | Path, mode: str = "r") -> HeatmapStore:
    """Reopen a saved heatmap (a heatmap.zarr folder, a run folder holding one, or its
    .partial); `mode` "r+" to write into it."""
    path = Path(path)
    if (path / FINAL_NAME).is_dir():
        path = path / FINAL_NAME
    elif (path / (FINAL_NAME + PARTIAL_SUFFIX)).is_dir():  # a run folder, cancelled
        path = path / (FINAL_NAME + PARTIAL_SUFFIX)
    elif not path.exists() and path.with_name(path.name + PARTIAL_SUFFIX).is_dir():
        path = path.with_name(path.name + PARTIAL_SUFFIX)
    return HeatmapStore.open(path, mode=mode)
