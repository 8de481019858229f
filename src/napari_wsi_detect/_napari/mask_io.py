"""napari layers of a tumour segmentation result: editable contours + a label mask.

Napari-free (runs in the widget's post-processing worker); registered as the "mask"
builder in `result_kinds`.

* Contours (the primary, editable layer): `shapes_io.regions_to_layer_data` of the
  tumour regions (polygons with holes, level-0 px), named "Tumour N"; exported like
  metastases (QuPath "Tumor" annotations, holes as inner rings).
* Mask (companion, rebuilt on every slider move): a Labels layer of the thresholded map
  on its own grid (`MapGeometry`), label 1 = tumour, in the Tumor class colour,
  semi-transparent. Cell (r, c) covers level-0 [c·s, (c+1)·s) × [r·s, (r+1)·s) (s =
  `geometry.cell_size0`); napari puts data pixel centres at integer positions, so with a
  slide layer at scale u (µm/px, or 1 without a pixel size) the mask has scale s·u and
  translate (s − 1)/2·u: `MapGeometry.napari_scale / napari_translate`, the heatmap's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_wsi_detect._napari.shapes_io import LayerData, regions_to_layer_data
from napari_wsi_detect.annotations.geojson import TUMOUR_CLASS

KIND_TUMOUR_MASK = "napari-wsi-detect tumour mask"
MASK_COLOR = "#{:02x}{:02x}{:02x}".format(*TUMOUR_CLASS[1])
MASK_OPACITY = 0.35  # the tissue stays readable under the mask


def mask_placement(geometry: Any, mpp: float | None) -> dict[str, Any]:
    """scale/translate (and units) putting map cells on a slide layer of `mpp` µm/px
    (None: the slide shown in level-0 pixels)."""
    from napari_wsi_detect._napari.layers import UNITS, supports_units

    unit = float(mpp) if mpp else 1.0
    kwargs: dict[str, Any] = {"scale": geometry.napari_scale(unit),
                              "translate": geometry.napari_translate(unit)}
    if mpp and supports_units():
        kwargs["units"] = (UNITS, UNITS)
    return kwargs


def mask_to_layer_data(mask: np.ndarray, geometry: Any, mpp: float | None, name: str,
                       metadata: dict[str, Any] | None = None) -> LayerData:
    """Labels layer data of a boolean mask on `geometry`'s grid (label 1 = tumour)."""
    data = np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8)
    return (data, {
        "name": name,
        "colormap": {None: "transparent", 0: "transparent", 1: MASK_COLOR},
        "opacity": MASK_OPACITY,
        "blending": "translucent",
        "metadata": {"kind": KIND_TUMOUR_MASK, "geometry": geometry.to_dict(),
                     "slide_mpp": mpp, **(metadata or {})},
        **mask_placement(geometry, mpp),
    }, "labels")


def tumour_to_layer_data(result: Any, values: dict[str, Any], mpp: float | None, name: str
                         ) -> list[LayerData]:
    """[contours Shapes (primary), mask Labels] of a tumour result post-processed with
    `values`; the mask is left out when the result carries none."""
    extra = dict(result.detections.extra)
    geometry = extra.get("geometry") or result.geometry
    facts = {"tumour_area_mm2": extra.get("tumour_area_mm2"),
             "tissue_fraction": extra.get("tissue_fraction"),
             "refined": extra.get("refined")}
    contours = regions_to_layer_data(
        result.regions, mpp, name=name, cell_px=float(geometry.cell_size0),
        name_prefix="Tumour",
        metadata={"parameters": dict(values), "slide_score": result.slide_score, **facts})
    layers = [contours]
    mask = extra.get("mask")
    if mask is not None:
        layers.append(mask_to_layer_data(mask, geometry, mpp, f"{name} mask", facts))
    return layers
