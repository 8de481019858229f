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
import threading
import time
import warnings
import weakref
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
    warm_up_in_background()  # a slide is open: a run and its result layers may follow
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


# --- responsiveness helpers (docs/napari.md, "Responsiveness") ---------------------------------
def fast_triangulation() -> str:
    """Let napari triangulate Shapes with its fastest installed backend (bermuda, a
    dependency of our napari extra) when the user's napari setting asks for the fastest,
    which is napari's default; return the backend napari now uses.

    napari applies its setting when its settings load (any napari session); this only
    matters where they were not loaded (scripts, tests), where napari's module default
    is pure Python + vispy (~25 ms per ragged polygon). A setting the user chose
    (Preferences > Experimental > Triangulation backend, or the environment variable
    NAPARI_TRIANGULATION_BACKEND) is respected, never changed or saved."""
    try:
        from napari.settings import get_settings
        from napari.utils.triangulation_backend import (
            TriangulationBackend,
            get_backend,
            set_backend,
        )
    except ImportError:  # napari < 0.6: no backend choice
        return "unknown"
    want = get_settings().experimental.triangulation_backend
    if get_backend() != want:
        set_backend(want)
    backend = get_backend()
    if backend == TriangulationBackend.fastest_available:
        import importlib.util

        return "bermuda" if importlib.util.find_spec("bermuda") else str(backend)
    return str(backend)


_WARMED = threading.Event()


def warm_up_in_background() -> None:
    """Import, in a daemon thread, what the first result layer needs (pandas for the
    layer's feature table, ~0.5-0.8 s; napari's Shapes and text modules), so creating that
    layer on the main thread later does not pay for the imports. Once per process."""
    if _WARMED.is_set():
        return
    _WARMED.set()

    def run() -> None:
        try:
            import pandas  # noqa: F401
            from napari.layers import Shapes  # noqa: F401
            from napari.layers.utils import text_manager  # noqa: F401
            from napari.utils.colormaps import Colormap  # noqa: F401
        except Exception:  # a warm-up must never fail a run
            pass

    threading.Thread(target=run, name="wsi-detect warm-up", daemon=True).start()


# The characters of the score labels, and those napari's text visual measures the line
# height with the first time it draws (descenders, accented capitals).
GLYPHS = "0123456789. gjpqy\u00c5\u00c9\u00d1\u0150"
_GLYPH_TIMERS: dict[int, Any] = {}


def warm_up_glyphs(viewer: Any, chars: str = GLYPHS, interval_ms: int = 40) -> None:
    """Render the score labels' glyphs into the canvas's font atlas one per event-loop
    turn (~8 ms each: napari renders a 256 pt signed-distance glyph on the CPU the first
    time a character is drawn), so the first result layer's labels do not render them
    all in one frame. Quietly does nothing where napari's canvas font is not reachable
    (it is private API)."""
    try:
        from qtpy.QtCore import QTimer

        info = viewer.window._qt_viewer.canvas._font_info
        font = info.font_manager.get_font(info.face, False, False)
        todo = [c for c in chars if c not in font._glyphs]
    except Exception:
        return
    if not todo or id(viewer) in _GLYPH_TIMERS:
        return
    timer = QTimer()
    timer.setInterval(interval_ms)

    def step() -> None:
        while todo and todo[-1] in font._glyphs:
            todo.pop()
        if todo:
            try:
                font[todo.pop()]
            except Exception:
                todo.clear()
        if not todo:
            timer.stop()
            _GLYPH_TIMERS.pop(id(viewer), None)

    timer.timeout.connect(step)
    _GLYPH_TIMERS[id(viewer)] = timer
    timer.start()


def add_layer_quietly(viewer: Any, layer: Any) -> Any:
    """`viewer.add_layer(layer)` without making it the selected layer: napari would
    otherwise rebuild the layer-controls panel for it (~70-100 ms on a busy CPU)."""
    layers = viewer.layers
    before = getattr(layers, "_activate_on_insert", None)
    if before is None:
        return viewer.add_layer(layer)
    layers._activate_on_insert = False
    try:
        return viewer.add_layer(layer)
    finally:
        layers._activate_on_insert = before


EDGE_THROTTLE_S = 0.1


