"""Screenshots of the WSI Detect widget as a user drives it (docs/napari.md).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/widget_screenshots.py \
    --slide /tmp/shots/phantom.tif --out docs/images

Opens the slide by a real drop event on the canvas, clicks Detect, takes a picture while
the run is going (a third of the ROIs done), one of the finished run at whole-slide zoom,
then deletes a contour, moves the threshold slider and takes one of the kept "(edited)"
layer.

napari asks "Choose reader" when several plugins claim a file's extension (its builtins
claim .tif) until the user ticks "Remember my choice". `--remember-reader` records that
choice for the slide's extension, as the tick does, in a throw-away napari settings file
(NAPARI_CONFIG), so the drop opens the slide directly and the user's settings are untouched.
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


def _shot(viewer, path: Path) -> None:
    """Screenshot of the whole window without napari's toasts (the PyQt5 deprecation
    toast would sit over the canvas in every picture)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.hide()
    viewer.screenshot(str(path), canvas_only=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--seed", type=int, default=9001)
    ap.add_argument("--size", type=int, nargs=2, default=(8192, 6144))
    ap.add_argument("--task", default=None,
                    help="pick this task in the Task combo before Detect (default: the first)")
    ap.add_argument("--prefix", default="widget",
                    help="picture names: PREFIX-running.png, PREFIX-detect.png, ...")
    ap.add_argument("--skip-tissue", action="store_true",
                    help="untick 'Skip background' (a field that is all tissue)")
    ap.add_argument("--remember-reader", action="store_true",
                    help="record napari-wsi-detect as the reader for the slide's extension "
                         "(napari's 'Remember my choice') in a temporary settings file")
    ap.add_argument("--no-drop", action="store_true",
                    help="open with viewer.open(plugin=...) instead of a drop event (a drop "
                         "blocks on napari's reader dialog when several readers claim .tif)")
    args = ap.parse_args()
    import os
    import tempfile

    # A fresh run cache: a run cached by an earlier call would resume with nothing to show.
    os.environ["WSI_DETECT_CACHE"] = tempfile.mkdtemp(prefix="wsi-shots-cache-")
    if args.remember_reader:
        os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp()) / "settings.yaml")

    import warnings

    # napari shows this deprecation as a toast over the canvas in every picture.
    warnings.filterwarnings("ignore", message="napari support for the PyQt5 backend")
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
    if args.remember_reader:
        from napari.settings import get_settings

        settings = get_settings()
        settings.plugins.extension2reader = {
            **settings.plugins.extension2reader, f"*{args.slide.suffix}": "napari-wsi-detect"}
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
    _shot(viewer, args.out / "napari-drop.png")
    print("layers after the drop:", [ly.name for ly in viewer.layers])

    widget = DetectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="WSI Detect")
    _pump(app, 1.0)
    if args.task:  # as a user picks it in the visible combo box
        widget.task_combo.setCurrentIndex(widget.task_combo.findData(args.task))
        _pump(app, 0.5)
    if args.skip_tissue:
        QTest.mouseClick(widget.tissue_check, Qt.MouseButton.LeftButton)
    QTest.mouseClick(widget.detect_button, Qt.MouseButton.LeftButton)
    t0 = time.perf_counter()
    shot_running = False
    while widget.running and time.perf_counter() - t0 < 900:
        _pump(app, 0.2)
        if not shot_running and widget.last_outcome is None and widget.heatmap_layer is not None \
                and widget.status_label.text().startswith("ROI"):
            words = widget.status_label.text().split()  # "ROI k of n, about t s left"
            done, total = ((int(words[1]), int(words[3].rstrip(","))) if words[0] == "ROI"
                           else (0, 1))
            if done >= max(1, total // 3):
                _shot(viewer, args.out / f"{args.prefix}-running.png")
                shot_running = True
    _pump(app, 2.0)
    while widget.postprocessing:
        _pump(app, 0.2)
    viewer.reset_view()
    _pump(app, 1.0)
    _shot(viewer, args.out / f"{args.prefix}-detect.png")
    print("status:", widget.status_label.text(), "|", widget.score_label.text())

    layer = widget.regions_layer
    if args.task in (None, "metastases") and layer is not None and layer.nshapes:
        layer.selected_data = {0}
        layer.remove_selected()
        spin = widget.controls["threshold"].spin
        spin.setValue(max(0.3, spin.value() - 0.2))
        _pump(app, 1.0)
        while widget.postprocessing:
            _pump(app, 0.2)
        _pump(app, 1.0)
        _shot(viewer, args.out / f"{args.prefix}-edited.png")
        print("layers after the edit and slider move:", [ly.name for ly in viewer.layers])
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
