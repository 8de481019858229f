"""Run files of the dock widget: Export GeoJSON…, Save run…, Open run… (a mixin of
`DetectWidget`; dialogs go through the widget module's ask_* hooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_wsi_detect._napari import result_layers as rl
from napari_wsi_detect._napari.region_choice import slide_shape0
from napari_wsi_detect.errors import WsiDetectError


def _hooks() -> Any:
    from napari_wsi_detect._napari import widget

    return widget


def notify_errors(method: Any) -> Any:
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._show_error(exc)
            return None

    return wrapper


class RunFilesMixin:
    """Export / save / open; needs the DetectWidget attributes."""

    # -- files ----------------------------------------------------------------------------------
    @notify_errors
    def export_geojson(self) -> Path | None:
        """Write the selected Shapes/Points layer (else the result layer) as QuPath
        GeoJSON in level-0 pixels, to a file chosen in a dialog."""
        from napari.layers import Points, Shapes

        from napari_wsi_detect._napari.writer import write_layer

        layer = self.viewer.layers.selection.active
        if not isinstance(layer, (Shapes, Points)):
            layer = self.regions_layer
        if layer is None or layer not in self.viewer.layers:
            raise WsiDetectError("nothing to export: select a Shapes or Points layer")
        path = _hooks().ask_save_file(self, "Export GeoJSON", f"{layer.name}.geojson",
                             "QuPath GeoJSON (*.geojson *.geojson.gz)")
        if not path:
            return None
        state = self._current_state()
        mpp = state.slide_layer.metadata.get("mpp") if state is not None else None
        out = write_layer(path, layer, mpp)
        self.status_label.setText(f"Exported {layer.name} to {out}")
        return out

    @notify_errors
    def save_run(self) -> Path | None:
        """Write heatmap.zarr, the result layer as edited, and summary.json."""
        from napari_wsi_detect._napari.shapes_io import layer_to_features

        state = self._current_state()
        if state is None or state.result is None:
            raise WsiDetectError("no result to save yet: run Detect first")
        folder = _hooks().ask_folder(self, "Save the run into a folder")
        if not folder:
            return None
        features = None
        if state.regions_layer is not None and state.regions_layer in self.viewer.layers:
            features = layer_to_features(state.regions_layer,
                                         state.slide_layer.metadata.get("mpp"))
        out = state.result.write(folder, features=features)
        self.status_label.setText(f"Saved the run to {out}")
        return out

    @notify_errors
    def open_run(self) -> None:
        """Show a saved run folder on the chosen slide; Detect then resumes into it."""
        from napari_wsi_detect._napari import run_files
        from napari_wsi_detect._napari.heatmap_layer import LiveHeatmap
        from napari_wsi_detect._napari.shapes_io import KIND_REGIONS, features_to_layers
        from napari_wsi_detect.annotations.geojson import read_geojson
        from napari_wsi_detect.detectors import get_detector

        folder = _hooks().ask_folder(self, "Open a saved run folder")
        if not folder:
            return
        folder = Path(folder)
        layer = self.slide_layer()
        result = run_files.load_run(folder, layer, slide_shape0(layer))
        det = get_detector(result.task)
        self.task_combo.setCurrentIndex(max(0, self.task_combo.findData(det.task)))
        state = self._state(layer)
        if state.result is not None:
            rl.keep_as_previous(self.viewer, state, _hooks()._describe(state))
        if state.heatmap is not None:
            state.heatmap.remove()
        state.result, state.task, state.out_dir = result, det.task, folder
        state.key = run_files.store_key(result.store)
        self._set_values(result.values())
        self._set_values({k: result.parameters[k] for k in self.options()
                          if k in result.parameters})
        state.heatmap = LiveHeatmap(self.viewer, result.geometry, layer, initial=result.heatmap,
                                    name=rl.unique_name(self.viewer, det.heatmap_name, layer))
        state.heatmap.flush()
        saved = folder / det.results_file
        feats = read_geojson(saved) if saved.is_file() else []
        if feats:  # the result as saved (possibly edited), not re-computed
            data = features_to_layers(feats, layer.metadata.get("mpp"), name=rl.unique_name(
                self.viewer, det.layer_name, layer), metadata={"kind": KIND_REGIONS},
                color_by_score=True)
            state.updating = True
            state.regions_layer = self.viewer.add_layer(_hooks()._layer(data[0]))
            rl.watch_edits(state, self._on_edited)
            state.updating = False
            state.edited = True  # saved layers may hold edits: sliders never overwrite them
            self._set_score(state)
        else:
            self.update_regions(state)
        self.status_label.setText(
            f"Opened the run in {folder}" + ("" if result.complete else
                                             "; its map is partial: Detect resumes it"))
