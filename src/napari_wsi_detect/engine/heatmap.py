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
resume recomputes. A run writes into ``DIR/heatmap.zarr.partial``; a resume reopens it
(or copies a finished ``DIR/heatmap.zarr`` to it: the finished one stays where it is
until the new output set replaces it, see `detectors/outdir.py`) and skips the computed
blocks; a store made with another geometry, ROI size, model or parameters is refused
unless ``overwrite=True`` (which starts a new .partial and still leaves the finished
store alone until the new one replaces it).

Damage. Chunks carry a zstd checksum. `damaged_blocks()` reads the store block by
block: a computed block whose chunk does not decode, has the wrong size or is missing
(all NaN) is damaged; `repair()` marks those blocks not computed so a resume
recomputes just them. A resume repairs before it plans; `to_numpy()` on a damaged store
raises HeatmapStoreError naming the blocks and what to do, never a codec's traceback.
"""

from __future__ import annotations

import json
import math
import os
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
# Written by detectors/outdir.py while a run folder's outputs are being replaced; a
# folder holding it has a committed but not yet installed output set.
COMMIT_JOURNAL = ".wsi-detect.commit.json"


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
        self.repaired: list[tuple[int, int]] = []  # blocks `repair()` marked not computed

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
        slide: dict[str, Any] | None = None,
    ) -> HeatmapStore:
        """Open a store for a run: resume a matching one at `path`, create a new one when
        absent (or `overwrite`), refuse a mismatching one. `path` None = in memory.
        `slide` (file name and size) is recorded and, when both stores have it, must
        match: a slide of the same size is not resumed into another slide's map."""
        meta = _canonical(
            {
                "format": FORMAT,
                "geometry": geometry.to_dict(),
                "roi_cells": int(roi_cells),
                "model": model_name,
                "params": params or {},
                "complete": False,
                **({"slide": slide} if slide else {}),
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
        # The checksum makes a damaged chunk fail to decode instead of reading as numbers.
        codec = zarr.codecs.ZstdCodec(level=0, checksum=True)
        group.create_array(
            "prob", shape=(rows, cols), chunks=(min(t, rows), min(t, cols)),
            dtype="float32", fill_value=np.nan, compressors=codec,
        )
        br, bc = math.ceil(rows / t), math.ceil(cols / t)
        group.create_array(
            "computed", shape=(br, bc), chunks=(min(br, 256), min(bc, 256)),
            dtype="uint8", fill_value=0, compressors=codec,
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
        if have.get("slide") and want.get("slide") and have["slide"] != want["slide"]:
            raise HeatmapStoreError(
                f"the heatmap at {self.path} was made on another slide "
                f"({have['slide'].get('name')!r}, {have['slide'].get('bytes')} bytes; this is "
                f"{want['slide'].get('name')!r}, {want['slide'].get('bytes')} bytes); choose "
                "another output folder or overwrite it (--overwrite / overwrite=True)")
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
        try:
            return np.asarray(self.computed[...]).astype(bool)
        except Exception as exc:  # a codec's error: the flags' chunk is damaged
            raise HeatmapStoreError(
                f"the record of computed ROIs in {self.path or 'the store'} is damaged "
                f"({type(exc).__name__}); run the same command again (the damaged store is "
                "rebuilt from its readable tiles) or with --overwrite") from None

    def _block_slices(self, i: int, j: int) -> tuple[slice, slice]:
        t = self.roi_cells
        return slice(i * t, (i + 1) * t), slice(j * t, (j + 1) * t)

    def _read_block(self, i: int, j: int) -> np.ndarray | None:
        """Block (i, j) of `prob`, or None when its chunk does not decode or has the
        wrong size (a codec raises one of many types, hence the broad except)."""
        try:
            return np.asarray(self.prob[self._block_slices(i, j)])
        except Exception:
            return None

    def damaged_blocks(self) -> list[tuple[int, int]]:
        """Computed blocks whose `prob` chunk is unreadable or missing (see module doc)."""
        try:
            done = np.asarray(self.computed[...]).astype(bool)
        except Exception:
            done = None  # flags unreadable: every block with a chunk is suspect
        rows, cols = self.computed.shape
        bad = []
        for i in range(rows):
            for j in range(cols):
                if done is not None and not done[i, j]:
                    continue
                block = self._read_block(i, j)
                if block is None or (done is not None and not np.isfinite(block).any()):
                    bad.append((i, j))
        return bad

    def repair(self) -> list[tuple[int, int]]:
        """Mark damaged blocks not computed (their chunks removed), so a resume
        recomputes only them; rebuilds unreadable flags from the readable chunks.
        Returns the blocks repaired (also kept in `self.repaired`)."""
        try:
            np.asarray(self.computed[...])
            flags_ok = True
        except Exception:
            flags_ok = False
        bad = self.damaged_blocks()
        if not flags_ok:
            rows, cols = self.computed.shape
            flags = np.zeros((rows, cols), np.uint8)
            for i in range(rows):
                for j in range(cols):
                    block = None if (i, j) in bad else self._read_block(i, j)
                    flags[i, j] = block is not None and bool(np.isfinite(block).any())
            self._remove_chunk("computed", None)
            self.computed[...] = flags
        for i, j in bad:
            self._remove_chunk("prob", (i, j))
            if flags_ok:
                self.computed[i, j] = 0
        self.repaired = bad
        return bad

    def _remove_chunk(self, array: str, block: tuple[int, int] | None) -> None:
        """Delete a damaged chunk file (writing over it would first try to decode it)."""
        if self.path is None:
            return
        if block is None:
            folder = self.path / array / "c"
            if folder.is_dir():
                shutil.rmtree(folder)
            return
        chunk = self.path / array / "c" / str(block[0]) / str(block[1])
        chunk.unlink(missing_ok=True)

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
        """The whole map as float32 (NaN = not computed); small: 1/(S*d)^2 of level 0.
        HeatmapStoreError when a chunk is damaged."""
        try:
            return np.asarray(self.prob[...], dtype=np.float32)
        except Exception:
            bad = self.damaged_blocks()
        t = self.roi_cells
        where = ", ".join(f"cells ({i * t}, {j * t})" for i, j in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise HeatmapStoreError(
            f"{self.path or 'the heatmap store'} is damaged: {len(bad) or 'some'} ROI "
            f"tile(s) cannot be read ({where}{more}); run the detection again into this "
            "folder to recompute only those ROIs, or with --overwrite to start afresh")

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs[ATTR_KEY])

    def copy(self, path: str | Path) -> HeatmapStore:
        """A copy of this store (e.g. an in-memory one) in a new folder `path` (an
        existing one there is replaced), attributes included."""
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        meta = self.attrs
        out = HeatmapStore.create(
            path, self.geometry, self.roi_cells, meta.get("model", ""), meta.get("params", {})
        )
        out.prob[...] = self.to_numpy()
        out.computed[...] = self.computed[...]
        out.group.attrs[ATTR_KEY] = meta
        from .maps import copy_maps  # a detector's extra maps travel with the store

        copy_maps(self, out)
        return out

    def copy_to(self, path: str | Path) -> HeatmapStore:
        """Write this store (e.g. an in-memory one) to a new folder `path`, atomically."""
        path = Path(path)
        return self.copy(path.with_name(path.name + PARTIAL_SUFFIX)).finalise(path)

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
    slide: dict[str, Any] | None = None,
) -> HeatmapStore:
    """The store a run in `out_dir` writes to: `out_dir/heatmap.zarr.partial`, resumed if
    present, else a copy of a finished matching `heatmap.zarr` (which stays in place until
    the run's outputs replace it). Damaged blocks are marked not computed (`repaired`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / FINAL_NAME
    partial = out_dir / (FINAL_NAME + PARTIAL_SUFFIX)
    want = _canonical({"format": FORMAT, "geometry": geometry.to_dict(),
                       "roi_cells": int(roi_cells), "model": model_name,
                       "params": params or {}, "slide": slide})
    if overwrite and partial.exists():
        shutil.rmtree(partial)
    if not partial.exists() and final.exists() and not overwrite:
        try:
            previous = HeatmapStore.open(final)
        except HeatmapStoreError as exc:
            raise HeatmapStoreError(
                f"{exc}: its description is damaged; run again with --overwrite to start "
                "afresh") from None
        previous._check_matches(want)
        _copy_tree(final, partial)
    if partial.exists():
        try:
            HeatmapStore.open(partial)
        except HeatmapStoreError as exc:
            raise HeatmapStoreError(
                f"{exc}: its description is damaged; run again with --overwrite to start "
                "afresh") from None
    store = HeatmapStore.create(partial, geometry, roi_cells, model_name, params, slide=slide)
    store.repair()
    return store


def stored_roi_cells(out_dir: str | Path) -> int | None:
    """The ROI size T of the store a run into `out_dir` would resume (the .partial, else
    the finished one), None when there is none or it cannot be read. A run with the
    default ROI size resumes at this T, so a store begun before a default changed is
    still resumed instead of refused (the map does not depend on T)."""
    out_dir = Path(out_dir)
    for path in (out_dir / (FINAL_NAME + PARTIAL_SUFFIX), out_dir / FINAL_NAME):
        if path.is_dir():
            try:
                return HeatmapStore.open(path).roi_cells
            except HeatmapStoreError:
                return None
    return None


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a store folder under a temporary name, then rename it: a copy cut short by a
    kill is never mistaken for a resumable store."""
    tmp = dst.with_name(dst.name + ".copying")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def open_heatmap(path: str | Path, mode: str = "r") -> HeatmapStore:
    """Reopen a saved heatmap (a heatmap.zarr folder, a run folder holding one, or its
    .partial); `mode` "r+" to write into it."""
    path = Path(path)
    if (path / COMMIT_JOURNAL).exists():
        raise HeatmapStoreError(
            f"{path} holds outputs whose writing was interrupted; run the detection again "
            "into it (or read it with read_summary, which finishes the writing)")
    if (path / FINAL_NAME).is_dir():
        path = path / FINAL_NAME
    elif (path / (FINAL_NAME + PARTIAL_SUFFIX)).is_dir():  # a run folder, cancelled
        path = path / (FINAL_NAME + PARTIAL_SUFFIX)
    elif not path.exists() and path.with_name(path.name + PARTIAL_SUFFIX).is_dir():
        path = path.with_name(path.name + PARTIAL_SUFFIX)
    return HeatmapStore.open(path, mode=mode)
