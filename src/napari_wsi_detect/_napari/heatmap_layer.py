"""The heatmap image layer a run fills while it streams (main thread only).

`LiveHeatmap` copies each finished tile into a preallocated float32 array backing an
image layer and refreshes the layer at most `max_rate_hz` times a second (a refresh
re-uploads the texture, so doing it per tile would stall the viewer on big maps).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from napari_wsi_detect.engine.plan import MapGeometry
from napari_wsi_detect.engine.run import HeatmapTile

HEATMAP_NAME = "metastasis heatmap"


def heatmap_colormap() -> Any:
    """Inferno with transparency: below 0.1 (not computed, or normal: a model trained
    with label smoothing puts normal tissue near 0.03, not 0) is fully transparent, so
    the slide shows through; from 0.2 up an inferno colour at 55-80 % opacity (as in the
    demo overview). (Additive blending vanishes on the bright H&E background.)"""
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.colormap_utils import ensure_colormap

    inferno = ensure_colormap("inferno")
    controls = np.array([0.0, 0.1, 0.2, 0.5, 0.75, 1.0])
    colors = inferno.map(np.maximum(controls, 0.15)).copy()
    colors[:, 3] = [0.0, 0.0, 0.55, 0.65, 0.75, 0.8]
    return Colormap(colors=colors, controls=controls, name="wsi-detect probability")


class LiveHeatmap:
    """An image layer on the slide that fills as tiles arrive (main thread only)."""

    def __init__(self, viewer: Any, geometry: MapGeometry, slide_layer: Any,
                 name: str = HEATMAP_NAME, max_rate_hz: float = 10.0,
                 initial: np.ndarray | None = None) -> None:
        self.viewer = viewer
        self.geometry = geometry
        self.min_interval = 1.0 / max_rate_hz
        self._last_refresh = 0.0
        self._dirty = False
        # Uncomputed cells show 0 (black = nothing under additive blending); the NaN map
        # the post-processing needs lives in the store.
        self.array = np.zeros(geometry.shape, dtype=np.float32)
        if initial is not None:
            np.copyto(self.array, np.nan_to_num(initial, nan=0.0))
        k = float(slide_layer.scale[-1])
        ty, tx = (float(v) for v in slide_layer.translate[-2:])
        sy, sx = geometry.napari_scale(k)
        oy, ox = geometry.napari_translate(k)
        from napari_wsi_detect._napari.layers import supports_units

        extra: dict[str, Any] = {}
        if supports_units():  # same units as the slide, or napari stops using units
            extra["units"] = tuple(str(u) for u in slide_layer.units[-2:])
        self.layer = viewer.add_image(
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

    def add_tile(self, tile: HeatmapTile) -> None:
        n, m = tile.probs.shape
        self.array[tile.r0 : tile.r0 + n, tile.c0 : tile.c0 + m] = np.nan_to_num(tile.probs)
        self._dirty = True
        now = time.perf_counter()
        if now - self._last_refresh >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        if self._dirty and self.layer in self.viewer.layers:
            self.layer.refresh()
            self._last_refresh = time.perf_counter()
        self._dirty = False

    def remove(self) -> None:
        if self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
