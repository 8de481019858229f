"""napari layers of a mitosis result: a Points layer of the mitoses and the hotspot.

Napari-free (runs in the widget's post-processing worker); registered as the "points"
builder in `result_kinds`.

* Points: layer data = level-0 (row, col) with `shapes_io.placement` (the same
  placement as every annotation layer, so export is exact). Features `score` and
  `area_um2`; export (`shapes_export.points_to_features`, the npe2 writer) makes each a
  QuPath Point detection classified "Mitosis" with both as measurements. No `class`
  column: every point of this layer is a mitosis, including the ones a pathologist
  adds.
* Size: napari's point size is in data units, so the markers are `POINT_UM` µm rings
  around each figure (their true scale when zoomed in), and `canvas_size_limits` keeps
  them at least `shapes_io.POINT_SCREEN_PX[0]` screen pixels wide when zoomed out to the whole slide:
  visible at every zoom, with no zoom follower needed.
* Hotspot: a Shapes rectangle (level-0 corners) with its count as text; exported as a
  polygon annotation (class "Hotspot", measurements count, area_mm2, per_10_hpf). It is
  a companion layer: rebuilt on every slider move, absent when there is no mitosis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from napari_wsi_detect._napari.shapes_io import (
    EDGE_PX,
    POINT_SCREEN_PX,
    LayerData,
    level0_to_data,
    placement,
)
from napari_wsi_detect.annotations.points import HOTSPOT_CLASS, hotspot_name

KIND_MITOSES = "napari-wsi-detect mitoses"
KIND_HOTSPOT = "napari-wsi-detect hotspot"
POINT_UM = 14.0  # ring diameter: a mitotic figure is ~5-12 µm across
# Rings (transparent face) leave the figure visible; the result colour of the package
# (shapes_io.TEXT_COLOR) stays visible on H&E, on white and on the inferno heatmap.
POINT_COLOR = "#00ff8c"
RING_WIDTH = 0.18  # of the diameter
HOTSPOT_COLOR = "#{:02x}{:02x}{:02x}".format(*HOTSPOT_CLASS[1])
TEXT_SIZE = 11


def point_size(mpp: float | None) -> float:
    """Marker diameter in layer data units (level-0 px): `POINT_UM` µm."""
    return POINT_UM / float(mpp) if mpp else 56.0


def point_style(mpp: float | None) -> dict[str, Any]:
    """Size and look of mitosis points (also used for points read from files)."""
    return {
        "size": point_size(mpp),
        "canvas_size_limits": POINT_SCREEN_PX,
        "symbol": "disc",
        "face_color": "transparent",
        "border_color": POINT_COLOR,
        "border_width": RING_WIDTH,
        "border_width_is_relative": True,
    }


def mitoses_points_data(items: list[Any], mpp: float | None, name: str,
                        metadata: dict[str, Any] | None = None) -> LayerData:
    """Points layer data of `Mitosis` items (x, y level-0 px, score, area_um2)."""
    xy = np.asarray([(m.x, m.y) for m in items], dtype=np.float64).reshape(-1, 2)
    features = {
        "score": np.asarray([float(m.score) for m in items], dtype=np.float64),
        "area_um2": np.asarray([float(getattr(m, "area_um2", math.nan)) for m in items],
                               dtype=np.float64),
    }
    kwargs = {
        "name": name,
        "features": features,
        # A point added by hand is a pathologist's mitosis: certain, area unmeasured.
        "feature_defaults": {"score": 1.0, "area_um2": math.nan},
        "metadata": {"kind": KIND_MITOSES, "slide_mpp": mpp, **(metadata or {})},
        **point_style(mpp),
        **placement(mpp),
    }
    return (level0_to_data(xy), kwargs, "points")


def hotspot_shapes_data(hotspot: Any, mpp: float | None, name: str) -> LayerData:
    """Shapes layer data of the hotspot rectangle, its count as text."""
    corners = np.asarray(hotspot.corners(), dtype=np.float64)
    per = getattr(hotspot, "per_10_hpf", math.nan)
    features = {
        "class": [HOTSPOT_CLASS[0]],
        "name": [hotspot_name(hotspot)],
        "count": [float(hotspot.count)],
        "area_mm2": [float(hotspot.area_mm2)],
        "per_10_hpf": [float(per)],
    }
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "features": features,
        "face_color": "transparent",
        "edge_color": HOTSPOT_COLOR,
        "edge_width": max(4.0, 0.004 * max(hotspot.w, hotspot.h)),
        "text": {"string": "{name}", "size": TEXT_SIZE, "color": HOTSPOT_COLOR,
                 "anchor": "upper_left"},
        "metadata": {"kind": KIND_HOTSPOT, "slide_mpp": mpp, "edge_px": EDGE_PX + 1,
                     "hotspot": hotspot.to_dict()},
        "opacity": 1.0,
        **placement(mpp),
    }
    return ([level0_to_data(corners)], kwargs, "shapes")


def mitoses_to_layer_data(result: Any, values: dict[str, Any], mpp: float | None,
                          name: str) -> list[LayerData]:
    """The "points" result builder: [Points layer of the mitoses, hotspot rectangle]
    (the hotspot only when there is one)."""
    det = result.detections
    extra = det.extra or {}
    meta = {"parameters": dict(values), "slide_score": result.slide_score,
            **{k: extra[k] for k in ("count_per_mm2", "count_per_10_hpf",
                                     "analysed_area_mm2", "tissue_area_mm2") if k in extra}}
    out = [mitoses_points_data(list(det.items), mpp, name, meta)]
    spot = extra.get("hotspot")
    if spot is not None:
        out.append(hotspot_shapes_data(spot, mpp, f"{name} hotspot"))
    return out
