"""The layers of one slide's result, and the rules that keep a pathologist's work.

* Each slide has its own `SlideResult` (heatmap layer, result layer, run folder): a
  second slide's run never lands in the first slide's layers.
* The result layer follows the sliders until the pathologist edits it (adds, deletes,
  moves a shape or a vertex). After an edit, the next slider move keeps the edited layer
  as "<name> (edited)" and draws the slider's result into a new layer; nothing edited is
  ever overwritten.
* A shape drawn by hand is an annotation of its own (its own region id, no detection
  name or probability), whatever napari's "current properties" were.
* A run with other settings (model, α, task) keeps the previous result's layers,
  renamed "(previous …)", and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HAND_DRAWN = {"region": -1, "is_hole": False, "id": "", "name": "", "max_probability": 1.0,
              "object_type": "annotation", "score": 1.0}  # score: a mitosis added by hand


@dataclass
class SlideResult:
    slide_layer: Any
    task: str
    key: tuple = ()  # (model, options...): what made the heatmap
    result: Any = None  # detectors.result.DetectionResult
    out_dir: Path | None = None  # the run folder the store lives in
    heatmap: Any = None  # heatmap_layer.LiveHeatmap
    regions_layer: Any = None  # the primary result layer (Shapes, Points, ...)
    extra_layers: list[Any] = field(default_factory=list)  # companions (hotspot, mask)
    edited: bool = False
    updating: bool = False  # the widget itself is changing the layer
    notes: list[str] = field(default_factory=list)


def unique_name(viewer: Any, name: str, slide_layer: Any) -> str:
    """`name`, or "name (slide)" when a layer of that name already belongs elsewhere."""
    if name not in viewer.layers:
        return name
    return f"{name} ({slide_layer.name})"


def place_below_results(viewer: Any, heat_layer: Any, slide_layer: Any) -> None:
    """Keep the heatmap directly above its slide, so contours and points stay on top."""
    layers = viewer.layers
    if heat_layer not in layers or slide_layer not in layers:
        return
    want = layers.index(slide_layer) + 1
    have = layers.index(heat_layer)
    if have != want:
        layers.move(have, want if have > want else want - 1)


def keep_as_previous(viewer: Any, state: SlideResult, describe: str) -> list[str]:
    """Rename the current result's layers "(previous: …)" and detach them from `state`."""
    kept = []
    for layer in (state.heatmap.layer if state.heatmap is not None else None,
                  state.regions_layer, *state.extra_layers):
        if layer is not None and layer in viewer.layers:
            layer.name = f"{layer.name} (previous: {describe})"
            kept.append(layer.name)
    state.heatmap, state.regions_layer, state.result, state.edited = None, None, None, False
    state.extra_layers = []
    return kept


def replace_companions(viewer: Any, old: list[Any], new: list[Any]) -> list[Any]:
    """Swap the companion layers of a result (hotspot, label mask) for `new`: a layer
    of the same name and type gets the new data in place (its controls and texture are
    reused), the others are removed or added. Returns the layers now shown."""
    by_name = {layer.name: layer for layer in old if layer in viewer.layers}
    shown = []
    for layer in new:
        was = by_name.pop(layer.name, None)
        if was is not None and type(was) is type(layer) and _refresh(was, layer):
            shown.append(was)
            continue
        if was is not None:
            viewer.layers.remove(was)
        shown.append(viewer.add_layer(layer))
    for layer in by_name.values():
        viewer.layers.remove(layer)
    return shown


def _refresh(old: Any, new: Any) -> bool:
    from napari.layers import Labels

    if isinstance(new, Labels) and old.data.shape == new.data.shape:
        old.data = new.data
        old.metadata = dict(new.metadata)
        return True
    return False


def watch_edits(state: SlideResult, on_edit: Any) -> None:
    """Mark `state` edited when its result layer's shapes change by hand."""
    layer = state.regions_layer
    if layer is None or getattr(layer, "_wsi_watched", False):
        return

    def changed(event: Any) -> None:
        if state.updating or state.regions_layer is not layer:
            return
        action = str(getattr(event, "action", ""))
        if action.endswith(("adding", "removing", "changing")):
            return  # the "…ed" event follows
        if action.endswith("added"):
            mark_hand_drawn(layer, getattr(event, "data_indices", ()))
        state.edited = True
        on_edit(state)

    layer.events.data.connect(changed)
    layer._wsi_watched = True
    reset_feature_defaults(layer)


def reset_feature_defaults(layer: Any) -> None:
    """New shapes get hand-drawn values, not those of the last detection."""
    cols = getattr(layer, "features", None)
    if cols is None or not len(cols.columns):
        return
    defaults = {}
    for col in cols.columns:
        if col in HAND_DRAWN:
            defaults[col] = HAND_DRAWN[col]
        elif col == "class":
            defaults[col] = "Tumor"
        else:
            kind = cols[col].dtype.kind
            defaults[col] = (math.nan if kind == "f" else False if kind == "b"
                             else 0 if kind in "iu" else "")
    try:
        layer.feature_defaults = defaults
    except (ValueError, TypeError):  # older napari: no settable defaults
        pass


def mark_hand_drawn(layer: Any, indices: Any) -> None:
    feats = layer.features
    idx = [i for i in (indices or ()) if 0 <= int(i) < len(feats)]
    if not idx:
        return
    for col, value in HAND_DRAWN.items():
        if col in feats.columns:
            feats.loc[idx, col] = value
    if "class" in feats.columns:
        blank = feats.loc[idx, "class"].astype(str).str.len() == 0
        feats.loc[[i for i, b in zip(idx, blank, strict=True) if b], "class"] = "Tumor"
    layer.features = feats


def freeze_edited(viewer: Any, state: SlideResult) -> str | None:
    """Keep the edited result layer as "<name> (edited)"; the next update makes a new
    one. Returns the kept layer's name."""
    layer = state.regions_layer
    state.regions_layer, state.edited = None, False
    if layer is None or layer not in viewer.layers:
        return None
    base = f"{layer.name} (edited)"
    name, n = base, 2
    while name in viewer.layers:
        name, n = f"{base} {n}", n + 1
    layer.name = name
    return name
