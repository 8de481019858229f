"""The dock widget's side of a run: worker events in order, the live heatmap, errors, and
post-processing in a worker (a mixin of `DetectWidget`)."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from napari_wsi_detect._napari import result_layers as rl
from napari_wsi_detect.errors import WsiDetectError

_log = logging.getLogger(__name__)


class RunEventsMixin:
    """Handles the job's events and slider updates; needs the DetectWidget attributes."""

    def _on_event(self, event: Any) -> None:
        """Handle worker events strictly in order: napari's progress bar may process Qt
        events, which would deliver the next tile re-entrantly; such events queue here."""
        self._events.append(event)
        if self._handling:
            return
        self._handling = True
        try:
            while self._events:
                self._handle(self._events.popleft())
        finally:
            self._handling = False

    def _handle(self, event: Any) -> None:
        from napari_wsi_detect.detectors.job import JobOutcome, RunStarted
        from napari_wsi_detect.engine.run import HeatmapTile

        if self._failed:  # queued before this run's error arrived
            return
        t = time.perf_counter()
        try:
            if isinstance(event, HeatmapTile):
                self._on_tile(event)
            elif isinstance(event, RunStarted):
                self._on_started(event)
            elif isinstance(event, JobOutcome):
                self._on_outcome(event)
        except Exception as exc:  # a bug here must not leave a worker without a UI
            self._show_error(exc)
            if self._cancel is not None:
                self._cancel.set()
        key = type(event).__name__
        self.callback_s[key] = max(self.callback_s.get(key, 0.0), time.perf_counter() - t)

    def _on_started(self, ev: Any) -> None:
        from napari.utils import progress

        from napari_wsi_detect._napari.heatmap_layer import LiveHeatmap
        from napari_wsi_detect.detectors import get_detector

        state = self._running_state
        det = get_detector(state.task)
        if not ev.resumed:
            self._set_values(ev.params)  # the model's defaults for a fresh map
        old = state.heatmap
        if not (old is not None and old.layer in self.viewer.layers
                and old.array.shape == ev.geometry.shape):
            if old is not None:
                old.remove()
            name = rl.unique_name(self.viewer, det.heatmap_name, state.slide_layer)
            state.heatmap = LiveHeatmap(self.viewer, ev.geometry, state.slide_layer, name=name,
                                        initial=ev.store.to_numpy() if ev.resumed else None)
            self._new_layers.append(state.heatmap.layer)
        rl.place_below_results(self.viewer, state.heatmap.layer, state.slide_layer)
        self._progress = progress(total=max(ev.todo, 1), desc=f"Detecting {det.task}")
        done = ev.total - ev.todo
        self.status_label.setText(
            f"Running on {ev.device}: {ev.todo} ROIs to compute"
            + (f" ({done} already done, resumed)" if done else "")
            + (" " + " ".join(state.notes) if state.notes else ""))

    def _on_tile(self, tile: Any) -> None:
        state = self._running_state
        if state is not None and state.heatmap is not None:
            state.heatmap.add_tile(tile)
        eta = f", about {tile.eta:.0f} s left" if tile.eta is not None else ""
        text = f"ROI {tile.done} of {tile.total}{eta}"
        bar = self._progress  # set_description may process events, "finished" included
        if bar is not None:
            bar.set_description(f"Detecting {self._running_state.task}: {text}")
            bar.update(1)
        self.status_label.setText(text)

    def _on_outcome(self, out: Any) -> None:
        state = self._running_state
        self.last_outcome = out
        state.result = out.result
        if state.heatmap is not None:
            state.heatmap.flush()
        self._new_layers = []  # this run's layers are now a valid result
        self.update_regions(state)
        if out.status == "cancelled":
            self.status_label.setText(
                f"Cancelled after {out.done} of {out.total} ROIs; the heatmap shows those. "
                "Press Detect to compute the rest.")
        else:
            self.status_label.setText(f"Done: {out.done} ROIs in {out.seconds:.1f} s."
                                      + (" " + " ".join(state.notes) if state.notes else ""))

    def _on_error(self, exc: BaseException) -> None:
        self._failed = True
        state = self._running_state
        for layer in self._new_layers:  # no half-made result
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        if state is not None and state.heatmap is not None \
                and state.heatmap.layer in self._new_layers:
            state.heatmap, state.result = None, None
        self._new_layers = []
        self.status_label.setText(f"Failed: {exc}")
        self._show_error(exc)

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = self._cancel = None
        self.detect_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _show_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        _log.debug("WSI Detect error", exc_info=exc)
        if isinstance(exc, WsiDetectError):
            show_error(f"WSI Detect: {exc}")
        else:
            show_error(f"WSI Detect failed ({type(exc).__name__}): {exc}")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        self._closed = True
        self.cancel()
        super().closeEvent(event)

    def event(self, event: Any) -> bool:
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Type.ParentChange and self.parent() is not None:
            self._closed = False  # docked (again)
        elif event.type() == QEvent.Type.ParentChange:
            # napari removed the dock widget: its run stops too, and the layers of a
            # result arriving later are not added (the viewer may be closing).
            self._closed = True
            self.cancel()
        return super().event(event)

    # -- post-processing ------------------------------------------------------------------------
    def _schedule_update(self, *_: Any) -> None:
        if (state := self._current_state()) is not None and state.result is not None:
            self._debounce.start()

    def restore_defaults(self) -> None:
        """Slider values from the model file of the shown result (schema defaults else)."""
        self._debounce.stop()
        state = self._current_state()
        config = state.result.config if state is not None and state.result else None
        self._set_values(self.detector.defaults(config))
        self.update_regions()

    @property
    def postprocessing(self) -> bool:
        return self._post_worker is not None

    def update_regions(self, state: rl.SlideResult | None = None) -> None:
        """Re-run post-processing on the stored map in a worker, then swap the result
        layer on the main thread; moves made meanwhile coalesce into one more update."""
        from napari.qt.threading import create_worker

        state = state or self._current_state()
        if state is None or state.result is None:
            return
        if self._post_worker is not None:
            self._post_pending = True
            return
        if state.edited:
            kept = rl.freeze_edited(self.viewer, state)
            if kept:
                self.status_label.setText(
                    f"Your edited layer was kept as '{kept}'; the new values go to a new layer.")
        # The sliders shown belong to the chosen task; a result of another task keeps its own.
        values = (self.values() if state.result.task == self.detector.task
                  else state.result.values())
        mpp = state.slide_layer.metadata.get("mpp")
        name = (state.regions_layer.name if state.regions_layer is not None
                else rl.unique_name(self.viewer, state.result.detector.layer_name, state.slide_layer))
        self._post_worker = create_worker(
            _postprocess, state.result, values, mpp, name, _start_thread=False,
            _connect={"returned": functools.partial(self._on_regions, state),
                      "errored": self._show_error, "finished": self._on_post_finished})
        self._post_worker.start()

    def _on_regions(self, state: rl.SlideResult, layers: list) -> None:
        from napari.layers import Layer

        if getattr(self, "_closed", False) or state.slide_layer not in self.viewer.layers:
            return

        primary, *companions = [Layer.create(*data) for data in layers]
        old = state.regions_layer
        state.updating = True
        try:
            if not (old is not None and old in self.viewer.layers and _refill(old, primary)):
                if old is not None and old in self.viewer.layers:
                    self.viewer.layers.remove(old)
                self.viewer.add_layer(primary)
                state.regions_layer = primary
            state.extra_layers = rl.replace_companions(self.viewer, state.extra_layers,
                                                       companions)
            rl.watch_edits(state, self._on_edited)
            rl.reset_feature_defaults(state.regions_layer)
        finally:
            state.updating = False
        if state.heatmap is not None:
            rl.place_below_results(self.viewer, state.heatmap.layer, state.slide_layer)
        self._set_score(state)

    def _on_edited(self, state: rl.SlideResult) -> None:
        self.status_label.setText(
            "Result layer edited: slider changes now go to a new layer (your edits stay).")

    def _set_score(self, state: rl.SlideResult) -> None:
        result = state.result
        text = result.detector.headline(result.detections)
        self.score_label.setText(text + ("" if result.complete else "   ·   (partial map)"))

    def _on_post_finished(self) -> None:
        self._post_worker = None
        if self._post_pending:
            self._post_pending = False
            self.update_regions()


def _postprocess(result: Any, values: dict[str, Any], mpp: float | None, name: str
                 ) -> list:
    """Worker-thread half of `update_regions`: detections, then their layer data (the
    primary result layer first; see result_kinds)."""
    from napari_wsi_detect._napari.result_kinds import layer_data

    result.postprocess(**values)
    return layer_data(result, values, mpp, name)


def _refill(old: Any, new: Any) -> bool:
    """Replace the content of result layer `old` by that of `new` in place (its Qt
    controls and vispy node are reused); False (and `old` untouched) when they are not
    compatible."""
    from napari.layers import Shapes

    if type(old) is not type(new) or not isinstance(new, Shapes):
        return False
    if set(old.features.columns) != set(new.features.columns) or new.nshapes == 0:
        return False
    old.selected_data = set()
    old.data = []
    old.add(new.data, shape_type=new.shape_type, edge_width=new.edge_width,
            edge_color=new.edge_color, face_color=new.face_color)
    old.features = new.features
    old.metadata = dict(new.metadata)
    return True
