"""npe2 reader of run folders: drop a `wsi-detect TASK --out DIR` folder (or one the
widget saved) onto napari and get the slide, the heatmap and the results in one go.

A run folder is a directory holding summary.json and heatmap.zarr. Its summary records
the slide's path; the slide is opened from there (a slide that moved is a
SlideOpenError saying where it was and what to do), checked to be the one the run was
made on (same level-0 size), and shown like any slide this plugin opens. The heatmap
lies on it exactly as the widget's live heatmap does (`MapGeometry.napari_scale /
napari_translate`), and the results are built by the same per-kind builders the widget
uses (`result_kinds`), from the stored maps post-processed with the saved values.

The layers are plain napari layers: to move the sliders on them, open the folder with
the widget's "Open run…" (same one action, then tied to the widget).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_wsi_detect._napari.layers import LayerData

PathLike = str | os.PathLike[str]


def is_run_folder(path: PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "summary.json").is_file() and (p / "heatmap.zarr").is_dir()


def napari_get_run_reader(path: PathLike | Sequence[PathLike]
                          ) -> Callable[..., list[LayerData]] | None:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(is_run_folder(p) for p in paths):
        return None
    return read_runs


def run_slide_path(summary: dict[str, Any], folder: Path) -> Path:
    """The slide a run was made on; SlideOpenError when it is not where it was."""
    from napari_wsi_detect.errors import SlideOpenError

    recorded = str((summary.get("slide") or {}).get("path") or "")
    if not recorded:
        raise SlideOpenError(f"{folder / 'summary.json'} does not say which slide the run "
                             "was made on: open the slide, then WSI Detect > Open run…")
    path = Path(recorded)
    if not path.is_absolute():
        path = (folder / path).resolve()
    if not path.is_file():
        raise SlideOpenError(
            f"the run in {folder} was made on {recorded}, which is not there any more: "
            "move the slide back, or open the slide where it is now and use WSI Detect > "
            "Open run… on this folder")
    return path


def heatmap_layer_data(result: Any, mpp: float | None, name: str) -> LayerData:
    from napari_wsi_detect._napari.heatmap_layer import heatmap_colormap, layer_values
    from napari_wsi_detect._napari.mask_io import mask_placement

    return (layer_values(result.heatmap), {
        "name": name,
        "colormap": heatmap_colormap(),
        "contrast_limits": (0.0, 1.0),
        "opacity": 1.0,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": {"geometry": result.geometry.to_dict(),
                     "kind": "napari-wsi-detect heatmap", "run": str(result.out_dir)},
        **mask_placement(result.geometry, mpp),
    }, "image")


def run_layer_data(folder: PathLike, with_slide: bool = True) -> list[LayerData]:
    """Slide (when `with_slide`), heatmap and result layers of a run folder."""
    from napari_wsi_detect._napari import result_kinds
    from napari_wsi_detect._napari.layers import slide_layer_data
    from napari_wsi_detect.errors import SlideOpenError
    from napari_wsi_detect.exports.run_view import load_run_result
    from napari_wsi_detect.slide import open_slide

    folder = Path(folder)
    result = load_run_result(folder)
    det = result.detector
    layers: list[LayerData] = []
    mpp = result.slide_info.get("mpp")
    if with_slide:
        opened = open_slide(run_slide_path({"slide": result.slide_info}, folder))
        h0, w0 = opened.levels[0].shape[:2]
        g = result.geometry
        if (h0, w0) != (g.height0, g.width0):
            opened.close()
            raise SlideOpenError(
                f"{opened.path} is {w0} x {h0} px but the run in {folder} was made on a "
                f"{g.width0} x {g.height0} px slide: it is not the slide of this run")
        layers.append(slide_layer_data(opened))
        mpp = opened.mpp
    layers.append(heatmap_layer_data(result, mpp, det.heatmap_name or f"{det.task} heatmap"))
    layers += result_kinds.layer_data(result, result.values(), mpp,
                                      det.layer_name or det.task)
    return layers


def read_runs(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out: list[LayerData] = []
    for p in paths:
        out += run_layer_data(p)
    return out
