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
        from napari_wsi_detect._napari.shapes_export import layer_to_features

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
    def open_run(self, folder: str | Path | None = None) -> None:
        """Show a saved run folder (asked in a dialog unless given) with its slide, opened
        from the path its summary records when it is not open yet; Detect then resumes
        into it."""
        from napari_wsi_detect._napari import run_files
        from napari_wsi_detect._napari.heatmap_layer import LiveHeatmap
        from napari_wsi_detect._napari.shapes_io import KIND_REGIONS, features_to_layers
        from napari_wsi_detect.annotations.geojson import read_geojson
        from napari_wsi_detect.detectors import get_detector

        if folder is None:
            folder = _hooks().ask_folder(self, "Open a saved run folder")
        if not folder:
            return
        folder = Path(folder)
        layer = self._slide_for_run(folder)
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

    def _slide_for_run(self, folder: Path) -> Any:
        """The slide layer a run folder is shown on: the open layer of the slide its
        summary names; else the chosen slide when it has the run's size; else the
        slide opened from the path the summary records (one action: slide + heatmap +
        results). SlideOpenError when that slide is no longer there."""
        from napari_wsi_detect._napari.run_reader import run_slide_path
        from napari_wsi_detect.detectors.result import read_summary

        summary = read_summary(folder) if (folder / "summary.json").is_file() else {}
        slide = summary.get("slide") or {}
        recorded = slide.get("path")
        if recorded:
            want = Path(recorded).resolve()
            for layer in self.viewer.layers:
                path = (layer.metadata or {}).get("path") if getattr(layer, "rgb", False) else None
                if path and Path(path).resolve() == want:
                    self.slide_combo.setCurrentText(layer.name)
                    return layer
        try:
            current = self.slide_layer()
        except WsiDetectError:
            current = None
        size = (slide.get("height"), slide.get("width"))
        if current is not None and (not recorded or slide_shape0(current) == size):
            return current
        if not recorded:
            return self.slide_layer()  # no slide: its message says how to open one
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a slide without pixel size says so in the layer
            [layer] = self.viewer.open(str(run_slide_path(summary, folder)),
                                       plugin="napari-wsi-detect")
        self._refresh_slides()
        self.slide_combo.setCurrentText(layer.name)
        return layer

    def _export_view(self) -> tuple[Any, Any]:
        """(slide result state, RunView of its result as the sliders have it)."""
        from napari_wsi_detect.exports.run_view import view_of

        state = self._current_state()
        if state is None or state.result is None:
            raise WsiDetectError("no result to export yet: run Detect or Open run… first")
        return state, view_of(state.result, state.out_dir)

    @notify_errors
    def export_qupath(self) -> Path | None:
        """The heatmap as a pyramidal OME-TIFF overlay and the result layer (as edited)
        as QuPath GeoJSON beside it (docs/results-elsewhere.md says what to click)."""
        from napari_wsi_detect._napari.shapes_export import layer_to_features
        from napari_wsi_detect.annotations.geojson import write_geojson
        from napari_wsi_detect.exports.qupath import default_overlay_name, write_overlay

        state, view = self._export_view()
        path = _hooks().ask_save_file(self, "Export for QuPath", default_overlay_name(view),
                                      "OME-TIFF (*.ome.tif *.ome.tiff)")
        if not path:
            return None
        overlay = write_overlay(view, path)
        geojson = overlay.parent / view.detector.results_file
        if state.regions_layer is not None and state.regions_layer in self.viewer.layers:
            features = layer_to_features(state.regions_layer,
                                         state.slide_layer.metadata.get("mpp"))
        else:
            features = state.result.features()
        write_geojson(geojson, features)
        self.status_label.setText(f"Exported the overlay {overlay.name} and "
                                  f"{geojson.name} to {overlay.parent}")
        return overlay

    @notify_errors
    def export_ngff(self) -> Path | None:
        """The maps and masks as OME-Zarr (NGFF 0.4) in a folder chosen in a dialog."""
        from napari_wsi_detect.exports.ngff import write_ngff

        state, view = self._export_view()
        stem = Path(str(state.slide_layer.metadata.get("path", "slide"))).stem
        path = _hooks().ask_save_file(self, "Export OME-Zarr", f"{stem}-{view.task}.ome.zarr",
                                      "OME-Zarr (*.ome.zarr)")
        if not path:
            return None
        out = write_ngff(view, path)
        self.status_label.setText(f"Exported the maps as OME-Zarr to {out}")
        return out