class ReadableEdges:
    """Keep the edges of result/annotation Shapes layers `metadata["edge_px"]` screen
    pixels wide at every zoom (napari's `edge_width` is in data units, so a width that
    reads at whole-slide zoom is a thick band zoomed in; napari/napari#7939).

    Follows each layer's `scale_factor` (world units per screen pixel, set by napari's
    canvas on every draw), at most every `EDGE_THROTTLE_S` with a trailing update, and
    re-applies after the layer's shapes are replaced (a slider move). A width within 10 %
    of the wanted one is left alone, so small zooms cost nothing. Set
    `layer.metadata["edge_px"] = 0` to keep a width of your own."""

    def __init__(self, viewer: Any) -> None:
        from qtpy.QtCore import QTimer

        self._viewer = weakref.ref(viewer)
        self._pending: weakref.WeakSet = weakref.WeakSet()
        self._last = 0.0
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._flush)
        viewer.layers.events.inserted.connect(self._on_inserted)
        for layer in list(viewer.layers):
            self.watch(layer)

    def watch(self, layer: Any) -> None:
        if getattr(layer, "_wsi_readable_edges", False) or not hasattr(layer, "nshapes"):
            return
        if "edge_px" not in (layer.metadata or {}):
            return
        layer._wsi_readable_edges = True
        layer.events.data.connect(self._on_data)
        if hasattr(layer.events, "scale_factor"):
            layer.events.scale_factor.connect(self._on_zoom)
        apply_edge_px(layer)

    def _on_inserted(self, event: Any) -> None:
        self.watch(event.value)

    def _on_data(self, event: Any) -> None:
        if not str(getattr(event, "action", "")).endswith("ing"):  # added/removed/changed
            apply_edge_px(event.source)

    def _on_zoom(self, event: Any) -> None:
        self._pending.add(event.source)
        wait = self._last + EDGE_THROTTLE_S - time.perf_counter()
        if wait <= 0:
            self._flush()
        elif not self._timer.isActive():
            self._timer.start(int(wait * 1000) + 1)

    def _flush(self) -> None:
        layers = list(self._pending)
        self._pending.clear()
        for layer in layers:
            apply_edge_px(layer)
        self._last = time.perf_counter()  # the interval counts from the end of the work


def apply_edge_px(layer: Any) -> bool:
    """Set `layer`'s edge widths to `metadata["edge_px"]` screen pixels at its current
    zoom; True when they changed."""
    px = float((layer.metadata or {}).get("edge_px") or 0.0)
    if px <= 0 or not getattr(layer, "nshapes", 0):
        return False
    width = _screen_width(layer, px, None)
    widths = np.asarray(layer.edge_width, dtype=float)
    if widths.size and np.all(np.abs(widths - width) <= 0.1 * width):
        return False
    layer.edge_width = width  # every shape; napari re-offsets the edge meshes only
    layer.current_edge_width = width  # shapes drawn next; emits the one redraw event
    return True


_EDGE_FOLLOWERS: dict[int, tuple[Any, ReadableEdges]] = {}


def readable_edges(viewer: Any) -> ReadableEdges:
    """Install (once per viewer) the `ReadableEdges` follower; returns it."""
    for key, (ref, _) in list(_EDGE_FOLLOWERS.items()):
        if ref() is None:
            del _EDGE_FOLLOWERS[key]
    entry = _EDGE_FOLLOWERS.get(id(viewer))
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    follower = ReadableEdges(viewer)
    _EDGE_FOLLOWERS[id(viewer)] = (weakref.ref(viewer), follower)
    return follower


def replace_shapes(layer: Any, layer_data: tuple) -> bool:
    """Put the shapes, colours, features and metadata of a Shapes layer-data tuple (from
    `shapes_io.regions_to_layer_data`, built in a worker) into the existing `layer`,
    without building a throwaway layer on the main thread (`Layer.create`, 15-40 ms) and
    with one thumbnail update instead of three; edge widths already at the layer's
    screen width (`metadata["edge_px"]`). False (and `layer` untouched) when the data
    does not fit (another layer type or other feature columns)."""
    import pandas as pd

    data, kwargs, kind = layer_data
    if kind != "shapes" or not hasattr(layer, "nshapes"):
        return False
    features = pd.DataFrame(kwargs.get("features") or {})
    if set(features.columns) != set(layer.features.columns):
        return False
    n = len(data)
    meta = dict(kwargs.get("metadata") or {})
    width = _screen_width(layer, meta.get("edge_px"), kwargs.get("edge_width", 1.0))
    edge = kwargs.get("edge_color")
    if isinstance(edge, str) and edge in features:  # colour by a feature: map it here
        from napari.utils.colormaps import ensure_colormap

        cmap = ensure_colormap(kwargs.get("edge_colormap", "viridis"))
        lo, hi = kwargs.get("edge_contrast_limits", (0.0, 1.0))
        values = np.nan_to_num(features[edge].to_numpy(dtype=float), nan=hi)
        edge = cmap.map(np.clip((values - lo) / ((hi - lo) or 1.0), 0.0, 1.0))
    previous = getattr(layer, "_allow_thumbnail_update", None)
    layer._allow_thumbnail_update = False
    try:
        layer.selected_data = set()
        layer.data = []
        if n:
            layer.add(data, shape_type=kwargs.get("shape_type", "polygon"), edge_width=width,
                      edge_color=edge, face_color=kwargs.get("face_color"))
        layer.features = features
        layer.metadata = meta
    finally:
        if previous is not None:
            layer._allow_thumbnail_update = previous
    layer._update_thumbnail()
    return True


def _screen_width(layer: Any, px: Any, default: Any) -> Any:
    """Edge width in data units for `px` screen pixels at the layer's zoom (else
    `default`)."""
    try:
        px = float(px or 0.0)
    except (TypeError, ValueError):
        px = 0.0
    if px <= 0:
        return default
    unit = abs(float(layer.scale[-1])) or 1.0
    return px * float(layer.scale_factor) / unit
