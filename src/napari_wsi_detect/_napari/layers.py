"""Conversions between the core objects (slides, tissue masks) and napari layer data.

Pure functions returning napari "layer data tuples" `(data, kwargs, layer_type)`, so the
reader, the sample data and the widgets share one definition of where things sit.

Placement (docs/architecture.md, "Coordinates"): napari puts pixel *centres* at
`index · scale + translate`. The slide layer has `scale = mpp` and no translate, so a
level-0 pixel x is centred at x·mpp. A mask/map cell covering `d` level-0 pixels
[c·d, (c+1)·d) has its centre at level-0 (c·d + (d − 1)/2), hence
`scale = d·mpp` and `translate = (d − 1)/2 · mpp`.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari_wsi_detect.slide.base import Slide
    from napari_wsi_detect.slide.tissue import TissueMask

LayerData = tuple[Any, dict[str, Any], str]

UNITS = "µm"
TISSUE_COLOR = "#33dd55"


@functools.cache
def supports_units() -> bool:
    """napari ≥ 0.6 takes `units=` on layers; older versions would raise on it."""
    import inspect

    from napari.layers import Image

    return "units" in inspect.signature(Image.__init__).parameters


def _placement(mpp: float | None, cell: float = 1.0) -> dict[str, Any]:
    """scale/translate (and units when known) of a grid of `cell` level-0 pixels."""
    unit = mpp if mpp else 1.0
    kwargs: dict[str, Any] = {
        "scale": (cell * unit, cell * unit),
        "translate": ((cell - 1) / 2 * unit, (cell - 1) / 2 * unit),
    }
    if mpp and supports_units():
        kwargs["units"] = (UNITS, UNITS)
    return kwargs


def slide_metadata(slide: Slide) -> dict[str, Any]:
    return {
        "path": str(slide.path),
        "mpp": slide.mpp,
        "vendor": slide.vendor,
        "objective_power": slide.objective_power,
        "levels": [
            {
                "shape": tuple(lv.shape),
                "downsample": float(lv.downsample),
                "synthetic": lv.synthetic,
            }
            for lv in slide.levels
        ],
    }


def slide_layer_data(slide: Slide, name: str | None = None) -> LayerData:
    """Multiscale RGB image layer of a slide: lazy dask pyramid, µm scale when known.

    Warns (napari shows it as a notification) when the slide has no pixel size: the
    layer is then in pixels and measurements in µm are not possible.
    """
    data = slide.pyramid()
    if slide.mpp is None:
        warnings.warn(
            f"{Path(slide.path).name} has no pixel size (µm/px) in its metadata: it is shown "
            "in pixels and sizes cannot be given in µm; detection will assume the model's "
            "resolution.",
            UserWarning,
            stacklevel=2,
        )
    kwargs: dict[str, Any] = {
        "name": name or _stem(slide.path),
        "rgb": True,
        "multiscale": len(data) > 1,
        "contrast_limits": (0, 255),
        "metadata": slide_metadata(slide),
        **_placement(slide.mpp),
    }
    return (data if len(data) > 1 else data[0], kwargs, "image")


def tissue_layer_data(
    mask: TissueMask, slide_mpp: float | None, name: str = "Tissue mask"
) -> LayerData:
    """Labels layer (1 = tissue) lying exactly on the slide layer of the same slide."""
    data = np.asarray(mask.mask, dtype=np.uint8)
    kwargs: dict[str, Any] = {
        "name": name,
        "opacity": 0.35,
        "colormap": {1: TISSUE_COLOR, None: "transparent"},
        "metadata": {
            "downsample": mask.downsample,
            "tissue_fraction": mask.tissue_fraction,
            "slide_shape": mask.slide_shape,
        },
        **_placement(slide_mpp, mask.downsample),
    }
    return (data, kwargs, "labels")


def add_tissue_mask(viewer: Any, slide_layer: Any = None, **options: Any) -> Any:
    """Compute the tissue mask of a slide layer (default: the active or last slide layer)
    and add it to `viewer` as a labels layer; return that layer."""
    from napari_wsi_detect.errors import WsiDetectError
    from napari_wsi_detect.slide import open_slide
    from napari_wsi_detect.slide.tissue import compute_tissue_mask

    if slide_layer is None:
        slide_layer = _find_slide_layer(viewer)
    path = slide_layer.metadata.get("path") if slide_layer is not None else None
    if not path:
        raise WsiDetectError(
            "open a slide first: no image layer here was opened by napari-wsi-detect"
        )
    with open_slide(path) as slide:
        mask = compute_tissue_mask(slide, **options)
        data, kwargs, _ = tissue_layer_data(mask, slide.mpp, name=f"{slide_layer.name} tissue")
    return viewer.add_labels(data, **kwargs)


def _find_slide_layer(viewer: Any) -> Any:
    active = viewer.layers.selection.active
    if active is not None and "path" in getattr(active, "metadata", {}):
        return active
    for layer in reversed(viewer.layers):
        if getattr(layer, "rgb", False) and "path" in layer.metadata:
            return layer
    return None


def _stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
