"""Screenshots of the WSI Detect widget as a user drives it (docs/napari.md).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/widget_screenshots.py \
    --slide /tmp/shots/phantom.tif --out docs/images

Opens the slide by a real drop event on the canvas, clicks Detect, takes a picture while
the run is going, one of the finished run at whole-slide zoom, then deletes a contour,
moves the threshold slider and takes one of the kept "(edited)" layer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _pump(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--seed", type=int, default=9001)
    ap.add_argument("--size", type=int, nargs=2, default=(8192, 6144))
    ap.add_argument("--no-drop", action="store_true",
                    help="open with viewer.open(plugin=...) instead of a drop event (a drop "
                         "blocks on napari's reader dialog when several readers claim .tif)")
    args = ap.parse_args()

    import napari
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    from napari_wsi_detect._napari.widget import DetectWidget

    if not args.slide.exists():
        from napari_wsi_detect.phantom import write_phantom

        args.slide.parent.mkdir(parents=True, exist_ok=True)
        write_phantom(args.slide, seed=args.seed, size=tuple(args.size))
    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    canvas = viewer.window._qt_viewer
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(args.slide.resolve()))])
    drop = QDropEvent(QPointF(400, 300), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    if args.no_drop:
        viewer.open(str(args.slide), plugin="napari-wsi-detect")
    else:
        canvas.dropEvent(drop)  # what a drag-and-drop from the file manager delivers
    _pump(app, 2.0)
    viewer.screenshot(str(args.out / "napari-drop.png"), canvas_only=False)
    print("layers after the drop:", [ly.name for ly in viewer.layers])

    widget = DetectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="WSI Detect")
    _pump(app, 1.0)
    QTest.mouseClick(widget.detect_button, Qt.MouseButton.LeftButton)
    t0 = time.perf_counter()
    shot_running = False
    while widget.running and time.perf_counter() - t0 < 900:
        _pump(app, 0.2)
        if not shot_running and widget.last_outcome is None and widget.heatmap_layer is not None \
                and "ROI" in widget.status_label.text():
            done = widget.status_label.text()
            if "ROI 1" not in done:
                viewer.screenshot(str(args.out / "widget-running.png"), canvas_only=False)
                shot_running = True
    _pump(app, 2.0)
    while widget.postprocessing:
        _pump(app, 0.2)
    viewer.reset_view()
    _pump(app, 1.0)
    viewer.screenshot(str(args.out / "widget-detect.png"), canvas_only=False)
    print("status:", widget.status_label.text(), "|", widget.score_label.text())

    layer = widget.regions_layer
    if layer is not None and layer.nshapes:
        layer.selected_data = {0}
        layer.remove_selected()
        spin = widget.controls["threshold"].spin
        spin.setValue(max(0.3, spin.value() - 0.2))
        _pump(app, 1.0)
        while widget.postprocessing:
            _pump(app, 0.2)
        _pump(app, 1.0)
        viewer.screenshot(str(args.out / "widget-edited.png"), canvas_only=False)
        print("layers after the edit and slider move:", [ly.name for ly in viewer.layers])
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
