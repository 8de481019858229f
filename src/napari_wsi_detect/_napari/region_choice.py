"""Which part of the slide to analyse: whole slide, field of view, or a drawn rectangle,
as a level-0 (x, y, w, h) box."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_wsi_detect._napari.shapes_io import KIND_REGIONS
from napari_wsi_detect.errors import WsiDetectError

REGION_WHOLE, REGION_VIEW, REGION_RECT = ("Whole slide", "Current field of view",
                                          "Rectangle (Shapes layer)")
REGION_CHOICES = (REGION_WHOLE, REGION_VIEW, REGION_RECT)


def slide_shape0(layer: Any) -> tuple[int, int]:
    levels = layer.metadata.get("levels") or []
    if levels:
        return tuple(int(v) for v in levels[0]["shape"][:2])  # type: ignore[return-value]
    data = layer.data[0] if layer.multiscale else layer.data
    return tuple(int(v) for v in data.shape[:2])  # type: ignore[return-value]


def level0_box(layer: Any, corners_world: np.ndarray) -> tuple[int, int, int, int]:
    """Level-0 (x, y, w, h) of world points, clipped to the slide."""
    idx = np.array([layer.world_to_data(p)[-2:] for p in corners_world], dtype=float)
    xy = idx[:, ::-1] + 0.5  # pixel index (centre) -> level-0 corner coordinates
    h0, w0 = slide_shape0(layer)
    eps = 1e-3  # float32 shape data: 1023.99998 means 1024
    x0, y0 = np.clip(np.floor(xy.min(axis=0) + eps), 0, [w0, h0]).astype(int)
    x1, y1 = np.clip(np.ceil(xy.max(axis=0) - eps), 0, [w0, h0]).astype(int)
    if x1 <= x0 or y1 <= y0:
        raise WsiDetectError("the chosen region does not overlap the slide")
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def rectangle_layer(viewer: Any, exclude: tuple[Any, ...] = ()) -> Any:
    from napari.layers import Shapes

    active = viewer.layers.selection.active
    candidates = ([active] if isinstance(active, Shapes) else []) + [
        ly for ly in reversed(viewer.layers) if isinstance(ly, Shapes)]
    for ly in candidates:
        if ly.metadata.get("kind") != KIND_REGIONS and ly not in exclude and len(ly.data):
            return ly
    raise WsiDetectError(
        "region 'Rectangle' needs a Shapes layer with a rectangle: add a Shapes layer, "
        "draw a rectangle over the area to analyse, then press Detect")


def region_level0(viewer: Any, layer: Any, choice: str) -> tuple[int, int, int, int] | None:
    """The region `choice` as level-0 (x, y, w, h) on slide `layer`; None = whole slide."""
    if choice == REGION_VIEW:
        cy, cx = (float(v) for v in viewer.camera.center[-2:])
        size = getattr(getattr(viewer, "canvas", None), "size", None)
        if size is None:
            size = getattr(viewer, "_canvas_size", (600, 800))
        h, w = (float(v) for v in size[-2:])
        zoom = float(viewer.camera.zoom)
        hy, hx = h / 2 / zoom, w / 2 / zoom
        return level0_box(layer, np.array([[cy - hy, cx - hx], [cy + hy, cx + hx]]))
    if choice == REGION_RECT:
        shapes = rectangle_layer(viewer)
        sel = sorted(shapes.selected_data)
        i = sel[-1] if sel else len(shapes.data) - 1
        verts = np.asarray(shapes.data[i])[:, -2:]
        corners = np.array([shapes.data_to_world(v) for v in verts])[:, -2:]
        return level0_box(layer, corners)
    return None
