"""The heatmap image layer a run fills while it streams (main thread only).

`LiveHeatmap` copies each finished tile into a preallocated float32 array backing an
image layer and refreshes the layer at most `max_rate_hz` times a second (a refresh
re-uploads the texture, so doing it per tile would stall the viewer on big maps; the
layer thumbnail is redrawn at most once a second).

Computed cells hold max(p, `COMPUTED_FLOOR`) and not-computed cells 0, and the
colormap gives the band up to p = 0.1 a faint tint (`DONE_TINT`): the user sees which
ROIs are done even where nothing was found, while the slide still shows through. The
NaN "not computed" map the post-processing reads lives in the store, not here.

Creating the layer is the one main-thread cost a run cannot avoid; it is kept short:
the layer is added without becoming the selected layer (napari would rebuild the
layer-controls panel), and the imports the first result layer needs start in a
background thread (`layers.warm_up_in_background`).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from napari_wsi_detect.engine.plan import MapGeometry
from napari_wsi_detect.engine.run import HeatmapTile

HEATMAP_NAME = "metastasis heatmap"
COMPUTED_FLOOR = 0.01  # layer value of a computed cell with p below it (0 = not computed)
DONE_TINT = (0.55, 0.85, 1.0, 0.16)  # RGBA of computed cells up to p = 0.1: a pale blue veil
THUMBNAIL_INTERVAL_S = 1.0


def heatmap_colormap() -> Any:
    """Inferno with transparency: 0 (not computed) is fully transparent; computed cells
    below p = 0.1 (normal tissue: a model trained with label smoothing puts it near 0.03)
    get the faint `DONE_TINT`, so the slide shows through and finished ROIs are visible;
    from 0.2 up an inferno colour at 55-80 % opacity (as in the demo overview). (Additive
    blending vanishes on the bright H&E background.)"""
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.colormap_utils import ensure_colormap

    inferno = ensure_colormap("inferno")
    controls = np.array([0.0, COMPUTED_FLOOR / 2, 0.1, 0.2, 0.5, 0.75, 1.0])
    colors = inferno.map(np.maximum(controls, 0.15)).copy()
    colors[:, 3] = [0.0, 0.0, 0.0, 0.55, 0.65, 0.75, 0.8]
    colors[1] = colors[2] = DONE_TINT
    return Colormap(colors=colors, controls=controls, name="wsi-detect probability")


def layer_values(probs: np.ndarray) -> np.ndarray:
    """Heatmap-layer values of map probabilities: NaN (not computed) -> 0, computed ->
    max(p, COMPUTED_FLOOR), so a computed cell is never transparent."""
    p = np.asarray(probs, dtype=np.float32)
    return np.where(np.isfinite(p), np.maximum(p, COMPUTED_FLOOR), 0.0).astype(np.float32)


@functools.cache
def _refresh_takes_options() -> bool:
    """napari >= 0.6 can refresh a layer without its thumbnail and extent."""
    import inspect

    from napari.layers import Layer

    return "thumbnail" in inspect.signature(Layer.refresh).parameters


class LiveHeatmap:
    """An image layer on the slide that fills as tiles arrive (main thread only)."""

    def __init__(self, viewer: Any, geometry: MapGeometry, slide_layer: Any,
                 name: str = HEATMAP_NAME, max_rate_hz: float = 10.0,
                 initial: np.ndarray | None = None) -> None:
        self.viewer = viewer
        self.geometry = geometry
        from napari_wsi_detect._napari.layers import (
            add_layer_quietly,
            fast_triangulation,
            readable_edges,
            supports_units,
            warm_up_glyphs,
            warm_up_in_background,
        )

        warm_up_in_background()
        self.min_interval = 1.0 / max_rate_hz
        self._last_refresh = 0.0
        self._last_thumbnail = 0.0
        self._dirty = False
        self.array = np.zeros(geometry.shape, dtype=np.float32)
        if initial is not None:
            np.copyto(self.array, layer_values(initial))
        k = float(slide_layer.scale[-1])
        ty, tx = (float(v) for v in slide_layer.translate[-2:])
        sy, sx = geometry.napari_scale(k)
        oy, ox = geometry.napari_translate(k)
        from napari.layers import Image

        extra: dict[str, Any] = {}
        if supports_units():  # same units as the slide, or napari stops using units
            extra["units"] = tuple(str(u) for u in slide_layer.units[-2:])
        layer = Image(
            self.array,
            **extra,
            name=name,
            colormap=heatmap_colormap(),
            contrast_limits=(0.0, 1.0),
            opacity=1.0,
            blending="translucent",
            scale=(sy, sx),
            translate=(ty + oy, tx + ox),
            interpolation2d="nearest",
            metadata={"geometry": geometry.to_dict(), "kind": "napari-wsi-detect heatmap"},
        )
        self.layer = add_layer_quietly(viewer, layer)
        # The run's result layers: contours readable at every zoom, fast triangulation.
        readable_edges(viewer)
        fast_triangulation()
        warm_up_glyphs(viewer)

    def add_tile(self, tile: HeatmapTile) -> None:
        n, m = tile.probs.shape
        self.array[tile.r0 : tile.r0 + n, tile.c0 : tile.c0 + m] = layer_values(tile.probs)
        self._dirty = True
        now = time.perf_counter()
        if now - self._last_refresh >= self.min_interval:
            self.flush(final=False)

    def flush(self, final: bool = True) -> None:
        """Show the tiles added since the last refresh (`final`: the thumbnail too)."""
        if self._dirty and self.layer in self.viewer.layers:
            now = time.perf_counter()
            thumb = final or now - self._last_thumbnail >= THUMBNAIL_INTERVAL_S
            if _refresh_takes_options():
                self.layer.refresh(thumbnail=thumb, extent=False, highlight=False)
            else:
                self.layer.refresh()
            if thumb:
                self._last_thumbnail = now
            self._last_refresh = time.perf_counter()
        self._dirty = False

    def remove(self) -> None:
        if self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
