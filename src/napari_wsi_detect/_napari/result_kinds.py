"""What each kind of detection result becomes in napari: one builder per `Detections.kind`.

A builder runs in the widget's post-processing worker (no Qt, no viewer) and returns
napari layer-data tuples ``(data, kwargs, layer_type)``. The first tuple is the primary
result layer: the one the pathologist edits, exports and saves, and that the widget keeps
as "(edited)" instead of overwriting. The rest are companions rebuilt on every slider
move and never edited by the widget's rules (a mitosis hotspot, a tumour label mask).

Builders are named "module:function" and imported on first use, so a detector's napari
side loads only when its result is shown.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]
Builder = Callable[[Any, dict[str, Any], "float | None", str], list[LayerData]]

_BUILDERS: dict[str, str] = {
    "regions": "napari_wsi_detect._napari.result_kinds:regions_layer_data",
    "points": "napari_wsi_detect._napari.points_io:mitoses_to_layer_data",
    "mask": "napari_wsi_detect._napari.mask_io:tumour_to_layer_data",
}


def register_kind(kind: str, target: str) -> None:
    """Use `target` ("package.module:function", a `Builder`) for results of `kind`."""
    _BUILDERS[kind] = target


def builder(kind: str) -> Builder:
    if kind not in _BUILDERS:
        raise KeyError(f"no napari layer builder for results of kind {kind!r}; "
                       f"known: {', '.join(_BUILDERS)}")
    module, _, name = _BUILDERS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def layer_data(result: Any, values: dict[str, Any], mpp: float | None, name: str
               ) -> list[LayerData]:
    """The layers of `result` (a DetectionResult already post-processed with `values`)."""
    return builder(result.detections.kind)(result, values, mpp, name)


def regions_layer_data(result: Any, values: dict[str, Any], mpp: float | None, name: str
                       ) -> list[LayerData]:
    """Metastasis-style regions: one editable Shapes layer coloured by score."""
    from napari_wsi_detect._napari.shapes_io import regions_to_layer_data

    return [regions_to_layer_data(result.regions, mpp, name=name,
                                  metadata={"parameters": dict(values),
                                            "slide_score": result.slide_score})]
