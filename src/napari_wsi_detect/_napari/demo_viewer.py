"""`wsi-detect demo --napari`: the demo's slide, heatmap, regions and truth in napari."""

from __future__ import annotations

from typing import Any


def show_demo(outcome: Any, block: bool = True) -> Any:
    """Open napari with the phantom slide, the run (via the widget) and the truth."""
    import napari

    from .annotation_reader import read_annotations
    from .widget import DetectMetastasesWidget

    viewer = napari.Viewer(title="napari-wsi-detect demo")
    (slide_layer,) = viewer.open(str(outcome.slide_path), plugin="napari-wsi-detect")
    widget = DetectMetastasesWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Detect metastases", area="right")
    viewer.layers.selection.active = slide_layer
    widget.open_run(outcome.out_dir / "run")
    truth = outcome.slide_path.with_suffix(".geojson")
    for data, kwargs, kind in read_annotations(truth, mpp=slide_layer.metadata.get("mpp")):
        kwargs["name"] = "truth " + kwargs.get("name", "")
        viewer._add_layer_from_data(data, kwargs, kind)
    if block:
        napari.run()
    return viewer
